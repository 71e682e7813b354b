"""Population sweeps: members expanded from config.sweep, the vmapped step equal to single runs,
member runs and sweep.json, health per member, resume."""

import json
import os

import chex
import jax
import ml_collections
import numpy as np
import pytest

from experiments import toy2d
from gan import data, health, methods, models, population, sweep, train, writers
from gan import state as state_lib
from gan import step as step_lib
from gan.parallel import replicate, unreplicate
from gan.utils import ConfigError

pytestmark = pytest.mark.usefixtures("fast_compilation")


def _config(num_steps: int = 6, **sweep_settings) -> ml_collections.ConfigDict:
  """The ring8 smoke config, shortened, with the given sweep section."""
  config = toy2d.get_config("smoke")
  # A constant learning rate: a run stopped early and resumed then equals a full one.
  config.optim.g.decay = config.optim.d.decay = "none"
  config.num_steps, config.log_every, config.checkpoint_every = num_steps, 2, 3
  config.sample_every = config.evals.toy2d.every = 3
  config.evals.toy2d.num_samples = 200
  config.sweep = ml_collections.ConfigDict(sweep_settings)
  return config


def test_grid_and_random_members():
  config = _config(seed=(0, 1), params={"optim/g/lr,optim/d/lr": (1e-3, 2e-3), "loss": ("a", "b")})
  members = population.expand(config)
  assert [m.hyperparameters for m in members[:3]] == [
      {"seed": 0, "loss": "a", "optim.g.lr": 1e-3, "optim.d.lr": 1e-3},
      {"seed": 0, "loss": "a", "optim.g.lr": 2e-3, "optim.d.lr": 2e-3},
      {"seed": 0, "loss": "b", "optim.g.lr": 1e-3, "optim.d.lr": 1e-3},
  ]
  assert len(members) == 8 and members[7].config.seed == 1
  assert members[7].config.optim.d.lr == 2e-3 and members[7].config.loss == "b"
  assert config.optim.g.lr == 2e-3 and config.loss == "non_saturating"  # the base is untouched
  assert population.traced_keys(members) == ("optim.g.lr", "optim.d.lr")
  assert len({population.group_key(m) for m in members}) == 2  # one program per loss

  config = _config(
      mode="random",
      members=5,
      params={"optim/g/lr": {"min": 1e-4, "max": 1e-2, "log": True}, "n_critic": (1, 2)},
  )
  members = population.expand(config)
  assert [m.seed for m in members] == [0, 1, 2, 3, 4]
  assert all(1e-4 <= m.config.optim.g.lr <= 1e-2 for m in members)
  assert len({m.config.optim.g.lr for m in members}) == 5
  assert {m.config.n_critic for m in members} <= {1, 2}
  assert [m.values for m in population.expand(config)] == [m.values for m in members]

  for bad in (
      {"params": {"optim/g/lr_typo": (1.0,)}},
      {"params": {"batch_size": (8, 16)}},
      {"params": {"seed": (1, 2)}},
      {"seed": (0, 1), "members": 3},
      {"mode": "random"},
      {"mode": "bayesian"},
  ):
    with pytest.raises(ConfigError):
      population.expand(_config(**bad))


def _assert_close(a, b):
  # Members and single runs differ only in XLA's rounding of the batched (vmapped)
  # matrix products and of the traced hyperparameters.
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


def test_vmapped_members_equal_single_runs_on_two_devices():
  config = _config(
      mode="random",
      members=4,
      seed=(0, 1, 0, 1),
      params={
          "optim/g/lr,optim/d/lr": (1e-3, 3e-3),
          "optim/d/b1": (0.0, 0.5),
          "r1_gamma": (0.0, 0.3),
          "ema_decay": (0.9, 0.99),
      },
      random_seed=3,
  )
  members = population.expand(config)
  values = [m.values for m in members]
  assert len({v["optim.g.lr"] for v in values}) == 2 and len({v["r1_gamma"] for v in values}) == 2
  devices = jax.devices()[:2]
  G, D = models.build(config.model, axis_name=step_lib.AXIS)
  split = data.load(config.dataset, config.train_split)
  p_data = replicate(split.arrays(), devices)
  states = [state_lib.create(m.config, G, D, (2,), split.num_examples) for m in members]
  nets, traced = methods.Networks(G, D), population.traced_keys(members)
  step = population.make_population_step(config, methods.get(config), nets, traced)
  p_pop = replicate(population.create(members, states), devices)
  p_step = step_lib.pmap_step(step, devices)
  metrics = []
  for _ in range(3):
    p_pop, p_metrics = p_step(p_pop, p_data)
    metrics.append(jax.device_get(unreplicate(p_metrics)))
  final = jax.device_get(unreplicate(p_pop.state))
  for k, member in enumerate(members):
    single_step = step_lib.pmap_step(
        step_lib.make_train_step(methods.get(member.config).step_config(member.config), G, D),
        devices,
    )
    p_state = replicate(states[k], devices)
    for t in range(3):
      p_state, p_metrics = single_step(p_state, p_data)
      expected = jax.device_get(unreplicate(p_metrics))  # no "d/r1" where r1_gamma is 0
      _assert_close({key: metrics[t][key][k] for key in expected}, expected)
    single = jax.device_get(unreplicate(p_state))
    ours = population.take(final, k)
    for name in ("g", "d"):
      _assert_close(getattr(ours, name).params, getattr(single, name).params)
      _assert_close(getattr(ours, name).opt_state, getattr(single, name).opt_state)
    _assert_close(ours.g_ema, single.g_ema)
    np.testing.assert_array_equal(ours.data_perm, single.data_perm)
  # The hyperparameters take effect: Adam's first step moves every parameter by about
  # its learning rate, so members of one seed differ by their rates' ratio.
  kernels = [state.g.params["Dense_0"]["kernel"] for state in states]
  moved = [np.max(np.abs(final.g.params["Dense_0"]["kernel"][k] - kernels[k])) for k in range(4)]
  by_lr = {v["optim.g.lr"]: m for v, m in zip(values, moved, strict=True)}
  assert by_lr[3e-3] > 2 * by_lr[1e-3]


def test_vmapped_data_order_equals_each_members():
  # 10 examples, batch 2: epochs of 5 batches. Member 1 starts epoch 1 at its batch 5; the
  # others are inside an epoch, so only its permutation is redrawn.
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  arrays = {"image": jax.numpy.asarray(images), "label": jax.numpy.arange(10)}
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  batches = np.asarray([4, 5, 9], np.int32)
  perms = np.stack([np.asarray(data.epoch_permutation(k, 0, 10)) for k in keys])

  def draw(perm, key, batch):
    return data.next_batch(arrays, perm, key, batch, 2, None)

  population_perms, population_batch = jax.device_get(jax.jit(jax.vmap(draw))(perms, keys, batches))
  for k in range(3):
    perm, batch = draw(perms[k], keys[k], batches[k])
    np.testing.assert_array_equal(population_perms[k], perm)
    np.testing.assert_array_equal(population_batch["label"][k], batch["label"])
  assert not np.array_equal(population_perms[1], perms[1])
  np.testing.assert_array_equal(population_perms[[0, 2]], perms[[0, 2]])


def _params(state):
  return (state.g.params, state.d.params, state.g_ema, state.g.opt_state, state.d.opt_state)


def test_a_sweep_resumes_and_its_members_equal_single_runs(tmp_path):
  # 4 members in 2 groups (losses), stopped after 3 steps and resumed to 6.
  config = _config(
      num_steps=3,
      seed=(0, 1),
      params={"loss": ("non_saturating", "hinge")},
      target={"metric": "toy2d/high_quality_fraction", "mode": "max", "threshold": 0.01},
  )
  workdir = tmp_path / "sweep"
  sweep.train_population(config, str(workdir))
  config.num_steps = 6
  states = sweep.train_population(config, str(workdir))
  summary = json.loads((workdir / "sweep.json").read_text())
  assert summary["num_members"] == 4 and len(summary["members"]) == 4
  assert (workdir / "sweep.png").exists()
  successes = 0
  for entry, state in zip(summary["members"], states, strict=True):
    run_dir = workdir / entry["workdir"]
    assert int(state.step) == 6 and entry["step"] == 6
    assert [r["step"] for r in writers.read_metrics(run_dir) if "d/loss" in r] == [2, 3, 4, 6]
    assert sorted(os.listdir(run_dir / "checkpoints"))[-1] == "6"
    evaluation = json.loads((run_dir / "eval.json").read_text())
    quality = evaluation["toy2d"]["high_quality_fraction"]
    assert entry["eval"]["toy2d/high_quality_fraction"] == quality
    assert entry["health"]["verdict"] == "healthy"
    assert entry["target_reached"] == (quality >= 0.01) and entry["success"] == (quality >= 0.01)
    successes += entry["success"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["seed"] == entry["hyperparameters"]["seed"]
    assert saved["loss"] == entry["hyperparameters"]["loss"]
  assert [e["group"] for e in summary["members"]] == [0, 1, 0, 1]
  assert summary["success_rate"] == successes / 4
  values = [e["target_value"] for e in summary["members"]]
  ranked = [values[k] for k in summary["ranking"]]
  assert sorted(summary["ranking"]) == [0, 1, 2, 3]
  assert ranked[: summary["successes"]] == sorted(ranked[: summary["successes"]], reverse=True)

  # Each member, resumed inside its population, is the run gan.main makes of its config
  # uninterrupted (one member of each group).
  for k in (0, 3):
    single = train.train_and_evaluate(population.expand(config)[k].config, str(tmp_path / f"{k}"))
    _assert_close(_params(jax.device_get(single)), _params(states[k]))


def test_health_acts_per_member(tmp_path):
  # Member 1's learning rate blows it up: it is rolled back, diverges again and is stopped
  # (one rollback allowed); member 0 trains on undisturbed.
  config = _config(num_steps=10, params={"optim/g/lr,optim/d/lr": (1e-3, 30.0)})
  config.log_every = 1
  config.health = health.defaults()
  config.health.max_rollbacks = 1
  states = sweep.train_population(config, str(tmp_path))
  summary = json.loads((tmp_path / "sweep.json").read_text())
  healthy, broken = summary["members"]
  assert healthy["health"]["events"] == [] and int(states[0].step) == 10
  assert broken["health"]["verdict"] == "unhealthy"
  actions = [e.split(" -> ")[1] for e in broken["health"]["events"]]
  assert actions == ["rollback", "stop"]
  assert json.loads((tmp_path / "member_1" / "health.json").read_text())["lr_scale"] == 0.5
  assert summary["ranking"][0] == 0


def test_members_tied_on_the_target_are_ranked_by_the_best_checkpoint_metric(tmp_path):
  # Every ring8 member finds all 8 modes: the ranking then follows the high-quality fraction
  # (config.best_checkpoint's metric), and sweep.png labels each bar with both values.
  config = _config(seed=(0, 1, 2), target={"metric": "toy2d/modes", "mode": "max", "threshold": 8})
  specs = population.expand(config)
  for spec, (modes, quality) in zip(specs, [(8, 0.95), (8, 0.98), (7, 0.99)], strict=True):
    run_dir = tmp_path / f"member_{spec.index}"
    run_dir.mkdir()
    evaluation = {"step": 6, "toy2d": {"modes": modes, "high_quality_fraction": quality}}
    (run_dir / "eval.json").write_text(json.dumps(evaluation))
  summary = sweep.summarise(config, str(tmp_path), specs)
  assert summary["tiebreak"] == {"metric": "toy2d/high_quality_fraction", "mode": "max"}
  assert summary["ranking"] == [1, 0, 2] and summary["successes"] == 2
  assert [e["tiebreak_value"] for e in summary["members"]] == [0.95, 0.98, 0.99]
  assert (tmp_path / "sweep.png").exists()

  config.best_checkpoint.metric = "toy2d/modes"  # no other metric to break ties: member order
  assert sweep.summarise(config, str(tmp_path), specs)["ranking"] == [0, 1, 2]
