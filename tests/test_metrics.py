"""Metric math against closed forms, scipy and hand-built cases."""

import numpy as np
import pytest
import scipy.linalg

from gan.evaluation import metrics


def _random_cov(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_diagonal():
  # For commuting (diagonal) covariances Tr((S1 S2)^1/2) = sum sqrt(a_i b_i).
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.1, 2.0, 16), rng.uniform(0.1, 2.0, 16)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_identical_is_zero_and_scaled_gaussian():
  rng = np.random.default_rng(1)
  s = _random_cov(rng, 32)
  mu = rng.normal(size=32)
  assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-9
  # N(0, S) vs N(0, c^2 S): Tr(S)(1 - c)^2.
  c = 1.7
  got = metrics.frechet_distance(mu, s, mu, c**2 * s)
  np.testing.assert_allclose(got, np.trace(s) * (1 - c) ** 2, rtol=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(2)
  s1, s2 = _random_cov(rng, 64), _random_cov(rng, 64)
  mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)


def test_frechet_distance_singular_covariance_is_finite():
  # Fewer samples than dimensions: rank-deficient covariances (sqrtm needs an eps here).
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))
  value = metrics.frechet_distance(
      x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
  )
  assert np.isfinite(value) and value > 0


def test_feature_stats_streaming_equals_numpy():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(1000, 8)) * 3 + 5
  stats = metrics.FeatureStats(keep=300)
  for chunk in np.array_split(x, 7):
    stats.update(chunk)
  np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9)
  np.testing.assert_allclose(stats.features, x[:300].astype(np.float32))


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_otherwise():
  rng = np.random.default_rng(5)
  real, fake = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
  same, same_std = metrics.kernel_distance(real, fake, num_subsets=20, subset_size=500)
  assert abs(same) < 3 * same_std + 1e-3
  shifted, _ = metrics.kernel_distance(real, fake + 0.5, num_subsets=20, subset_size=500)
  assert shifted > 0.05 and shifted > 10 * abs(same)


def test_knn_radii_match_brute_force():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(1200, 5)).astype(np.float32)
  d = np.linalg.norm(x[:, None] - x[None], axis=-1)
  expected = np.sort(d, axis=1)[:, 3]
  np.testing.assert_allclose(metrics.knn_radii(x, 3), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [3])
def test_precision_recall_cases(k):
  rng = np.random.default_rng(7)
  real = rng.normal(size=(1500, 4))
  same = metrics.precision_recall(real, real.copy(), k=k)
  assert same == {"precision": 1.0, "recall": 1.0}
  # A generator collapsed onto one small region: precise but no recall.
  collapsed = real[np.argsort(real[:, 0])[:50]].repeat(30, axis=0)[:1500]
  pr = metrics.precision_recall(real, collapsed, k=k)
  assert pr["precision"] > 0.9 and pr["recall"] < 0.2
  far = metrics.precision_recall(real, real + 100.0, k=k)
  assert far == {"precision": 0.0, "recall": 0.0}


def test_density_coverage_cases():
  rng = np.random.default_rng(8)
  real = rng.normal(size=(1500, 4))
  fresh = metrics.density_coverage(real, rng.normal(size=(1500, 4)))
  assert 0.8 < fresh["density"] < 1.2 and fresh["coverage"] > 0.9
  tail = metrics.density_coverage(real, real[real[:, 0] > 1.0])  # ~16% of the mass
  assert tail["coverage"] < 0.35
  far = metrics.density_coverage(real, real + 100.0)
  assert far == {"density": 0.0, "coverage": 0.0}
