"""Adversarial losses against values computed by hand."""

import math

import jax.numpy as jnp
import pytest

from gan import losses

REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])


def _softplus(x: float) -> float:
  return math.log1p(math.exp(x))


def _mean(*xs: float) -> float:
  return sum(xs) / len(xs)


def test_non_saturating():
  loss = losses.get("non_saturating")
  expected_d = _mean(_softplus(-2.0), _softplus(1.0)) + _mean(_softplus(0.5), _softplus(-3.0))
  assert float(loss.d(REAL, FAKE, 0.0)) == pytest.approx(expected_d, rel=1e-6)
  # -log sigmoid(f) = softplus(-f)
  assert float(loss.g(FAKE)) == pytest.approx(_mean(_softplus(-0.5), _softplus(3.0)), rel=1e-6)


def test_minimax_generator_minimises_log_one_minus_d():
  loss = losses.get("minimax")
  # log(1 - sigmoid(f)) = -softplus(f)
  expected = _mean(math.log(1 - 1 / (1 + math.exp(-0.5))), math.log(1 - 1 / (1 + math.exp(3.0))))
  assert float(loss.g(FAKE)) == pytest.approx(expected, rel=1e-6)
  assert float(loss.d(REAL, FAKE, 0.0)) == float(losses.get("non_saturating").d(REAL, FAKE, 0.0))


def test_hinge():
  loss = losses.get("hinge")
  # relu(1 - [2, -1]) = [0, 2]; relu(1 + [0.5, -3]) = [1.5, 0]
  assert float(loss.d(REAL, FAKE, 0.0)) == pytest.approx(1.0 + 0.75)
  assert float(loss.g(FAKE)) == pytest.approx(1.25)


def test_wasserstein():
  loss = losses.get("wasserstein")
  assert float(loss.d(REAL, FAKE, 0.0)) == pytest.approx(-1.25 - 0.5)
  assert float(loss.g(FAKE)) == pytest.approx(1.25)


def test_least_squares():
  loss = losses.get("least_squares")
  # 0.5 mean([(2-1)^2, (-1-1)^2]) + 0.5 mean([0.25, 9]) = 1.25 + 2.3125
  assert float(loss.d(REAL, FAKE, 0.0)) == pytest.approx(1.25 + 2.3125)
  # 0.5 mean([(0.5-1)^2, (-3-1)^2]) = 0.5 * 8.125
  assert float(loss.g(FAKE)) == pytest.approx(4.0625)
  # Smoothed real target 0.9: 0.5 mean([1.1^2, 1.9^2])
  assert float(loss.d(REAL, FAKE, 0.1)) == pytest.approx(0.5 * (1.21 + 3.61) / 2 + 2.3125)


def test_one_sided_label_smoothing_changes_only_the_real_term():
  loss = losses.get("non_saturating", smoothing=0.1)
  real_term = _mean(
      0.9 * _softplus(-2.0) + 0.1 * _softplus(2.0), 0.9 * _softplus(1.0) + 0.1 * _softplus(-1.0)
  )
  fake_term = _mean(_softplus(0.5), _softplus(-3.0))
  assert float(loss.d(REAL, FAKE, 0.1)) == pytest.approx(real_term + fake_term, rel=1e-6)


def test_bad_names_and_smoothing_are_rejected():
  with pytest.raises(ValueError, match="unknown loss"):
    losses.get("nonsaturating")
  with pytest.raises(ValueError, match="not defined"):
    losses.get("hinge", smoothing=0.1)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    losses.get("non_saturating", smoothing=1.0)
