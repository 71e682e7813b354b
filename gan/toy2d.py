"""2D Gaussian mixtures for mode-collapse experiments: geometry, sampling, scores.

The geometry is VEEGAN's (Srivastava et al. 2017), also used by PacGAN (Lin et
al. 2018) for its grid:
  ring8:  8 components evenly spaced on a circle of radius 2, std 0.02;
  grid25: 25 components on the grid {-4, -2, 0, 2, 4}^2, std 0.02.

Scores follow the VEEGAN/PacGAN protocol: a generated point is *high quality*
if it lies within 3 standard deviations of its nearest component mean; a mode
is *captured* if it is the nearest mean of at least one high-quality point.
`reverse_kl` is KL(generated || real) over modes: every generated point is
assigned to its nearest mean, and the resulting histogram p is compared with
the uniform mixture weights, KL(p || u) = log K - H(p) (0 for a perfectly
balanced sampler, log K for total collapse onto one mode). A perfect sampler
has a high-quality fraction of P(chi_2 <= 3) = 1 - exp(-4.5) = 98.89%.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gan import streams


@dataclasses.dataclass(frozen=True)
class Mixture:
  """An equally weighted isotropic Gaussian mixture in 2D."""

  name: str
  means: np.ndarray  # (K, 2) float32
  std: float

  @property
  def num_modes(self) -> int:
    return int(self.means.shape[0])


def _ring(num: int, radius: float) -> np.ndarray:
  angles = 2.0 * np.pi * np.arange(num) / num
  return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _grid(side: int, spacing: float) -> np.ndarray:
  coords = spacing * (np.arange(side) - (side - 1) / 2.0)
  return np.stack(np.meshgrid(coords, coords, indexing="ij"), axis=-1).reshape(-1, 2)


MIXTURES: dict[str, Mixture] = {
    "ring8": Mixture("ring8", _ring(8, 2.0).astype(np.float32), 0.02),
    "grid25": Mixture("grid25", _grid(5, 2.0).astype(np.float32), 0.02),
}


def get(name: str) -> Mixture:
  if name not in MIXTURES:
    raise KeyError(f"unknown 2D mixture {name!r}; choose one of {sorted(MIXTURES)}")
  return MIXTURES[name]


def sample(key: jax.Array, mixture: Mixture, num: int) -> jax.Array:
  """`num` points from the mixture, float32 (num, 2)."""
  component_key, noise_key = streams.keys(key, "labels", "noise")
  component = jax.random.randint(component_key, (num,), 0, mixture.num_modes)
  noise = jax.random.normal(noise_key, (num, 2))
  return jnp.asarray(mixture.means)[component] + mixture.std * noise


def score(points: np.ndarray, mixture: Mixture) -> dict[str, float]:
  """The VEEGAN/PacGAN scores of generated `points` (N, 2); see the module docstring."""
  points = np.asarray(points, np.float64)
  distances = np.linalg.norm(points[:, None, :] - mixture.means[None, :, :], axis=-1)
  nearest = np.argmin(distances, axis=1)
  high_quality = distances[np.arange(len(points)), nearest] <= 3.0 * mixture.std
  captured = np.unique(nearest[high_quality])
  p = np.bincount(nearest, minlength=mixture.num_modes) / len(points)
  entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
  return {
      "modes": int(captured.size),
      "high_quality_fraction": float(np.mean(high_quality)),
      "reverse_kl": float(math.log(mixture.num_modes) - entropy),
  }
