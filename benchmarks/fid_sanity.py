"""FID sanity table: the converted FID Inception on CIFAR-10 sets whose FIDs are known in kind.

  python -m benchmarks.fid_sanity            # needs the converted weights; resumable

The reference is what `gan.evaluate --inception` uses by default: the 10,000 lossless test
images, computed (and cached) by `InceptionEvaluator` itself. Against it, sets of
`--num_generated` images (5,000: the papers' count, Miyato et al. 2018, Appendix B.1):

- the test split's first half against its second half (5,000 vs 5,000: the floor of FID at this
  sample size, from the same distribution);
- the first training images (on this machine a JPEG re-encode of the training split);
- Gaussian noise, N(127.5, 64^2) per pixel, clipped and rounded to uint8;
- one test image repeated (total mode collapse).

Features are kept in chunks under `<cache>/fid_sanity/`, so an interrupted run resumes.
Prints one Markdown table row per set as soon as its features are done.
"""

from __future__ import annotations

import argparse
import os

from gan import platform

platform.configure_xla()  # before JAX starts: Eigen's convolutions, as training uses

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from gan import data, utils  # noqa: E402
from gan.evaluation import evaluators, metrics  # noqa: E402


def _stats(features: np.ndarray) -> metrics.FeatureStats:
  stats = metrics.FeatureStats()
  stats.update(features)
  return stats


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_generated", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  n = args.num_generated

  config = ml_collections.ConfigDict({"dataset": "cifar10", "data_dir": None})
  evaluator = evaluators.InceptionEvaluator("fid", evaluators.settings("inception"), config)
  ref = evaluator.reference
  test = ref["features"]
  print(f"weights sha256 {evaluator.sha256}; reference: {int(ref['count']):,} {ref['source']}")
  print("| set | vs | FID |\n| --- | --- | --- |")
  half = len(test) // 2
  fid = metrics.frechet_distance_from_stats(_stats(test[:half]), _stats(test[half:]))
  print(f"| test images 1-{half:,} | test images {half + 1:,}-{len(test):,} | {fid:.2f} |")

  def row(label: str, features: np.ndarray) -> None:
    stats = _stats(features)
    fid = metrics.frechet_distance(ref["mean"], ref["cov"], stats.mean, stats.cov)
    print(f"| {label} ({len(features):,}) | test ({int(ref['count']):,}) | {fid:.2f} |", flush=True)

  def features(key: str, images: np.ndarray) -> np.ndarray:
    folder = os.path.join(utils.cache_root(), "fid_sanity", f"{key}-{evaluator.sha256[:16]}")
    batch_size = evaluator.cfg.batch_size
    return evaluators.cached_features(evaluator.extract, images, batch_size, folder, key)

  test_images = data.load("cifar10", "test").image
  one = evaluator.extract(test_images[:1], evaluator.cfg.batch_size)
  row("one test image repeated", np.repeat(one["pool3"], n, axis=0))
  rng = np.random.default_rng(args.seed)
  noise = np.clip(np.round(127.5 + 64.0 * rng.standard_normal((n, 32, 32, 3))), 0, 255)
  row("Gaussian noise", features("noise", noise.astype(np.uint8)))
  train = data.load("cifar10", "train")
  row(f"first training images ({train.source})", features("train", train.image[:n]))


if __name__ == "__main__":
  main()
