"""Triple-GAN on CIFAR-10: the conv-large classifier, ZCA, the Pi-model term, the shared trunk.

The end-to-end runs read 1,024 real CIFAR-10 training and 200 test images
once (from $TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the
checkout, as in CI) and are skipped without them (an error with
JAXGAN_TEST_REQUIRE_DATA=1, as in CI); steps compile with most
XLA optimisations off, which dominates their time.
"""

import json

import chex
import conftest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import cifar10_shared_trunk, cifar10_triple_gan
from gan import data, methods, models, ramps
from gan import state as state_lib
from gan import step as step_lib
from gan.models import cifar_semi, shared_trunk, whitening
from gan.parallel import replicate, unreplicate
from gan.semi import labels, triple_gan
from gan.utils import ConfigError

SHARED = conftest.TFDS_DATA_DIR
needs_cifar10 = pytest.mark.tfds("cifar10")


pytestmark = pytest.mark.usefixtures("fast_compilation")  # small programs: compile fast


def test_conv_large_has_the_papers_layers_and_parameter_count():
  C = cifar_semi.ConvLargeClassifier()
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: C.init(jax.random.PRNGKey(0), x, train=False))
  params = variables["params"]
  # Nine weight-normalised convolutions (3x3 x 7, then 1x1 x 2) and the dense layer, no biases:
  # each has a mean-only batch norm with a bias and a running mean.
  kernels = [params[f"WNConv_{i}"]["kernel"].shape for i in range(9)]
  assert kernels == [
      (3, 3, 3, 128),
      (3, 3, 128, 128),
      (3, 3, 128, 128),
      (3, 3, 128, 256),
      (3, 3, 256, 256),
      (3, 3, 256, 256),
      (3, 3, 256, 512),
      (1, 1, 512, 256),
      (1, 1, 256, 128),
  ]
  assert params["WNDense_0"]["kernel"].shape == (128, 10)
  assert all("bias" not in params[f"WNConv_{i}"] for i in range(9))
  weights = 3 * 9 * 128 + 2 * 128 * 9 * 128 + 128 * 9 * 256 + 2 * 256 * 9 * 256
  weights += 256 * 9 * 512 + 512 * 256 + 256 * 128 + 128 * 10
  units = 3 * 128 + 3 * 256 + 512 + 256 + 128 + 10
  assert weights == 3_117_696
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert count == weights + 2 * units  # a weight-norm scale and a batch-norm bias per unit
  stats = variables["batch_stats"]
  assert sum(int(np.prod(s["mean"].shape)) for k, s in stats.items() if k != "zca") == units
  assert stats["zca"]["zca_matrix"].shape == (3072, 3072)
  # Valid 3x3 then two 1x1 layers: 32 -> 16 -> 8 -> 6.
  out = jax.eval_shape(lambda v: C.apply(v, x, train=False), variables)
  assert out.shape == (2, 10)


def test_zca_whitening_gives_identity_covariance():
  rng = np.random.default_rng(0)
  mixing = rng.normal(size=(12, 12)) * 0.3 + np.eye(12)
  pixels = 128 + 20 * rng.normal(size=(4000, 12)) @ mixing
  images = np.clip(np.round(pixels), 0, 255).astype(np.uint8).reshape(4000, 2, 2, 3)
  # eps = 0 in effect (the default 1e-5 shrinks directions of variance s by s / (s + eps)).
  mean, matrix = whitening.fit_zca(images, regularization=1e-10)
  np.testing.assert_allclose(matrix, matrix.T, atol=1e-4)  # ZCA's matrix is symmetric
  x = images.astype(np.float32) * (2.0 / 255.0) - 1.0
  layer = whitening.ZCA()
  variables = layer.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), whitening=(mean, matrix))
  white = np.asarray(layer.apply(variables, jnp.asarray(x))).reshape(4000, 12)
  np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(12), atol=1e-4)
  identity = layer.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]))  # no fit: the identity
  np.testing.assert_array_equal(layer.apply(identity, jnp.asarray(x[:5])), x[:5])


def test_consistency_term_and_ramps_against_hand_computed_values():
  logits = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0]])  # p = (1/2, 1/2), (3/4, 1/4)
  other = jnp.array([[np.log(3.0), 0.0], [np.log(3.0), 0.0]])  # p' = (3/4, 1/4) twice
  # mean over 2 examples x 2 classes of (p - p')^2: (1/16 + 1/16 + 0 + 0) / 4
  np.testing.assert_allclose(triple_gan.consistency(logits, other), 1 / 32, rtol=1e-6)
  assert float(triple_gan.consistency(other, other)) == 0.0
  # Ramp-up over 80 epochs of 500 steps, weight 100, 0 in the first epoch.
  weight = lambda step: float(triple_gan.consistency_weight(step, 100.0, 80, 500))  # noqa: E731
  assert weight(0) == weight(499) == 0.0
  np.testing.assert_allclose(weight(500), 100 * np.exp(-5 * (79 / 80) ** 2), rtol=1e-5)
  np.testing.assert_allclose(weight(40 * 500 + 7), 100 * np.exp(-1.25), rtol=1e-5)
  assert weight(80 * 500) == weight(999 * 500) == 100.0
  # Ramp-down from epoch 250 over 50: exp(-(0.5 (e - 250))^2 / 50).
  assert float(ramps.rampdown(249 * 500, 250, 50, 500)) == 1.0
  np.testing.assert_allclose(ramps.rampdown(260 * 500, 250, 50, 500), np.exp(-0.5), rtol=1e-6)
  # ... which takes C's Adam beta1 from 0.9 towards 0.5 (the paper config's C optimizer,
  # here with 1-step epochs and the ramp-down from epoch 250).
  optim = cifar10_triple_gan.get_config().optim.c
  optim.b1_rampdown.steps_per_epoch = 1
  tx = state_lib.make_optimizer(optim, 1000)
  params = {"w": jnp.zeros(3)}
  opt_state, used = tx.init(params), []
  for _ in range(300):
    _, opt_state = tx.update(params, opt_state, params)
    used.append(float(opt_state[0].hyperparams["b1"]))
  decay = np.exp(-0.5)  # epoch 260
  np.testing.assert_allclose(
      [used[0], used[249], used[260], used[299]],
      [0.9, 0.9, 0.9 * decay + 0.5 * (1 - decay), 0.5],
      rtol=1e-5,
  )


def _three_players(config, num_devices, num_steps):
  """The initial state, the state after each of `num_steps` steps under pmap on
  `num_devices` devices, and the last step's metrics."""
  G, D = models.build(config.model, axis_name=step_lib.AXIS)
  C = models.build_classifier(config.model, axis_name=step_lib.AXIS)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  y = np.arange(64, dtype=np.int32) % 10
  subset = labels.choose(y, config.semi.labels_per_class, seed=0)
  arrays = {"image": images, "label": y, "labelled_image": images[subset]}
  arrays["labelled_label"] = y[subset]
  state = triple_gan.create_state(config, G, D, C, images, len(subset))
  cfg = triple_gan.TripleGANStepConfig.from_config(config)
  devices = jax.devices()[:num_devices]
  p_step = step_lib.pmap_step(triple_gan.make_train_step(cfg, G, D, C), devices)
  p_state, p_data = replicate(state, devices), replicate(arrays, devices)
  states, metrics = [], None
  for _ in range(num_steps):
    p_state, metrics = p_step(p_state, p_data)
    states.append(jax.device_get(unreplicate(p_state)))
  return state, states, jax.device_get(unreplicate(metrics))


def _shared_trunk_config() -> ml_collections.ConfigDict:
  config = cifar10_shared_trunk.get_config("smoke")
  config.model.g.width = config.model.c.width = config.model.d.width = 4
  config.semi.pseudo_start_step = 0
  config.semi.steps_per_epoch = 1  # the consistency term is on from the second step
  config.semi.adversarial_scale = 0.0  # C's loss does not depend on D (see below)
  return config


def test_shared_trunk_step_trains_the_trunk_on_both_losses_under_pmap(monkeypatch):
  config = _shared_trunk_config()
  init, (first, both), metrics = _three_players(config, num_devices=2, num_steps=2)
  assert "trunk" in init.c.params and "trunk" not in init.d.params  # one copy, in C's state
  for name in ("g", "d", "c"):  # every player moved, and C's EMA with it
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b),
        getattr(init, name).params,
        getattr(both, name).params,
    )
    assert all(jax.tree.leaves(moved)), name
  assert not np.allclose(jax.tree.leaves(init.c_ema)[0], jax.tree.leaves(both.c_ema)[0])
  # Step 1 is epoch 1 of the smoke config's 2-epoch ramp-up: 10 exp(-5 (1/2)^2).
  np.testing.assert_allclose(metrics["c/consistency_weight"], 10 * np.exp(-1.25), rtol=1e-6)
  assert metrics["c/consistency"] > 0
  assert np.isfinite(metrics["d/loss"]) and np.isfinite(metrics["c/loss"])
  # One step without D's loss (scaled to 0: zero gradients): C's head trains exactly as
  # in the first step above (its loss does not involve D here) while the trunk trains
  # differently: L_D's gradient reached the trunk. It still moves: so does L_C's.
  discriminator_loss = triple_gan.discriminator_loss
  monkeypatch.setattr(
      triple_gan, "discriminator_loss", lambda *args: 0.0 * discriminator_loss(*args)
  )
  _, (c_only,), _ = _three_players(config, num_devices=2, num_steps=1)
  head = lambda s: {k: v for k, v in s.c.params.items() if k != "trunk"}  # noqa: E731
  chex.assert_trees_all_close(head(first), head(c_only), rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(init.d.params, c_only.d.params)
  # Adam's first step moves every parameter by about the learning rate, whatever its
  # gradient: compare the gradients, through Adam's first moment (1 - beta1) * gradient.
  trunk_mu = lambda s: jax.tree.leaves(s.c.opt_state[0][0].mu["trunk"])  # noqa: E731
  assert all(not np.allclose(a, b) for a, b in zip(trunk_mu(first), trunk_mu(c_only), strict=True))
  assert all(np.any(m != 0) for m in trunk_mu(c_only))
  # semi.trunk_d_weight scales L_D's part of the trunk's gradient: at 1/2 the trunk's
  # first moment lies halfway between the two runs' (and D's head is unchanged by it).
  monkeypatch.setattr(triple_gan, "discriminator_loss", discriminator_loss)
  config.semi.trunk_d_weight = 0.5
  _, (half,), _ = _three_players(config, num_devices=2, num_steps=1)
  for a, b, m in zip(trunk_mu(first), trunk_mu(c_only), trunk_mu(half), strict=True):
    np.testing.assert_allclose(m, (a + b) / 2, rtol=1e-4, atol=1e-9)
  chex.assert_trees_all_close(first.d.params, half.d.params, rtol=1e-6, atol=1e-7)


def test_shared_trunk_needs_matching_trunks():
  config = _shared_trunk_config()
  config.model.d.width = 8
  with pytest.raises(ConfigError, match="same trunk"):
    _three_players(config, num_devices=1, num_steps=0)


def test_a_normalised_trunk_normalises_each_block_and_trains_with_flips():
  """`norm` (layer norm after each trunk block) and `flip` (C's translations and flips), the
  two changes the shared-trunk experiment tries against its recipe."""
  config = _shared_trunk_config()
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 32, 3))
  trunk = shared_trunk.Trunk(width=4, norm="layer")
  variables = trunk.init(jax.random.PRNGKey(1), x, train=False)
  _, inter = trunk.apply(variables, x, train=False, capture_intermediates=True)
  normed = [v["__call__"][0] for k, v in inter["intermediates"].items() if k.startswith("Layer")]
  assert len(normed) == 4  # after each block; scale 1 and bias 0 at initialisation
  for h in normed:
    np.testing.assert_allclose(np.mean(h, axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.var(h, axis=(1, 2, 3)), 1.0, rtol=1e-3)
    # over (H, W, C) together: a norm over the channels alone would set each position's to 1
    assert np.abs(np.var(h, axis=-1) - 1.0).max() > 0.1
  with_both = cifar10_shared_trunk.get_config("smoke,flip,norm")
  assert with_both.semi.classifier_augment == "translation,flip"
  assert with_both.model.c.norm == with_both.model.d.norm == "layer"
  config.semi.classifier_augment = with_both.semi.classifier_augment
  config.model.c.norm = config.model.d.norm = "layer"
  init, (after,), metrics = _three_players(config, num_devices=1, num_steps=1)
  assert "LayerNorm_3" in init.c.params["trunk"] and "trunk" not in init.d.params
  assert np.isfinite(metrics["c/loss"]) and np.isfinite(metrics["d/loss"])
  assert not np.allclose(
      init.c.params["trunk"]["LayerNorm_0"]["scale"],
      after.c.params["trunk"]["LayerNorm_0"]["scale"],
  )
  config.model.d.norm = "none"  # one trunk normalised, the other not: two different trunks
  with pytest.raises(ConfigError, match="same trunk"):
    _three_players(config, num_devices=1, num_steps=0)
  config.model.c.norm = config.model.d.norm = "batch"
  with pytest.raises(ConfigError, match="norm must be one of"):
    _three_players(config, num_devices=1, num_steps=0)


def test_shared_trunk_rejects_an_unknown_pooling():
  config = _shared_trunk_config()
  config.model.d.pool = "max"
  with pytest.raises(ConfigError, match="model.d.pool"):
    _three_players(config, num_devices=1, num_steps=0)


@pytest.fixture(scope="module")
def cifar10_splits():
  """1,024 real training images and 200 test images, read in one TFDS load."""
  both = data.load("cifar10", "train[:1024]+test[:200]", SHARED)
  part = lambda s: data.Split(both.image[s], both.label[s], f"{both.source} {s}")  # noqa: E731
  return {"train": part(slice(0, 1024)), "test": part(slice(1024, None))}


@needs_cifar10
@pytest.mark.parametrize("experiment", [cifar10_triple_gan, cifar10_shared_trunk])
def test_smoke_config_trains_on_real_cifar10_and_reports_test_error(
    experiment, cifar10_splits, monkeypatch, tmp_path
):
  from gan import train  # noqa: PLC0415  (loads data)

  monkeypatch.setattr(data, "load", lambda name, split, data_dir=None: cifar10_splits[split])
  config = experiment.get_config("smoke")
  config.num_steps = 2
  config.evals.classifier.split = "test"
  final = train.train_and_evaluate(config, str(tmp_path))
  result = json.loads((tmp_path / "eval.json").read_text())
  assert result["step"] == 2 and 0.0 <= result["test_error"] <= 1.0
  assert result["classifier"]["protocol"]["num_examples"] == 200
  # The score is C's EMA (with C's running statistics and whitening) on the test images.
  C = models.build_classifier(config.model, axis_name=None)
  test = cifar10_splits["test"]
  x = test.image.astype(np.float32) * (2.0 / 255.0) - 1.0
  variables = {"params": final.c_ema, "batch_stats": final.c.batch_stats}
  errors = int(np.sum(np.argmax(C.apply(variables, x, train=False), -1) != test.label))
  assert result["classifier"]["test_errors"] == errors
  assert result["test_error"] == pytest.approx(errors / 200)
  assert result["labels"]["num_labelled"] == 20
  assert np.isfinite(jax.tree.leaves(final.c_ema)[0]).all()
  if config.semi.get("zca"):  # the whitening fitted at the start travels with C's state
    assert final.c.batch_stats["zca"]["zca_matrix"].shape == (3072, 3072)
  assert isinstance(methods.get(config), methods.TripleGAN)
