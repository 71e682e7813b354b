"""Dropout whose masks are cheap on CPU and independent of the device count.

Two reasons we do not use `flax.linen.Dropout`:

* Cost. `jax.random.bernoulli` with threefry (or rbg) keys is expensive per
  element on CPU, and the MNIST DCGAN step draws a mask element per unit of
  every D pass (three per step), so threefry masks alone would be a large
  share of the step. A counter-based integer hash (murmur3's 32-bit
  finaliser) over the element index, keyed by one threefry draw, costs a
  fraction of that per element and is fused by XLA with the multiply that
  applies the mask (timings in benchmarks/README.md).
* Reproducibility across device counts. The hash input is the element's index
  in the *global* batch (the device's offset along the data-parallel axis plus
  the local index), so a batch split over 1, 2 or 4 devices gets bit-identical
  masks. `nn.Dropout` draws per-device masks that change with the device count.

The hash is not a cryptographic PRNG, but dropout needs only that masks are
unbiased and uncorrelated with the data, which the murmur3 finaliser's
avalanche property gives.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def hash_uint32(counter: jax.Array, seed: jax.Array) -> jax.Array:
  """Murmur3 fmix32 of `counter * golden_ratio + seed`: uniform uint32 bits."""
  h = counter.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + seed.astype(jnp.uint32)
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def element_index(shape: tuple[int, ...], offset: jax.Array | int = 0) -> jax.Array:
  """Each element's flat index in the global batch, for a local batch starting at `offset`."""
  per_example = 1
  for d in shape[1:]:
    per_example *= d
  index = lax.broadcasted_iota(jnp.uint32, shape, 0) + jnp.asarray(offset, jnp.uint32)
  index = index * jnp.uint32(per_example)
  stride = per_example
  for axis in range(1, len(shape)):
    stride //= shape[axis]
    index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
  return index


def keep_mask(seed: jax.Array, shape: tuple[int, ...], rate: float, offset: jax.Array | int = 0):
  """Boolean keep-mask with P(keep) = 1 - rate for a batch starting at example `offset`."""
  threshold = jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))
  return hash_uint32(element_index(shape, offset), seed) >= threshold


def normal(seed: jax.Array, shape: tuple[int, ...], offset: jax.Array | int = 0) -> jax.Array:
  """Standard-normal float32 noise from the same hash, by the inverse CDF of a uniform draw.

  XLA's erf_inv is a polynomial, several times cheaper on CPU than Box-Muller on two
  hashes, whose log and cos were a sizeable share of the Improved-GAN step (timings in
  benchmarks/README.md).
  """
  return bits_to_normal(hash_uint32(element_index(shape, offset), seed))


def bits_to_normal(bits: jax.Array) -> jax.Array:
  """sqrt(2) erfinv(v) of v = the top 23 bits as the midpoint of one of 2^23 equal bins of (-1, 1).

  Every v is exact in float32 and at least 2^-23 from +-1, so the draw is finite (at
  most about 5.3 standard deviations); a 24-bit u in (0, 1) would round 1 - 2^-25 up
  to 1 and give inf once in 2^24 draws.
  """
  v = ((bits >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-22) - 1.0
  return jnp.float32(2.0**0.5) * lax.erf_inv(v)


class Dropout(nn.Module):
  """Inverted dropout with hash masks; drop-in for `nn.Dropout` inside a pmapped step.

  Attributes:
    rate: probability of zeroing an element.
    axis_name: data-parallel axis the batch is split over, or None when the
      module sees the whole batch. Used only to find the global example index.
  """

  rate: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
    offset = 0
    if self.axis_name is not None:
      offset = lax.axis_index(self.axis_name) * x.shape[0]
    keep = keep_mask(seed, x.shape, self.rate, offset)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
