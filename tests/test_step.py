"""The training step: device-count independence, pmap == shard_map, no retracing."""

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from gan import methods, models
from gan import state as state_lib
from gan import step as step_lib
from gan.parallel import replicate, unreplicate
from gan.utils import ConfigError


def _setup(config, n: int = 64):
  G, D = models.build(config.model, axis_name=step_lib.AXIS)
  rng = np.random.default_rng(0)
  data = {
      "image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
      "label": rng.integers(0, 10, (n,), dtype=np.int32),
  }
  state = state_lib.create(config, G, D, (28, 28, 1), n)
  return G, D, data, state


def _run_pmap(config, num_devices: int, num_steps: int, step_wrapper=None):
  G, D, data, state = _setup(config)
  devices = jax.devices()[:num_devices]
  fn = step_lib.make_train_step(methods.get(config).step_config(config), G, D)
  if step_wrapper is not None:
    fn = step_wrapper(fn)
  p_step = step_lib.pmap_step(fn, devices)
  p_state, p_data = replicate(state, devices), replicate(data, devices)
  history = []
  for _ in range(num_steps):
    p_state, metrics = p_step(p_state, p_data)
    history.append(jax.device_get(unreplicate(metrics)))
  return jax.device_get(unreplicate(p_state)), history


def _assert_trees_close(a, b, rtol=1e-4, atol=2e-5):
  # Devices sum gradients in a different order, and Adam divides by sqrt(v): a
  # near-zero gradient's rounding can move its parameter by up to a fraction of
  # one Adam step (lr = 2e-4). atol = 2e-5 is a tenth of that, far below any
  # real difference (a wrong mask, batch or missing pmean moves every parameter).
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("num_devices", [2, 4])
def test_multi_device_step_equals_single_device_step(smoke_config, num_devices):
  single, single_metrics = _run_pmap(smoke_config, 1, 3)
  multi, multi_metrics = _run_pmap(smoke_config, num_devices, 3)
  _assert_trees_close(single.g.params, multi.g.params)
  _assert_trees_close(single.d.params, multi.d.params)
  _assert_trees_close(single.g.batch_stats, multi.g.batch_stats)
  _assert_trees_close(single.g_ema, multi.g_ema)
  np.testing.assert_array_equal(single.data_perm, multi.data_perm)
  for s, m in zip(single_metrics, multi_metrics, strict=True):
    _assert_trees_close(s, m, rtol=1e-4, atol=1e-5)
  # The run must actually train: parameters moved away from initialisation.
  _, _, _, init = _setup(smoke_config)
  assert not np.allclose(init.g.params["Dense_0"]["kernel"], multi.g.params["Dense_0"]["kernel"])


def test_shard_map_step_equals_pmap_step(smoke_config):
  pmapped, pmap_metrics = _run_pmap(smoke_config, 2, 2)
  G, D, data, state = _setup(smoke_config)
  mesh = Mesh(np.asarray(jax.devices()[:2]), (step_lib.AXIS,))
  step = step_lib.shard_map_step(
      step_lib.make_train_step(methods.get(smoke_config).step_config(smoke_config), G, D), mesh
  )
  for expected in pmap_metrics:
    state, metrics = step(state, data)
    _assert_trees_close(jax.device_get(metrics), expected, rtol=1e-5, atol=1e-6)
  _assert_trees_close(jax.device_get(state.g.params), pmapped.g.params, rtol=1e-6, atol=1e-7)
  _assert_trees_close(jax.device_get(state.d.params), pmapped.d.params, rtol=1e-6, atol=1e-7)


def test_step_is_traced_once(smoke_config):
  # chex raises if the wrapped function is traced a second time (retracing).
  _run_pmap(smoke_config, 2, 4, step_wrapper=chex.assert_max_traces(n=1))


def test_n_critic_updates_discriminator_n_times_per_generator_step(smoke_config):
  smoke_config.n_critic = 3
  final, history = _run_pmap(smoke_config, 1, 2)
  assert int(final.step) == 2 and int(final.g.step) == 2
  assert int(final.d.step) == 6  # also the number of data batches drawn
  assert set(history[-1]) >= {"d/loss", "d/grad_norm", "g/loss", "g/grad_norm"}
  assert history[-1]["d/grad_norm"] > 0


def test_ema_is_updated_in_graph_with_warmup(smoke_config):
  smoke_config.ema_decay = 0.999
  _, _, _, init = _setup(smoke_config)
  final, _ = _run_pmap(smoke_config, 1, 1)
  decay = 1.0 / 10.0  # min(0.999, (1 + 0) / (10 + 0)) at the first step
  expected = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), init.g_ema, final.g.params)
  _assert_trees_close(final.g_ema, expected, rtol=1e-6, atol=1e-7)


def test_metrics_are_flat_namespaced_finite_scalars(smoke_config):
  _, history = _run_pmap(smoke_config, 2, 1)
  metrics = history[0]
  expected = {
      "d/loss",
      "d/real_acc",
      "d/fake_acc",
      "d/real_logit",
      "d/fake_logit",
      "d/real_prob",
      "d/fake_prob",
      "d/grad_norm",
      "g/loss",
      "g/grad_norm",
      "g/fake_logit",
      "d/update_ratio",
      "g/update_ratio",
      "health/finite",
  }
  assert set(metrics) == expected
  for name, value in metrics.items():
    assert np.shape(value) == (), name
    assert np.isfinite(value), name
  assert 0.0 <= metrics["d/real_acc"] <= 1.0 and 0.0 <= metrics["d/fake_acc"] <= 1.0


def test_nonfinite_step_is_dropped_not_written(smoke_config):
  """A NaN loss leaves parameters and optimizer state as they were; only the step advances."""
  smoke_config.optim.d.lr = float("nan")  # every D update would be NaN
  G, D, data, state = _setup(smoke_config)
  devices = jax.devices()[:2]
  step = step_lib.pmap_step(
      step_lib.make_train_step(methods.get(smoke_config).step_config(smoke_config), G, D), devices
  )
  before = jax.device_get(state)
  p_state, metrics = step(replicate(state, devices), replicate(data, devices))
  after = jax.device_get(unreplicate(p_state))
  metrics = jax.device_get(unreplicate(metrics))
  assert metrics["health/finite"] == 0.0
  assert int(after.step) == int(before.step) + 1
  _assert_trees_close(after.d.params, before.d.params, rtol=0, atol=0)
  _assert_trees_close(after.g.opt_state, before.g.opt_state, rtol=0, atol=0)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after.d.params))


def test_adam_epsilon_under_the_root_damps_tiny_gradients():
  """optim.eps_root (Improved-GAN's Adam) shrinks the steps of gradients below ~sqrt(eps_root)."""
  import jax.numpy as jnp
  import ml_collections
  import optax

  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.asarray([1e-6, 1e-4, 1e-1])}

  def first_step(**eps):
    optim = ml_collections.ConfigDict({"lr": 1.0, "b1": 0.5, "b2": 0.999, "decay": "none", **eps})
    tx = state_lib.make_optimizer(optim, num_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return np.asarray(optax.apply_updates(params, updates)["w"])

  # Default (eps outside the root): Adam's first step is -lr * sign(g) for every entry.
  np.testing.assert_allclose(first_step(), [-1.0, -1.0, -1.0], rtol=1e-2)
  # eps_root 1e-8, eps 0: -g / sqrt(g^2 + 1e-8): tiny gradients barely move.
  expected = -np.asarray([1e-6, 1e-4, 1e-1]) / np.sqrt(np.asarray([1e-12, 1e-8, 1e-2]) + 1e-8)
  np.testing.assert_allclose(first_step(eps=0.0, eps_root=1e-8), expected, rtol=1e-4)


def test_exponential_decay_starts_late_and_steps_per_epoch():
  import ml_collections

  from gan import state as state_lib

  optim = ml_collections.ConfigDict(
      {
          "lr": 1.0,
          "b1": 0.5,
          "b2": 0.999,
          "decay": "exponential",
          "decay_rate": 0.5,
          "decay_every": 10,
          "decay_start": 100,
      }
  )
  tx = state_lib.make_optimizer(optim, num_steps=1000)
  params = {"w": jax.numpy.zeros(())}
  opt_state = tx.init(params)
  sizes = []
  for _ in range(125):  # Adam's first step on a constant gradient is -lr exactly
    updates, opt_state = tx.update({"w": jax.numpy.ones(())}, opt_state, params)
    sizes.append(-float(updates["w"]))
  np.testing.assert_allclose(sizes[99], 1.0, rtol=1e-3)  # step 99: not yet decayed
  np.testing.assert_allclose(sizes[105], 1.0, rtol=1e-3)  # within the first 10 after the start
  np.testing.assert_allclose(sizes[112], 0.5, rtol=1e-3)
  np.testing.assert_allclose(sizes[124], 0.25, rtol=1e-3)


def test_linear_decay_holds_until_its_start_then_falls_to_zero():
  import ml_collections

  from gan import state as state_lib

  optim = ml_collections.ConfigDict(
      {"lr": 1.0, "b1": 0.5, "b2": 0.999, "decay": "linear", "decay_start": 100}
  )
  tx = state_lib.make_optimizer(optim, num_steps=200)
  params = {"w": jax.numpy.zeros(())}
  opt_state = tx.init(params)
  sizes = []
  for _ in range(200):  # Adam's step on a constant gradient is -lr exactly
    updates, opt_state = tx.update({"w": jax.numpy.ones(())}, opt_state, params)
    sizes.append(-float(updates["w"]))
  np.testing.assert_allclose(sizes[:101], 1.0, rtol=1e-3)  # held through step 100
  np.testing.assert_allclose(sizes[150], 0.5, rtol=1e-3)  # halfway down
  np.testing.assert_allclose(sizes[199], 0.01, rtol=1e-3)  # 1/100 of the way from 0
  optim.decay_start = 200
  with pytest.raises(ConfigError, match="decay_start"):
    state_lib.make_optimizer(optim, num_steps=200)


def test_separate_learning_rates_decay_linearly_over_each_players_updates(smoke_config):
  """Each player has its own rate, decayed to 0 over its own updates (D: n_critic per G step)."""
  smoke_config.n_critic, smoke_config.num_steps = 2, 10
  smoke_config.optim.g.lr, smoke_config.optim.g.decay = 1.0, "linear"
  smoke_config.optim.d.lr, smoke_config.optim.d.decay = 0.5, "linear"
  G, D = models.build(smoke_config.model, axis_name=None)
  # The optimizers as the run builds them (no parameters needed: shapes only).
  state = jax.eval_shape(lambda: state_lib.create(smoke_config, G, D, (28, 28, 1), 64))
  params = {"w": jax.numpy.zeros(())}
  for player, lr, updates in ((state.g, 1.0, 10), (state.d, 0.5, 20)):
    update = jax.jit(lambda opt_state, tx=player.tx: tx.update({"w": 1.0}, opt_state, params))
    opt_state, sizes = player.tx.init(params), []
    for _ in range(updates + 1):  # Adam's step on a constant gradient is -lr exactly
      step, opt_state = update(opt_state)
      sizes.append(-float(step["w"]))
    expected = lr * (1 - np.arange(updates) / updates)
    np.testing.assert_allclose(sizes[:updates], expected, rtol=1e-4)
    assert abs(sizes[updates]) < 1e-6  # decayed to 0 after its last update
