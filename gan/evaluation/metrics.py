"""Metric math on feature arrays: Fréchet distance, KID, precision/recall, density/coverage.

Everything here takes features already extracted (by Inception, a domain
classifier, or raw 2D points) and returns plain floats. Covariances and the
Fréchet distance are computed in float64 on the host; the k-NN metrics run in
JAX in row blocks, so 50,000 x 2,048 features never need an N x N matrix.

References: FID (Heusel et al. 2017); KID (Bińkowski et al. 2018, unbiased
MMD^2 with the cubic polynomial kernel, averaged over random subsets as in
stylegan2-ada's `kernel_inception_distance`, 100 subsets of 1,000); improved
precision and recall (Kynkäänniemi et al. 2019, k=3); density and coverage
(Naeem et al. 2020, k=5).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


class FeatureStats:
  """Streaming mean and covariance (float64) plus, optionally, the first `keep` rows."""

  def __init__(self, keep: int = 0):
    self.keep = keep
    self.count = 0
    self._sum = None
    self._outer = None
    self._kept: list[np.ndarray] = []
    self._num_kept = 0

  def update(self, features: np.ndarray) -> None:
    x = np.asarray(features, np.float64)
    if self._sum is None:
      self._sum = np.zeros(x.shape[1])
      self._outer = np.zeros((x.shape[1], x.shape[1]))
    self._sum += x.sum(axis=0)
    self._outer += x.T @ x
    self.count += x.shape[0]
    if self._num_kept < self.keep:
      rows = np.asarray(features[: self.keep - self._num_kept], np.float32)
      self._kept.append(rows)
      self._num_kept += rows.shape[0]

  @property
  def mean(self) -> np.ndarray:
    return self._sum / self.count

  @property
  def cov(self) -> np.ndarray:
    """Unbiased sample covariance (divides by N - 1, like np.cov)."""
    mean = self.mean
    return (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)

  @property
  def features(self) -> np.ndarray:
    return np.concatenate(self._kept) if self._kept else np.zeros((0, 0), np.float32)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices, in float64.

  sigma1 sigma2 is similar to the symmetric PSD matrix A = s1 sigma2 s1 with
  s1 = sigma1^(1/2), so its square root's trace is the sum of the square roots
  of A's eigenvalues. Symmetric eigendecompositions are stable, unlike the
  general Schur-based `scipy.linalg.sqrtm`, which can return complex parts and
  needs an epsilon on singular covariances.
  """
  w, v = np.linalg.eigh(np.asarray(sigma1, np.float64))
  s1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  a = s1 @ np.asarray(sigma2, np.float64) @ s1
  eigenvalues = np.linalg.eigvalsh((a + a.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  diff = mu1 - mu2
  trace = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  return float(diff @ diff + trace)


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
  return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def kernel_distance(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
  """KID: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, mean and std over random subsets."""
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  m = min(len(real), len(fake), subset_size)
  d = real.shape[1]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = real[rng.choice(len(real), m, replace=False)]
    y = fake[rng.choice(len(fake), m, replace=False)]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values.append(within - 2.0 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))


def pairwise_sq_dist(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distances between the rows of a and b, (len(a), len(b)), >= 0."""
  d = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T
  return jnp.maximum(d, 0.0)  # rounding can make the expansion slightly negative


@functools.partial(jax.jit, static_argnames=("block",))
def _pairwise_sq_dist_blocks(a: jax.Array, b: jax.Array, block: int) -> jax.Array:
  """Squared distances (len(a), len(b)), a block of rows at a time (len(a) % block == 0)."""
  blocks = jax.lax.map(lambda chunk: pairwise_sq_dist(chunk, b), a.reshape(-1, block, a.shape[1]))
  return blocks.reshape(a.shape[0], b.shape[0])


def _map_rows(fn, a: np.ndarray, b: np.ndarray, block: int = 1000) -> np.ndarray:
  """Applies `fn` to each block of rows of the a-to-b squared-distance matrix."""
  a = np.asarray(a, np.float32)
  b = jnp.asarray(b, jnp.float32)
  out = []
  for start in range(0, len(a), block):
    chunk = a[start : start + block]
    pad = block - len(chunk)
    chunk = np.pad(chunk, ((0, pad), (0, 0))) if pad else chunk
    d = _pairwise_sq_dist_blocks(jnp.asarray(chunk), b, block=min(block, 250))
    out.append(np.asarray(fn(d))[: block - pad])
  return np.concatenate(out)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Distance from each row to its k-th nearest other row (the row itself excluded)."""
  kth = _map_rows(lambda d: -jax.lax.top_k(-d, k + 1)[0][:, k], features, features)
  return np.sqrt(kth)


def _within_radii(points: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
  """(len(points), ) count of balls B(center_i, radius_i) containing each point."""
  r_sq = jnp.asarray(radii, jnp.float32) ** 2
  return _map_rows(lambda d: jnp.sum(d <= r_sq[None, :], axis=1), points, centers)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
  """Improved precision and recall: fake in the real k-NN manifold, and vice versa."""
  real_radii = knn_radii(real, k)
  fake_radii = knn_radii(fake, k)
  precision = np.mean(_within_radii(fake, real, real_radii) > 0)
  recall = np.mean(_within_radii(real, fake, fake_radii) > 0)
  return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
  """Density (mean number of real k-NN balls holding a fake, / k) and coverage.

  Coverage is the fraction of real k-NN balls that contain at least one fake.
  """
  real_radii = knn_radii(real, k)
  density = np.sum(_within_radii(fake, real, real_radii)) / (k * len(fake))
  # Transposed count: for each real ball, does any fake fall inside it?
  r_sq = jnp.asarray(real_radii, jnp.float32) ** 2
  nearest_fake = _map_rows(lambda d: jnp.min(d, axis=1), real, fake)
  coverage = np.mean(nearest_fake <= np.asarray(r_sq))
  return {"density": float(density), "coverage": float(coverage)}
