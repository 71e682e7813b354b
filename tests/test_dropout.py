"""Hash dropout: the right keep rate, unbiased scaling, masks independent of the split."""

import jax
import jax.numpy as jnp
import numpy as np

from gan.models.dropout import Dropout, keep_mask


def test_keep_rate_and_scaling():
  x = jnp.ones((64, 14, 14, 64))
  y = Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  kept = np.asarray(y != 0)
  # 802,816 Bernoulli(0.7) draws: the standard error of the mean is 5e-4.
  assert abs(kept.mean() - 0.7) < 3e-3
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
  # Neighbouring elements and examples must not share masks.
  assert not np.array_equal(kept[0], kept[1])
  assert abs(np.mean(kept[:, :, :, 0] == kept[:, :, :, 1]) - (0.7**2 + 0.3**2)) < 0.02


def test_deterministic_is_identity():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)


def test_masks_of_a_split_batch_equal_the_whole_batch():
  seed = jnp.uint32(1234)
  whole = keep_mask(seed, (8, 5, 3), 0.3)
  halves = [keep_mask(seed, (4, 5, 3), 0.3, offset) for offset in (0, 4)]
  np.testing.assert_array_equal(whole, np.concatenate(halves))


def test_masks_match_under_pmap_with_two_devices():
  x = jnp.ones((8, 6, 6, 2))
  key = jax.random.PRNGKey(7)
  single = Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
  mapped = jax.pmap(
      lambda x: Dropout(0.3, axis_name="data").apply(
          {}, x, deterministic=False, rngs={"dropout": key}
      ),
      axis_name="data",
      devices=jax.devices()[:2],
  )(x.reshape(2, 4, 6, 6, 2))
  np.testing.assert_array_equal(single, np.asarray(mapped).reshape(8, 6, 6, 2))
