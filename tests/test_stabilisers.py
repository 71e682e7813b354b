"""The GAN step's stabilisers: penalties, DiffAugment, minibatch std, conditioning, spectral norm.

Each test compares against a hand computation, a run without the switch or
a property that only the switch gives, so a switch that silently did nothing
fails. Losses and gradients are checked
on `step.make_step_functions` under a named axis of size 1; whole steps run
under pmap on simulated CPU devices (tests/conftest.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from experiments import mnist
from gan import augment, health, methods, models
from gan import state as state_lib
from gan import step as step_lib
from gan.models import conditioning, sngan
from gan.parallel import replicate, unreplicate
from gan.utils import ConfigError

AXIS = step_lib.AXIS
K = 4  # classes
SHAPE = (32, 32, 3)


pytestmark = pytest.mark.usefixtures("fast_compilation")  # small programs: compile fast


class LinearD(nn.Module):
  """D(x) = w . x + b: its input gradient is w for every x, so penalties have closed forms."""

  @nn.compact
  def __call__(self, x, train, y=None):
    del train, y
    dense = nn.Dense(1, kernel_init=nn.initializers.normal(0.1))  # ||w|| ~ 5.5, far from 1
    return dense(x.reshape(x.shape[0], -1))[:, 0]


class ZeroFractionD(nn.Module):
  """Scores each image by its fraction of exactly-zero values (cutout's zeros, nothing else)."""

  @nn.compact
  def __call__(self, x, train, y=None):
    del train, y
    scale = self.param("scale", nn.initializers.ones, ())
    return scale * jnp.mean(x == 0.0, axis=(1, 2, 3))


def _config(**overrides) -> ml_collections.ConfigDict:
  """A tiny CIFAR-shaped GAN: SNGAN standard-CNN G and D of width 4, batch 8."""
  config = mnist.get_config("smoke")
  config.dataset = "cifar10"
  config.batch_size = 8
  config.model.generator = config.model.discriminator = "sngan_cnn32"
  config.model.z_dim = 16
  config.model.g = ml_collections.ConfigDict({"width": 4})
  config.model.d = ml_collections.ConfigDict({"width": 4})
  for key, value in overrides.items():
    config[key] = value
  return config


def _data(n: int = 16) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "image": rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8),
      "label": (np.arange(n) % K).astype(np.int32),
  }


def _modules(config, G=None, D=None):
  built_G, built_D = models.build(config.model, axis_name=AXIS)
  return G or built_G, D or built_D


def _create(config, G, D) -> state_lib.GANState:
  # Jitted: initialising the spectrally normalised D op by op took 3x longer.
  return jax.jit(lambda: state_lib.create(config, G, D, SHAPE, len(_data()["image"])))()


def _run(config, num_devices: int, num_steps: int, G=None, D=None, init=None):
  """(initial state, final state, metrics per step) of a pmapped run."""
  G, D = _modules(config, G, D)
  data = _data()
  init = _create(config, G, D) if init is None else init
  devices = jax.devices()[:num_devices]
  step = step_lib.pmap_step(
      step_lib.make_train_step(methods.get(config).step_config(config), G, D), devices
  )
  state, p_data = replicate(init, devices), replicate(data, devices)
  history = []
  for _ in range(num_steps):
    state, metrics = step(state, p_data)
    history.append(jax.device_get(unreplicate(metrics)))
  return init, jax.device_get(unreplicate(state)), history


def _d_loss_and_grads(config, D, d: state_lib.TrainState, real, fake, real_y=None, fake_y=None):
  """D's loss, aux metrics, parameter gradients and real logits for fixed real and fake images."""
  fns = step_lib.make_step_functions(methods.get(config).step_config(config), None, D)
  keys = jax.random.split(jax.random.PRNGKey(7))

  def one_device():
    def loss(params):
      return fns.d_loss(params, d, real, real_y, fake, fake_y, keys[0], keys[1])

    (value, (real_logits, _, aux, _)), grads = jax.value_and_grad(loss, has_aux=True)(d.params)
    return value, aux, grads, real_logits

  out = jax.jit(jax.vmap(one_device, axis_name=AXIS, axis_size=1))()
  return jax.tree.map(lambda x: np.asarray(x[0], np.float64), out)


def _images(seed: int, n: int = 8) -> jax.Array:
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, *SHAPE), minval=-1.0, maxval=1.0)


def _linear_d_state(config) -> state_lib.TrainState:
  return _create(config, *_modules(config, D=LinearD())).d


def test_gradient_penalty_matches_hand_computation_on_a_linear_d():
  lam = 10.0
  config = _config(loss="wasserstein", gp_weight=lam)
  # In a training step: D's input gradient is w everywhere, so the penalty at any
  # interpolate is (||w|| - 1)^2, from the initial weights in the first update.
  init, _, history = _run(config, num_devices=2, num_steps=1, D=LinearD())
  w = np.asarray(init.d.params["Dense_0"]["kernel"][:, 0], np.float64)
  norm = np.linalg.norm(w)
  np.testing.assert_allclose(history[0]["d/gp"], (norm - 1.0) ** 2, rtol=1e-5)

  # Against the same loss without it: the penalty and its gradient 2 (||w|| - 1) w / ||w||.
  d, real, fake = init.d, _images(0), _images(1)
  with_gp = _d_loss_and_grads(config, LinearD(), d, real, fake)[:3]
  config.gp_weight = 0.0
  without = _d_loss_and_grads(config, LinearD(), d, real, fake)[:3]
  assert "gp" not in without[1]
  np.testing.assert_allclose(with_gp[0] - without[0], lam * (norm - 1.0) ** 2, rtol=1e-5)
  grad_change = with_gp[2]["Dense_0"]["kernel"][:, 0] - without[2]["Dense_0"]["kernel"][:, 0]
  np.testing.assert_allclose(grad_change, lam * 2.0 * (norm - 1.0) * w / norm, atol=1e-5)
  np.testing.assert_allclose(with_gp[2]["Dense_0"]["bias"], without[2]["Dense_0"]["bias"])


def test_r1_matches_hand_computation_and_lazy_r1_scales_by_k():
  gamma = 0.5
  config = _config(r1_gamma=gamma)
  d, real, fake = _linear_d_state(config), _images(0), _images(1)
  w = np.asarray(d.params["Dense_0"]["kernel"][:, 0], np.float64)
  config.r1_gamma = 0.0
  base_loss, _, base_grads, _ = _d_loss_and_grads(config, LinearD(), d, real, fake)
  base_w = base_grads["Dense_0"]["kernel"][:, 0]

  def change(r1_every: int, d_step: int):
    config.r1_gamma, config.r1_every = gamma, r1_every
    loss, aux, grads, _ = _d_loss_and_grads(config, LinearD(), d.replace(step=d_step), real, fake)
    return aux["r1"], loss - base_loss, grads["Dense_0"]["kernel"][:, 0] - base_w

  # R1 = E ||grad_x D(x)||^2 = ||w||^2; the loss gains gamma/2 ||w||^2, the gradient gamma w.
  r1, loss_change, grad_change = change(r1_every=1, d_step=5)
  np.testing.assert_allclose(r1, w @ w, rtol=1e-5)
  np.testing.assert_allclose(loss_change, 0.5 * gamma * (w @ w), rtol=1e-5)
  np.testing.assert_allclose(grad_change, gamma * w, atol=1e-6)
  # Lazy, k = 4: in D's updates 0, 4, 8, ... with weight k * gamma; otherwise nothing.
  for d_step in (0, 8):
    r1, loss_change, grad_change = change(r1_every=4, d_step=d_step)
    np.testing.assert_allclose(loss_change, 0.5 * 4 * gamma * (w @ w), rtol=1e-5)
    np.testing.assert_allclose(grad_change, 4 * gamma * w, atol=1e-6)
  for d_step in (1, 3, 6):
    r1, loss_change, grad_change = change(r1_every=4, d_step=d_step)
    assert r1 == 0.0 and loss_change == 0.0 and not np.any(grad_change)


def test_lazy_r1_in_the_training_step_every_k_d_updates():
  config = _config(r1_gamma=1.0, r1_every=3)
  init, _, history = _run(config, num_devices=2, num_steps=4, D=LinearD())
  r1 = [m["d/r1"] for m in history]
  w = np.asarray(init.d.params["Dense_0"]["kernel"], np.float64)
  np.testing.assert_allclose(r1[0], np.sum(w**2), rtol=1e-5)
  assert r1[3] > 0.0 and r1[1] == r1[2] == 0.0


def _keys(n: int, seed: int = 0) -> jax.Array:
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(n))


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """out[r, c] = x[r + dy, c + dx], zero outside: a translation with zero fill."""
  padded = np.pad(x, ((4, 4), (4, 4), (0, 0)))
  return padded[4 + dy : 4 + dy + x.shape[0], 4 + dx : 4 + dx + x.shape[1]]


def test_diffaugment_operations_change_each_image_as_the_paper_describes():
  x = np.asarray(_images(2))
  keys = _keys(8)
  full = np.asarray(augment.diff_augment(jnp.asarray(x), augment.OPERATIONS, keys))
  assert all(not np.allclose(a, b) for a, b in zip(full, x, strict=True))
  # Translation: a shift of at most 32/8 = 4 pixels each way, zeros shifted in.
  moved = np.asarray(augment.diff_augment(jnp.asarray(x), ("translation",), keys))
  shifts = []
  for out, image in zip(moved, x, strict=True):
    found = [
        (dy, dx)
        for dy in range(-4, 5)
        for dx in range(-4, 5)
        if np.array_equal(out, _shift(image, dy, dx))
    ]
    assert len(found) == 1
    shifts += found
  assert len(set(shifts)) > 1  # drawn per example
  # Cutout: one zeroed rectangle of a 16x16 square clipped at the border, the rest kept.
  cut = np.asarray(augment.diff_augment(jnp.asarray(x), ("cutout",), keys))
  for out, image in zip(cut, x, strict=True):
    zeroed = np.all(out == 0.0, axis=-1)
    rows, cols = np.flatnonzero(zeroed.any(axis=1)), np.flatnonzero(zeroed.any(axis=0))
    assert zeroed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
    assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
    np.testing.assert_array_equal(out[~zeroed], image[~zeroed])
  # Flip: each image mirrored left-right or kept, about half of them mirrored.
  flipped = np.asarray(augment.diff_augment(jnp.asarray(x), ("flip",), keys))
  mirrored = [np.array_equal(out, image[:, ::-1]) for out, image in zip(flipped, x, strict=True)]
  kept = [np.array_equal(out, image) for out, image in zip(flipped, x, strict=True)]
  assert all(m != k for m, k in zip(mirrored, kept, strict=True)) and 0 < sum(mirrored) < 8
  many = augment.diff_augment(jnp.tile(jnp.asarray(x[:1]), (64, 1, 1, 1)), ("flip",), _keys(64))
  assert 20 <= int(np.sum(np.all(np.asarray(many) != x[:1], axis=(1, 2, 3)))) <= 44
  # Adding an operation to a policy leaves the other operations' draws unchanged.
  both = augment.diff_augment(jnp.asarray(x), ("translation", "flip"), keys)
  for out, shifted, m in zip(np.asarray(both), moved, mirrored, strict=True):
    np.testing.assert_array_equal(out, shifted[:, ::-1] if m else shifted)
  # Colour: brightness moves each image's mean by u - 1/2 (saturation and contrast keep it).
  colour = np.asarray(augment.diff_augment(jnp.asarray(x), ("color",), keys))
  mean_shift = colour.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3))
  assert np.all(np.abs(mean_shift) <= 0.5) and np.std(mean_shift) > 0.01


def test_diffaugment_is_differentiable_and_independent_of_the_device_split():
  x, keys = _images(3), _keys(8)
  # d sum(cutout(x)) / dx is the keep mask: 1 on visible pixels, 0 in the square.
  grad = jax.grad(lambda v: jnp.sum(augment.diff_augment(v, ("cutout",), keys)))(x)
  cut = augment.diff_augment(x, ("cutout",), keys)
  np.testing.assert_array_equal(grad, (cut != 0.0).astype(np.float32))
  # Translation's gradient moves the cotangent back by the shift: nonzero, same total
  # over the pixels that stay in view.
  grad = jax.grad(lambda v: jnp.sum(augment.diff_augment(v, ("translation",), keys) * v))(x)
  assert np.count_nonzero(grad) > 0.5 * grad.size

  # Example i's augmentation comes from its index in the global batch only.
  def per_device(images):
    return augment.diff_augment(
        images, augment.OPERATIONS, step_lib.example_keys(jax.random.PRNGKey(4), images.shape[0])
    )

  devices = jax.devices()
  one = jax.pmap(per_device, axis_name=AXIS, devices=devices[:1])(x[None])
  two = jax.pmap(per_device, axis_name=AXIS, devices=devices[:2])(x.reshape(2, 4, *SHAPE))
  np.testing.assert_array_equal(two.reshape(x.shape), one[0])


def test_diffaugment_reaches_real_and_fake_images_in_both_updates():
  # Random uint8 images and tanh outputs contain no exact zeros; cutout zeroes 1/16
  # to 1/4 of each image. So every D input scored in [1/16, 1/4] was augmented.
  config = _config(diffaugment="cutout")
  _, _, history = _run(config, num_devices=2, num_steps=1, D=ZeroFractionD())
  for name in ("d/real_logit", "d/fake_logit", "g/fake_logit"):
    assert 1 / 16 <= history[0][name] <= 1 / 4, name


def test_minibatch_std_appends_the_hand_computed_statistic():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (8, 4, 4, 3)))
  out = np.asarray(conditioning.minibatch_stddev(jnp.asarray(x), 4))
  assert out.shape == (8, 4, 4, 4)
  np.testing.assert_array_equal(out[..., :3], x)
  for group in (slice(0, 4), slice(4, 8)):
    # Per feature and position: the standard deviation over the group's 4 examples
    # (divided by 4, + 1e-8 under the root), then the mean of those 4*4*3 numbers.
    expected = np.mean(np.sqrt(np.var(x[group].astype(np.float64), axis=0) + 1e-8))
    np.testing.assert_allclose(out[group, ..., 3], expected, rtol=1e-5)
  assert not np.isclose(out[0, 0, 0, 3], out[4, 0, 0, 3])

  # In D: one more input channel for the last convolution ...
  images = _images(6)
  plain = sngan.CNNDiscriminator32(width=4, spectral_norm=False)
  with_std = plain.clone(minibatch_std=4)
  variables = with_std.init(jax.random.PRNGKey(0), images, train=False)
  plain_kernel = plain.init(jax.random.PRNGKey(0), images, train=False)["params"]["conv6"]
  assert variables["params"]["conv6"]["kernel"].shape[2] == plain_kernel["kernel"].shape[2] + 1
  # ... and the same logits for a batch of 8 on one device or split over two.
  whole = with_std.apply(variables, images, train=False)
  split = jax.pmap(lambda v: with_std.apply(variables, v, train=False), devices=jax.devices()[:2])(
      images.reshape(2, 4, *SHAPE)
  )
  np.testing.assert_allclose(split.reshape(-1), whole, rtol=1e-5, atol=1e-6)


def test_step_rejects_a_device_batch_that_splits_minibatch_std_groups():
  config = _config()
  config.model.d.minibatch_std = 4
  G, D = _modules(config)
  state = jax.eval_shape(lambda: state_lib.create(config, G, D, SHAPE, len(_data()["image"])))
  step = step_lib.make_train_step(methods.get(config).step_config(config), G, D)
  for devices, fails in ((2, False), (4, True)):  # 4 or 2 examples per device
    mapped = jax.vmap(step, in_axes=(None, None), axis_name=AXIS, axis_size=devices)
    if fails:
      with pytest.raises(ConfigError, match="minibatch_std"):
        jax.eval_shape(mapped, state, _data())
    else:
      jax.eval_shape(mapped, state, _data())


def test_auxiliary_classifier_and_labels_reach_both_losses():
  config = _config(ac_weight=0.5)
  config.model.g.num_classes = config.model.d.num_classes = K
  config.model.d.ac_head = True
  config.model.d.spectral_norm = False  # D's outputs then do not depend on batch_stats
  G, D = _modules(config)
  init = _create(config, G, D)
  real, fake = _images(7), _images(8)
  real_y, fake_y = jnp.arange(8) % K, (jnp.arange(8) + 1) % K

  def cross_entropy(class_logits, y):
    logp = jax.nn.log_softmax(np.asarray(class_logits, np.float64))
    return -np.mean(logp[np.arange(len(y)), np.asarray(y)])

  variables = init.d.variables()
  real_out = D.apply(variables, real, train=False, y=real_y)
  fake_out = D.apply(variables, fake, train=False, y=fake_y)
  expected = cross_entropy(real_out[1], real_y) + cross_entropy(fake_out[1], fake_y)
  loss, aux, _, real_logits = _d_loss_and_grads(config, D, init.d, real, fake, real_y, fake_y)
  np.testing.assert_allclose(aux["ac_loss"], expected, rtol=1e-5)
  config.ac_weight = 0.0
  loss_without, *_ = _d_loss_and_grads(config, D, init.d, real, fake, real_y, fake_y)
  np.testing.assert_allclose(loss - loss_without, 0.5 * expected, rtol=1e-5)
  # The real labels reach the projection term (the logits are ~1e-6 at initialisation).
  np.testing.assert_allclose(real_logits, real_out[0], rtol=1e-4)
  other = D.apply(variables, real, train=False, y=(real_y + 1) % K)[0]
  assert not np.allclose(real_logits, other, rtol=1e-2, atol=0)

  # G's loss: the class cross-entropy of its fakes against the labels they were made from.
  fns = step_lib.make_step_functions(methods.get(config).step_config(config), G, D)
  z = jax.random.normal(jax.random.PRNGKey(9), (8, 16))

  def g_side():
    fake_images, _ = fns.generate(init.g, init.g.params, z, fake_y)
    _, (_, aux, _, _) = fns.g_loss(init.g.params, init.g, init.d, z, fake_y, jax.random.key(0))
    return fake_images, aux["ac_loss"]

  g_side = jax.jit(jax.vmap(g_side, axis_name=AXIS, axis_size=1))
  fake_images, g_ac = jax.tree.map(lambda v: v[0], g_side())
  class_logits = D.apply(variables, fake_images, train=False, y=fake_y)[1]
  np.testing.assert_allclose(g_ac, cross_entropy(class_logits, fake_y), rtol=1e-5)


def _spectral_state(batch_stats) -> dict:
  flat = traverse_util.flatten_dict(batch_stats)
  return {k: np.asarray(v) for k, v in flat.items() if k[-1].endswith(("/u", "/sigma"))}


def _assert_trees_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5), a, b)


def test_spectral_norm_state_advances_and_every_stabiliser_runs_on_two_devices():
  # SNGAN's D with projection and AC head, hinge loss, 2 D updates per G update, and
  # the stabilisers on (R1 runs on 2 devices in the lazy-R1 test); 1 device and 2
  # devices must agree.
  config = _config(
      loss="hinge",
      n_critic=2,
      gp_weight=1.0,
      diffaugment="color,translation,cutout",
  )
  config.model.g.num_classes = K
  config.model.d.update({"num_classes": K, "ac_head": True, "minibatch_std": 4})
  config.optim.g.decay = config.optim.d.decay = "linear"
  # Devices sum gradients in another order. Adam with eps 1e-8 turns the rounding of a
  # near-zero gradient into up to a whole step (lr 2e-4) of either sign, and this tiny
  # D passes G gradients of ~1e-8 and below; a large eps keeps such steps proportional
  # to the gradient, so 1 and 2 devices agree to rounding (1e-4 was not enough for the
  # draws of the named random streams: one spectral-norm vector differed by 3e-4).
  config.optim.g.eps = config.optim.d.eps = 1e-3
  init = _create(config, *_modules(config))
  _, single, single_history = _run(config, num_devices=1, num_steps=2, init=init)
  _, multi, multi_history = _run(config, num_devices=2, num_steps=2, init=init)

  assert int(multi.d.step) == 4 and int(multi.step) == 2
  before, after = _spectral_state(init.d.batch_stats), _spectral_state(multi.d.batch_stats)
  # u and sigma of 7 convolutions, the dense layer, the embedding and the class head.
  assert len(before) == 2 * 10
  assert all(not np.allclose(before[k], after[k]) for k in before)
  _assert_trees_close(single.d.batch_stats, multi.d.batch_stats)
  _assert_trees_close(single.d.params, multi.d.params)
  _assert_trees_close(single.g.params, multi.g.params)
  _assert_trees_close(single.g_ema, multi.g_ema)
  for s, m in zip(single_history, multi_history, strict=True):
    _assert_trees_close(s, m)
  metrics = multi_history[-1]
  for name in ("d/gp", "d/ac_loss", "d/real_class_acc", "g/ac_loss"):
    assert np.isfinite(metrics[name]) and name in single_history[-1]
  assert metrics["g/grad_norm"] > 0.0 and metrics["health/finite"] == 1.0

  # The health monitor's probe runs D in inference mode: it reads the state, writes none.
  G, D = _modules(config)
  z = jax.random.normal(jax.random.PRNGKey(1), (8, 16))
  ratio = health.make_diversity_fn(G, D)(multi.g, multi.d, _images(9), z)
  assert np.isfinite(ratio)
