"""2D mixtures: geometry, scores of perfect and collapsed samplers, in-step batches."""

import jax
import jax.numpy as jnp
import numpy as np

from gan import data, toy2d


def test_geometry():
  ring, grid = toy2d.get("ring8"), toy2d.get("grid25")
  np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 2.0, rtol=1e-6)
  assert grid.means.shape == (25, 2) and set(np.unique(grid.means)) == {-4, -2, 0, 2, 4}
  assert ring.std == grid.std == 0.02


def test_perfect_sampler_scores():
  for name in ("ring8", "grid25"):
    mixture = toy2d.get(name)
    points = np.asarray(toy2d.sample(jax.random.PRNGKey(0), mixture, 50_000))
    score = toy2d.score(points, mixture)
    assert score["modes"] == mixture.num_modes
    # P(chi_2 <= 3) = 1 - exp(-4.5) = 0.98889
    np.testing.assert_allclose(score["high_quality_fraction"], 1 - np.exp(-4.5), atol=0.002)
    assert score["reverse_kl"] < 0.002


def test_collapsed_and_off_mode_samplers():
  ring = toy2d.get("ring8")
  one_mode = np.tile(ring.means[:1], (1000, 1))
  score = toy2d.score(one_mode, ring)
  assert score["modes"] == 1
  np.testing.assert_allclose(score["reverse_kl"], np.log(8), rtol=1e-9)
  between = (ring.means + np.roll(ring.means, 1, axis=0)) / 2  # midpoints: low quality
  score = toy2d.score(np.repeat(between, 10, axis=0), ring)
  assert score["high_quality_fraction"] == 0.0 and score["modes"] == 0


def test_mixture_batches_are_fresh_and_on_the_mixture():
  ring = toy2d.get("ring8")
  split = data.load("ring8", "train")
  arrays = {k: jnp.asarray(v) for k, v in split.arrays().items()}
  batch_fn = data.batch_fn("ring8")
  perm = jnp.zeros((8,), jnp.int32)
  _, a = batch_fn(arrays, perm, jax.random.PRNGKey(0), jnp.int32(0), 4096, None)
  _, b = batch_fn(arrays, perm, jax.random.PRNGKey(0), jnp.int32(1), 4096, None)
  assert a["image"].shape == (4096, 2)
  assert not np.allclose(a["image"], b["image"])
  score = toy2d.score(np.asarray(a["image"]), ring)
  assert score["modes"] == 8 and score["high_quality_fraction"] > 0.97
  # Labels are the components the points were drawn from.
  nearest = np.argmin(
      np.linalg.norm(np.asarray(a["image"])[:, None] - ring.means[None], axis=-1), axis=1
  )
  np.testing.assert_array_equal(nearest, np.asarray(a["label"]))
