"""Evaluators declared in `config.evals`, run in training and by `gan.evaluate`.

Each entry of `config.evals` names an evaluator and its settings, e.g.

  config.evals.mnist_cnn = dict(kind="fcd", every=1000, num_samples=10_000)

`build(config)` turns them into objects with `every` and
`run(generator) -> Result`; a Result holds flat scalar metrics and the
protocol stamp that says how they were measured (extractor and its weights'
SHA-256, numbers of generated and reference samples, reference split, EMA or
raw generator). In `metrics.jsonl` metrics appear as `<eval name>/<metric>`.

Generated images are quantised to uint8 exactly as `gan.sample` writes them,
so a number here can be reproduced from the .npz by anyone.

An "inception" entry with `optional=True` is left out, with a one-line
warning, when the FID Inception weights are not installed, so a config can
declare FID for the machines that have the weights and still run where
they are missing; `gan.evaluate --inception` always requires them.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from gan import data as data_lib
from gan import toy2d, utils, writers
from gan.evaluation import classifiers, inception, metrics, sharded, test_error
from gan.evaluation.views import Generator, Result
from gan.utils import ConfigError


def _class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.bincount(labels, minlength=num_classes).astype(np.float64) / len(labels)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
  """KL(p || q) over bins where p > 0 (q > 0 there is assumed; q is floored at 1e-12)."""
  mask = p > 0
  return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-12)))))


def classifier_metrics(
    reference_logits: np.ndarray,
    reference_features: np.ndarray,
    logits: np.ndarray,
    features: np.ndarray,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_samples: int = 10_000,
) -> dict[str, float]:
  """FCD, KID, precision/recall, density/coverage, class coverage and confidence.

  `classes` counts classes predicted for at least one generated sample
  (`real_classes`: the same for the reference images);
  `class_kl` is KL(generated class histogram || reference class histogram).
  """
  num_classes = logits.shape[1]
  real_stats, fake_stats = metrics.FeatureStats(), metrics.FeatureStats()
  real_stats.update(reference_features)
  fake_stats.update(features)
  kid, kid_std = metrics.kernel_distance(reference_features, features, kid_subsets, kid_subset_size)
  predicted = np.argmax(logits, axis=1)
  probs = np.exp(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))
  real_hist = _class_histogram(np.argmax(reference_logits, axis=1), num_classes)
  fake_hist = _class_histogram(predicted, num_classes)
  out = {
      "fcd": metrics.frechet_distance_from_stats(real_stats, fake_stats),
      "kid": kid,
      "kid_std": kid_std,
      "classes": int(np.count_nonzero(fake_hist)),
      "real_classes": int(np.count_nonzero(real_hist)),  # the same count for the reference
      "class_kl": _kl(fake_hist, real_hist),
      "confidence": float(np.mean(np.max(probs, axis=1))),
  }
  n = min(pr_samples, len(reference_features), len(features))  # equal sets: unbiased radii
  real_pr, fake_pr = reference_features[:n], features[:n]
  out |= metrics.precision_recall(real_pr, fake_pr, k=3)
  out |= metrics.density_coverage(real_pr, fake_pr, k=5)
  return out


class FCDEvaluator:
  """Metrics on the features of a classifier shipped with the project (see `classifiers`)."""

  def __init__(self, name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    self.name, self.cfg = name, cfg
    dataset = cfg.get("dataset", None) or config.dataset
    self.classifier = classifiers.load(dataset, cfg.arch)
    reference = data_lib.load(dataset, cfg.split, config.data_dir)
    self.reference_logits, self.reference_features = self.classifier(
        reference.image, progress=f"evals.{name}: reference features"
    )
    info = self.classifier.info
    self.protocol_base = {
        "extractor": f"{info['dataset']}-{info['arch']} classifier, penultimate features",
        "weights_sha256": info["weights_sha256"],
        "extractor_test_accuracy": info["test_accuracy"],
        "num_reference": int(len(reference.image)),
        "reference_split": reference.source,
        # The classifiers were trained on the TFDS train split; the offline MNIST
        # sample's origin in MNIST is unknown, so it does not count as held out.
        "held_out_reference": (
            reference.source.startswith("tfds ") and not cfg.split.startswith("train")
        ),
        "precision_recall": "Kynkaanniemi et al. 2019, k=3; density/coverage k=5",
        "seed": cfg.seed,
    }

  @property
  def every(self) -> int:
    return self.cfg.every

  def run(self, generator: Generator) -> Result:
    images = writers.to_uint8(generator.outputs(self.cfg.num_samples, self.cfg.seed))
    logits, features = self.classifier(images)
    values = classifier_metrics(
        self.reference_logits,
        self.reference_features,
        logits,
        features,
        self.cfg.kid_subsets,
        self.cfg.kid_subset_size,
        self.cfg.pr_samples,
    )
    n_ref, n_gen = len(self.reference_features), self.cfg.num_samples
    kid_m = min(self.cfg.kid_subset_size, n_ref, n_gen)
    protocol = self.protocol_base | {
        "kid": f"unbiased MMD^2, cubic kernel, {self.cfg.kid_subsets} subsets of {kid_m}",
        "pr_samples": min(self.cfg.pr_samples, n_ref, n_gen),
        "num_generated": n_gen,
        "generator": generator.kind,
        "step": generator.step,
    }
    return Result(values, protocol)


class InceptionEvaluator:
  """FID, KID and precision/recall on the pool3 features of the FID InceptionV3.

  The reference statistics (mean and covariance of pool3 over `num_reference`
  images of the reference split, plus the first `pr_samples` feature rows) are
  computed once and cached under `<cache>/inception_refs/`, keyed by dataset,
  split, counts, the dataset's files (`gan.data.fingerprint`) and the weights'
  SHA-256. On a CPU that is slow, so the features are kept in chunks as they
  are computed, with progress on stderr, and an interrupted computation resumes
  from its last chunk (`cached_features`). There is no Inception Score: the
  FID weights (`gan.evaluation.inception`) have no classification head.
  """

  def __init__(self, name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    self.name, self.cfg = name, cfg
    variables = inception.load_variables(cfg.weights)
    self.sha256 = inception.weights_sha256(cfg.weights)
    self.extract = sharded.ShardedFeatures(inception.features, variables)
    self.dataset = cfg.get("dataset", None) or config.dataset
    self.reference = self._reference(config.data_dir)

  @property
  def every(self) -> int:
    return self.cfg.every

  def _reference(self, data_dir: str | None) -> dict[str, Any]:
    cfg = self.cfg
    # Keyed by everything the statistics depend on, including the data's files
    # (`gan.data.fingerprint`: a re-prepared dataset gets new statistics).
    try:
      where = data_lib.fingerprint(self.dataset, cfg.split, data_lib.resolve_data_dir(data_dir))
    except OSError:  # the dataset changes under us: compute, do not cache
      where = None
    key = (
        f"{self.dataset}-{cfg.split}-{cfg.num_reference}-{cfg.pr_samples}-{str(where)[:8]}-"
        f"{self.sha256[:16]}.npz"
    )
    path = os.path.join(utils.cache_root(), "inception_refs", key)
    keys = ("mean", "cov", "features", "count", "source")
    cached = utils.load_npz(path, keys) if where is not None else None
    if cached is not None:  # else not cached yet, damaged, or not to be cached: compute
      return cached | {"source": str(cached["source"])}
    split = data_lib.load(self.dataset, cfg.split, data_dir)
    images = split.image[: cfg.num_reference]
    label = f"{self.name}: Inception features of {split.source}"
    features = cached_features(
        self.extract, images, cfg.batch_size, path + ".chunks" if where else None, label
    )
    stats = metrics.FeatureStats(keep=cfg.pr_samples)
    stats.update(features)
    reference = {
        "mean": stats.mean,
        "cov": stats.cov,
        "features": stats.features,
        "count": np.int64(stats.count),
        "source": split.source,
    }
    if where is not None:
      try:
        utils.save_npz(path, **reference)
        shutil.rmtree(path + ".chunks", ignore_errors=True)
      except OSError as e:
        print(f"warning: could not cache Inception statistics in {path}: {e}", file=sys.stderr)
    return reference

  def run(self, generator: Generator) -> Result:
    cfg = self.cfg
    # Chunks of samples drawn with seeds by position: each process draws and extracts its
    # share, and all hold the statistics of all `num_samples` (`sharded.share_stats`).
    stats = sharded.share_stats(
        self.extract,
        lambda start, num: writers.to_uint8(generator.outputs(num, cfg.seed + start)),
        cfg.num_samples,
        10 * cfg.batch_size,
        "pool3",
        cfg.batch_size,
        keep=max(cfg.pr_samples, cfg.kid_subset_size),
        progress=f"evals.{self.name}: Inception features of {cfg.num_samples:,} samples",
    )
    ref = self.reference
    fid = metrics.frechet_distance(ref["mean"], ref["cov"], stats.mean, stats.cov)
    kid, kid_std = metrics.kernel_distance(
        ref["features"], stats.features, cfg.kid_subsets, cfg.kid_subset_size
    )
    values = {"fid": fid, "kid": kid, "kid_std": kid_std}
    n = min(cfg.pr_samples, len(ref["features"]), len(stats.features))
    values |= metrics.precision_recall(ref["features"][:n], stats.features[:n], k=3)
    kid_m = min(cfg.kid_subset_size, len(ref["features"]), len(stats.features))
    protocol = {
        "extractor": (
            f"FID InceptionV3 (the {inception.GRAPH_DATE} TF graph, converted from "
            f"{inception.SOURCE_PACKAGE}'s {inception.SOURCE_MEMBER}), pool3"
        ),
        "weights_sha256": self.sha256,
        "input": "uint8, TF1 bilinear resize to 299x299, u / 128 - 1 (the TF graph's protocol)",
        "num_generated": cfg.num_samples,
        "num_reference": int(ref["count"]),
        "reference_split": ref["source"],
        "kid": (
            f"unbiased MMD^2, cubic kernel, {cfg.kid_subsets} subsets of {kid_m}"
            f" from the first {len(ref['features'])} reference features"
        ),
        "precision_recall": f"Kynkaanniemi et al. 2019, k=3, {n} samples each",
        "generator": generator.kind,
        "step": generator.step,
        "seed": cfg.seed,
    }
    return Result(values, protocol)


def cached_features(
    extract, images: np.ndarray, batch_size: int, folder: str | None, label: str
) -> np.ndarray:
  """pool3 features of `images` by `extract(images, batch_size)` (`sharded.ShardedFeatures`),
  10 batches at a time, each chunk kept in `folder` (None: not).

  A chunk already in `folder` is read instead of computed, so a computation that was
  interrupted resumes; the caller removes the folder once it has what it needs.
  """
  chunk_size = 10 * batch_size
  out = []
  for start in range(0, len(images), chunk_size):
    path = folder and os.path.join(folder, f"{start:07d}-{chunk_size}.npz")
    cached = utils.load_npz(path, ("pool3",)) if path else None
    if cached is None:
      chunk = images[start : start + chunk_size]
      cached = extract(chunk, batch_size)
      try:
        if path:
          utils.save_npz(path, pool3=cached["pool3"])
      except OSError as e:  # a read-only cache: go on without keeping chunks
        print(f"warning: could not keep Inception features in {folder}: {e}", file=sys.stderr)
        folder = None
    out.append(cached["pool3"])
    done = min(start + chunk_size, len(images))
    print(f"{label}: {done:,}/{len(images):,} images", file=sys.stderr, flush=True)
  return np.concatenate(out)


class Toy2DEvaluator:
  """Modes captured, high-quality fraction and reverse KL on a 2D mixture (`gan.toy2d`)."""

  def __init__(self, name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    self.name, self.cfg = name, cfg
    self.mixture = toy2d.get(config.dataset)

  @property
  def every(self) -> int:
    return self.cfg.every

  def run(self, generator: Generator) -> Result:
    points = generator.outputs(self.cfg.num_samples, self.cfg.seed)
    protocol = {
        "mixture": (
            f"{self.mixture.name}: {self.mixture.num_modes} components, std "
            f"{self.mixture.std} (VEEGAN geometry)"
        ),
        "high_quality": "within 3 std of the nearest mean",
        "num_generated": self.cfg.num_samples,
        "generator": generator.kind,
        "step": generator.step,
        "seed": self.cfg.seed,
    }
    return Result(toy2d.score(points, self.mixture), protocol)


class StackedMnistEvaluator:
  """Modes (of 1,000) and KL to the uniform mode distribution, by the MNIST classifier."""

  def __init__(self, name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    self.name, self.cfg = name, cfg
    self.classifier = classifiers.load("mnist", cfg.arch)

  @property
  def every(self) -> int:
    return self.cfg.every

  def run(self, generator: Generator) -> Result:
    images = writers.to_uint8(generator.outputs(self.cfg.num_samples, self.cfg.seed))
    digits = []
    for channel in range(images.shape[-1]):
      logits, _ = self.classifier(images[..., channel : channel + 1])
      digits.append(np.argmax(logits, axis=1))
    modes = sum(d * 10**i for i, d in enumerate(digits))
    num_modes = 10 ** images.shape[-1]
    hist = _class_histogram(modes, num_modes)
    info = self.classifier.info
    protocol = {
        "extractor": f"mnist-{info['arch']} classifier per channel",
        "weights_sha256": info["weights_sha256"],
        "extractor_test_accuracy": info["test_accuracy"],
        "kl": "KL(generated mode histogram || uniform over 1,000 modes)",
        "num_generated": self.cfg.num_samples,
        "generator": generator.kind,
        "step": generator.step,
        "seed": self.cfg.seed,
    }
    values = {
        "modes": int(np.count_nonzero(hist)),
        "kl": _kl(hist, np.full(num_modes, 1 / num_modes)),
    }
    return Result(values, protocol)


DEFAULTS: dict[str, dict[str, Any]] = {
    "fcd": dict(
        every=1000,
        num_samples=10_000,
        arch="mnist_cnn",
        split="test",
        kid_subsets=100,
        kid_subset_size=1000,
        pr_samples=10_000,
        seed=0,
    ),
    "inception": dict(
        every=10_000,
        # The papers' protocol (Miyato et al. 2018, Appendix B.1): 5,000 generated against
        # 10,000 real images. Real: the lossless test split, because the CIFAR-10 train split
        # here is a JPEG-derived copy, so a FID against it would not be comparable.
        num_samples=5_000,
        split="test",
        num_reference=10_000,
        kid_subsets=100,
        kid_subset_size=1000,
        pr_samples=10_000,
        batch_size=100,
        weights="",  # "": $JAXGAN_INCEPTION_WEIGHTS or the default path
        optional=False,  # True: without the weights, warn and run without this evaluator
        seed=0,
    ),
    "toy2d": dict(every=1000, num_samples=2500, seed=0),
    "stacked_mnist": dict(every=5000, num_samples=26_000, arch="mnist_cnn", seed=0),
    "test_error": dict(every=1000, split="test", batch_size=1000, params="ema"),
}
# Settings that no longer mean anything, dropped so that the configs of older runs still load:
# Inception Score needed a classification head that the FID weights do not have.
_RETIRED = {"inception": ("is_splits",)}
# Kinds renamed since, read under their new name so that older runs' config.json still load:
# "classifier" measured FCD, and shared its word with the test-error evaluator of the semi
# methods (`config.evals.classifier`).
_RENAMED = {"classifier": "fcd"}
EVALUATORS = {
    "fcd": FCDEvaluator,
    "inception": InceptionEvaluator,
    "toy2d": Toy2DEvaluator,
    "stacked_mnist": StackedMnistEvaluator,
    "test_error": test_error.TestErrorEvaluator,
}


def settings(kind: str, **overrides: Any) -> ml_collections.ConfigDict:
  """An evaluator's config entry: its kind, the defaults for that kind, and overrides."""
  kind = _RENAMED.get(kind, kind)
  if kind not in DEFAULTS:
    raise ConfigError(f"unknown evaluator kind {kind!r}; choose one of {sorted(DEFAULTS)}")
  overrides = {k: v for k, v in overrides.items() if k not in _RETIRED.get(kind, ())}
  unknown = set(overrides) - set(DEFAULTS[kind]) - {"dataset"}
  if unknown:
    raise ConfigError(f"unknown settings {sorted(unknown)} for evaluator kind {kind!r}")
  return ml_collections.ConfigDict({"kind": kind, **DEFAULTS[kind], **overrides})


def build(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The evaluators of `config.evals`, by name (an optional one without its weights left out)."""
  evaluators = {}
  for name, cfg in (config.get("evals") or {}).items():
    kind = _RENAMED.get(cfg.get("kind"), cfg.get("kind"))
    if kind not in EVALUATORS:
      raise ConfigError(f"evals.{name}: unknown kind {kind!r}; choose one of {sorted(EVALUATORS)}")
    cfg = settings(**cfg.to_dict())
    try:
      evaluators[name] = EVALUATORS[kind](name, cfg, config)
    except inception.InceptionWeightsNotFoundError as e:
      if not cfg.get("optional", False):
        raise
      print(
          f"warning: evals.{name} ({kind}) left out: no FID Inception weights at {e.path} "
          "(python -m gan.evaluation.convert_inception says how to make them; then score the "
          "run with python -m gan.evaluate --workdir DIR)",
          file=sys.stderr,
          flush=True,
      )
    except classifiers.ClassifierNotShippedError as e:
      # The project's own weights are missing (CIFAR-10's until they are trained and
      # shipped): the run trains and scores with the other evaluators.
      print(f"warning: evals.{name} ({kind}) left out: {e}", file=sys.stderr, flush=True)
  return evaluators


def default_evals(dataset: str) -> dict[str, ml_collections.ConfigDict]:
  """Evaluators for runs whose config declares none (e.g. runs made before evals existed)."""
  if data_lib.is_points(dataset):
    return {"toy2d": settings("toy2d")}
  if dataset == "stacked_mnist":
    return {"stacked_mnist": settings("stacked_mnist")}
  if dataset == "mnist":
    return {"mnist_cnn": settings("fcd", arch="mnist_cnn")}
  if dataset == "cifar10":
    return {"cifar_resnet20": settings("fcd", arch="cifar_resnet20")}
  raise ConfigError(f"no default evaluators for dataset {dataset!r}; add config.evals")


def run_all(evaluators: Mapping[str, Any], views: Mapping[str, Any]) -> dict[str, Result]:
  """Runs each evaluator on the view it looks at (its `target`: "generator" by default)."""
  return {
      name: evaluator.run(views[getattr(evaluator, "target", "generator")])
      for name, evaluator in evaluators.items()
  }


def flatten(results: Mapping[str, Result]) -> dict[str, float]:
  """`<eval name>/<metric>` scalars, for metrics.jsonl and checkpoint ranking."""
  return {f"{name}/{k}": v for name, r in results.items() for k, v in r.metrics.items()}


def as_json(results: Mapping[str, Result]) -> dict[str, Any]:
  """{eval name: {metric: value, ..., "protocol": {...}[, "details": {...}]}}: eval.json."""
  return {
      name: {**r.metrics, "protocol": r.protocol} | ({"details": r.details} if r.details else {})
      for name, r in results.items()
  }
