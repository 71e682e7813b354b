"""DCGAN architecture: parameter counts of the published model, shapes and modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gan import models


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init(config):
  G, D = models.build(config.model, axis_name=None)
  g_vars = G.init(jax.random.PRNGKey(0), jnp.zeros((2, config.model.z_dim)), train=False)
  d_vars = D.init(jax.random.PRNGKey(1), jnp.zeros((2, 28, 28, 1)), train=False)
  return G, D, g_vars, d_vars


def test_parameter_counts_match_tensorflow_dcgan_tutorial(smoke_config):
  config = smoke_config
  config.model.g.width = 64
  config.model.d.width = 64
  _, _, g_vars, d_vars = _init(config)
  assert _count(g_vars["params"]) == 2_305_472
  assert _count(d_vars["params"]) == 212_865
  # Batch-norm running statistics are state, not trainable parameters.
  assert _count(g_vars["batch_stats"]) == 2 * (7 * 7 * 256 + 128 + 64)
  flat = traverse_util.flatten_dict(g_vars["params"], sep="/")
  assert not any(name.endswith("bias") for name in flat if "Conv" in name or "Dense" in name)


def test_generator_and_discriminator_shapes(smoke_config):
  G, D, g_vars, d_vars = _init(smoke_config)
  z = jax.random.normal(jax.random.PRNGKey(2), (3, 100))
  images = G.apply(g_vars, z, train=False)
  assert images.shape == (3, 28, 28, 1)
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  logits = D.apply(d_vars, images, train=False)
  assert logits.shape == (3,)


def test_discriminator_dropout_only_in_train_mode(smoke_config):
  _, D, _, d_vars = _init(smoke_config)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 28, 28, 1))
  eval_a = D.apply(d_vars, x, train=False)
  eval_b = D.apply(d_vars, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = D.apply(d_vars, x, train=True, rngs={"dropout": jax.random.PRNGKey(4)})
  train_b = D.apply(d_vars, x, train=True, rngs={"dropout": jax.random.PRNGKey(5)})
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)


def test_generator_batch_norm_updates_running_stats_in_train_mode(smoke_config):
  G, _, g_vars, _ = _init(smoke_config)
  z = jax.random.normal(jax.random.PRNGKey(6), (8, 100))
  _, mutated = G.apply(g_vars, z, train=True, mutable=["batch_stats"])
  before = jax.tree.leaves(g_vars["batch_stats"])
  after = jax.tree.leaves(mutated["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_mlp_players_for_mnist_images():
  from experiments import mnist  # noqa: PLC0415

  config = mnist.get_config("mlp")
  G, D, g_vars, d_vars = _init(config)
  # G: 64 -> 256 -> 256 -> 784 (tanh); D: 784 -> 256 -> 256 -> 1, weights and biases.
  assert _count(g_vars["params"]) == (64 + 1) * 256 + (256 + 1) * 256 + (256 + 1) * 784
  assert _count(d_vars["params"]) == (784 + 1) * 256 + (256 + 1) * 256 + (256 + 1) * 1
  images = G.apply(g_vars, 10 * jax.random.normal(jax.random.PRNGKey(7), (3, 64)), train=False)
  assert images.shape == (3, 28, 28, 1) and float(jnp.max(jnp.abs(images))) <= 1.0
  logits = D.apply(d_vars, images, train=False)
  assert logits.shape == (3,)
  # D drops hidden units (rate 0.3) in training only.
  dropped = D.apply(d_vars, images, train=True, rngs={"dropout": jax.random.PRNGKey(8)})
  assert not np.allclose(dropped, logits)
  np.testing.assert_array_equal(D.apply(d_vars, images, train=False), logits)


def test_networks_of_a_restored_config_hash_like_the_experiments():
  # gan.evaluate and gan.sample build a run's networks from its config.json, whose
  # lists stand where the experiment file had tuples; jit keys compiled inference by
  # the (hashable) module, so both must build equal, hashable networks.
  import importlib  # noqa: PLC0415
  import json  # noqa: PLC0415
  import pathlib  # noqa: PLC0415

  import ml_collections  # noqa: PLC0415

  folder = pathlib.Path(__file__).parents[1] / "experiments"
  modules = [importlib.import_module(f"experiments.{p.stem}") for p in folder.glob("*.py")]
  experiments = [m for m in modules if hasattr(m, "get_config")]  # not base.py, broken.py
  assert len(experiments) >= 10
  for experiment in experiments:
    name = experiment.__name__
    config = experiment.get_config()
    restored = ml_collections.ConfigDict(json.loads(json.dumps(config.to_dict())))
    built = [*models.build(config.model, None), models.build_classifier(config.model, None)]
    again = [*models.build(restored.model, None), models.build_classifier(restored.model, None)]
    for module, other in zip(built, again, strict=True):
      assert module == other and hash(module) == hash(other), name


def test_a_network_setting_that_cannot_be_hashed_is_a_config_error():
  import ml_collections  # noqa: PLC0415

  from experiments import mnist_improved_gan  # noqa: PLC0415
  from gan.utils import ConfigError  # noqa: PLC0415

  config = mnist_improved_gan.get_config("smoke")
  config.model.d = ml_collections.ConfigDict(config.model.d.to_dict() | {"widths": {"a": 1}})
  with pytest.raises(ConfigError, match="config.model.d: ImprovedGANDiscriminator"):
    models.build(config.model, None)
