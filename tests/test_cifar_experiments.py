"""The CIFAR-10 experiments: configs state the papers' recipes, smoke runs train on the real data.

The end-to-end runs read real CIFAR-10 training images once (from
$TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the checkout, as in
CI) and are skipped without them (an error with JAXGAN_TEST_REQUIRE_DATA=1,
as in CI). Tracing and compiling the real steps, even at
tiny widths, is most of their time, so each config trains once: the
conditional one in bfloat16 (mixed precision end to end), the standard CNN in
float32, and `experiments/cifar10.py` (the issue's done-when) also resumes
after a simulated crash, reusing its compiled step.
"""

import os
import shutil

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_cifar_models import _spectral_pairs

from experiments import cifar10, cifar10_cgan_pd, cifar10_dcgan
from gan import data, methods, models, train, writers
from gan import state as state_lib
from gan import step as step_lib
from gan.checkpoint import Checkpointer
from gan.evaluation import evaluators

SHARED = conftest.TFDS_DATA_DIR
needs_cifar10 = pytest.mark.tfds("cifar10")
EXPERIMENTS = {m.__name__.split(".")[-1]: m for m in (cifar10, cifar10_dcgan, cifar10_cgan_pd)}

# The smoke steps are tiny: compiling them fast matters, running them fast does not.
pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture(scope="module")
def cifar10_train():
  """The first 1,024 real training images: reading all 50,000 took twice as long (12 s)."""
  return data.load("cifar10", "train[:1024]", SHARED)


@pytest.fixture
def real_data(cifar10_train, monkeypatch):
  """The loop's read of the CIFAR-10 training split returns the images loaded once above."""

  def load(name, split, data_dir=None):
    assert (name, split) == ("cifar10", "train")
    return cifar10_train

  monkeypatch.setattr(data, "load", load)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.parametrize("variant", ["", "smoke", "smoke,bf16"])
def test_configs_build(name, variant):
  config = EXPERIMENTS[name].get_config(variant)
  G, D = models.build(config.model, axis_name=None)
  methods.get(config).step_config(config)
  for cfg in config.evals.values():
    evaluators.settings(**cfg.to_dict())  # known kinds and settings
  state = jax.eval_shape(lambda: state_lib.create(config, G, D, (32, 32, 3), 50_000))
  leaves = jax.tree.leaves((state.g.params, state.d.params, state.g.opt_state, state.d.opt_state))
  assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {np.dtype("float32")}
  if config.model.g.get("num_classes"):
    assert "embed" in state.d.params  # the projection
  with pytest.raises(ValueError, match="unknown variant"):
    EXPERIMENTS[name].get_config("smoke,nope")


def test_full_configs_state_the_papers_recipes():
  resnet, cnn, cgan = cifar10.get_config(), cifar10_dcgan.get_config(), cifar10_cgan_pd.get_config()
  for config in (resnet, cgan):
    assert (config.model.g.width, config.model.d.width, config.model.z_dim) == (256, 128, 128)
    assert (config.loss, config.n_critic, config.batch_size, config.num_steps) == (
        "hinge",
        5,
        64,
        50_000,
    )
    for optim in (config.optim.g, config.optim.d):
      assert (optim.lr, optim.b1, optim.b2, optim.decay) == (2e-4, 0.0, 0.9, "linear")
  assert (cnn.model.g.width, cnn.loss, cnn.n_critic, cnn.num_steps) == (64, "hinge", 1, 100_000)
  assert (cnn.optim.d.lr, cnn.optim.d.b1, cnn.optim.d.b2, cnn.optim.d.decay) == (
      2e-4,
      0.5,
      0.999,
      "none",
  )
  assert cgan.model.g.num_classes == cgan.model.d.num_classes == 10
  for config in (resnet, cnn, cgan):
    assert config.ema_decay == 0.9999 and config.model.discriminator.startswith("sngan")
    fid = config.evals.fid  # the standard protocol, and optional where the weights are missing
    assert (fid.num_samples, fid.split, fid.num_reference, fid.optional) == (
        50_000,
        "train",
        50_000,
        True,
    )
    assert config.best_checkpoint.metric == "cifar_resnet20/fcd"
  cpu30 = cifar10.get_config("cpu30")
  assert cpu30.num_steps // cpu30.evals.cifar_resnet20.every >= 5  # an FCD curve
  # FID against the lossless test split: a curve of 2,000 samples, 5,000 (the papers') at the end.
  curve, final = cpu30.evals.fid_2k, cpu30.evals.fid
  assert cpu30.num_steps // curve.every >= 5 and cpu30.num_steps % final.every == 0
  assert cpu30.best_checkpoint.metric == "fid_2k/fid"
  assert (curve.num_samples, final.num_samples) == (2_000, 5_000)
  for fid in (curve, final):
    assert (fid.split, fid.num_reference, fid.optional) == ("test", 10_000, True)


def _finite_metrics(workdir: str) -> list[dict]:
  records = writers.read_metrics(workdir)
  assert records and all(np.isfinite(r["d/loss"]) and np.isfinite(r["g/loss"]) for r in records)
  assert all(r["health/finite"] == 1.0 for r in records)  # the guard dropped no update
  return records


@pytest.fixture
def one_compiled_step(monkeypatch):
  """Runs of one config share one compiled step, which every Run would compile anew.

  Compiling the n_critic=5 step is most of a smoke run's time. The key is the
  step's whole static configuration and both modules, so only runs of the same
  config share.
  """
  make, steps, wrapped = step_lib.make_train_step, {}, {}

  def make_once(cfg, G, D):
    key = (repr(cfg), G, D)
    if key not in steps:
      steps[key] = make(cfg, G, D)
    return steps[key]

  def once(wrap):  # the loop's wrapper (pmap or shard_map), applied once per step function
    def wrap_once(fn, *args, **kwargs):
      if (wrap, fn) not in wrapped:
        wrapped[wrap, fn] = wrap(fn, *args, **kwargs)
      return wrapped[wrap, fn]

    return wrap_once

  monkeypatch.setattr(step_lib, "make_train_step", make_once)
  monkeypatch.setattr(step_lib, "pmap_step", once(step_lib.pmap_step))
  monkeypatch.setattr(step_lib, "shard_map_step", once(step_lib.shard_map_step))


@needs_cifar10
def test_cifar10_smoke_trains_on_real_data_and_resumes(
    real_data, one_compiled_step, tmp_path, capsys
):
  config = cifar10.get_config("smoke")  # 4 steps, samples and checkpoints every 2
  final = train.train_and_evaluate(config, str(tmp_path))
  assert int(final.step) == 4 and int(final.d.step) == 20  # n_critic 5
  assert sorted(os.listdir(tmp_path / "samples")) == ["step_000002.png", "step_000004.png"]
  assert Checkpointer(str(tmp_path), keep=3).all_steps() == [2, 4]
  assert [r["step"] for r in _finite_metrics(str(tmp_path))] == [2, 4]
  # A crash after the step-2 checkpoint: the rerun resumes there and ends where the run did
  # (with the same config: num_steps is also the horizon of the linear decay).
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert "Resuming from step 2" in capsys.readouterr().out
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  # Spectral norm after training: every normalised weight W / sigma has its largest
  # singular value near 1 (44 power-iteration steps while Adam moved W).
  variables = jax.device_get({"params": final.d.params, "batch_stats": final.d.batch_stats})
  pairs = _spectral_pairs(variables)
  ratios = np.array([np.linalg.svd(m, compute_uv=False)[0] / sigma for m, sigma in pairs])
  assert len(ratios) == 11  # 8 convolutions, 2 shortcut convolutions and the dense layer
  assert np.all(ratios > 0.99) and np.all(ratios < 1.05), ratios


@needs_cifar10
@pytest.mark.parametrize(
    ("name", "variant"), [("cifar10_cgan_pd", "smoke,bf16"), ("cifar10_dcgan", "smoke")]
)
def test_smoke_trains_on_real_data_and_restores(name, variant, real_data, tmp_path):
  config = EXPERIMENTS[name].get_config(variant)
  config.num_steps = 2
  final = train.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / "samples") == ["step_000002.png"]
  assert Checkpointer(str(tmp_path), keep=3).all_steps() == [2]
  _finite_metrics(str(tmp_path))
  grid = Image.open(tmp_path / "samples" / "step_000002.png")
  if config.model.g.get("num_classes"):  # one column per class, 32 pixels and a 1-pixel gap
    assert grid.size == (10 * 33 + 1, 2 * 33 + 1)
  restored = train.train_and_evaluate(config, str(tmp_path))  # nothing left to train
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(a, b)
  if config.model.dtype == "bfloat16":
    # Parameters, batch-norm and spectral-norm statistics, Adam's moments and the EMA
    # stay float32; G's layers compute in bfloat16 and hand float32 images to D.
    floats = {x.dtype for x in jax.tree.leaves(final) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert floats == {np.dtype("float32")}
    G, _ = models.build(config.model, axis_name=None)
    images, inner = G.apply(
        final.g.variables(),
        jnp.zeros((2, config.model.z_dim)),
        train=False,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    assert images.dtype == jnp.float32
    assert inner["intermediates"]["Conv_0"]["__call__"][0].dtype == jnp.bfloat16
