"""DiffAugment (Zhao et al. 2020): differentiable augmentation of every image D sees.

D is trained on T(x) for real x and on T(G(z)) for generated images, in D's
update and in G's, so G learns the un-augmented distribution (augmenting only
the reals would teach G to make augmented images) and G's gradient flows back
through T. `config.diffaugment` names T as a comma-separated policy of

  color        brightness x + (u - 1/2), then saturation: channel-mean m_c +
               (x - m_c) * 2u, then contrast: image mean m + (x - m) * (u + 1/2),
               each u ~ U[0, 1) drawn per image
  translation  an integer shift of up to 1/8 of the height and width in each
               direction, zeros shifted in
  cutout       a square of half the height and width set to zero, its centre
               uniform over the image and clipped at the border
  flip         a horizontal (left-right) mirror with probability 1/2

the first three are the operations, ranges and order of the paper's reference
code (mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py), for images in
[-1, 1]. `flip` is not DiffAugment's: it is the other half of the standard
CIFAR-10 augmentation of classifiers (random translations and horizontal
flips, e.g. Laine & Aila 2017, "Temporal Ensembling for Semi-Supervised
Learning", ICLR), for a classifier's policy (`config.semi.classifier_augment`).
Each operation is affine in the image for fixed random parameters, so
gradients reach every pixel that stays visible.

The random parameters of example i come from the key `keys[i]` only, so a
step that derives that key from the example's index in the global batch
(`gan.step.example_keys`) augments a batch the same way whatever the number
of devices it is split over. As in the reference code, each call draws new
parameters: reals and fakes of one update are augmented independently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from gan.utils import ConfigError

OPERATIONS = ("color", "translation", "cutout", "flip")


def parse_policy(policy: str) -> tuple[str, ...]:
  """The operations of a policy string such as "color,translation,cutout" ("" for none)."""
  operations = tuple(p.strip() for p in policy.split(",") if p.strip())
  unknown = sorted(set(operations) - set(OPERATIONS))
  if unknown:
    raise ConfigError(f"unknown DiffAugment operations {unknown}; choose from {OPERATIONS}")
  return operations


def _color(x: jax.Array, key: jax.Array) -> jax.Array:
  brightness, saturation, contrast = jax.random.uniform(key, (3,))
  x = x + (brightness - 0.5)
  channel_mean = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - channel_mean) * (2.0 * saturation) + channel_mean
  mean = jnp.mean(x)
  return (x - mean) * (contrast + 0.5) + mean


def _translation(x: jax.Array, key: jax.Array) -> jax.Array:
  height, width, _ = x.shape
  max_shift = jnp.array([height // 8, width // 8])
  shift = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
  padded = jnp.pad(x, ((height // 8,) * 2, (width // 8,) * 2, (0, 0)))
  # out[r, c] = x[r + shift_r, c + shift_c], zero where that falls outside the image.
  return lax.dynamic_slice(padded, (height // 8 + shift[0], width // 8 + shift[1], 0), x.shape)


def _cutout(x: jax.Array, key: jax.Array) -> jax.Array:
  height, width, _ = x.shape
  size = jnp.array([height // 2, width // 2])
  # The square's centre ranges over [0, H] for an even size, [0, H - 1] for an odd one.
  centre = jax.random.randint(key, (2,), 0, jnp.array([height, width]) + 1 - size % 2)
  start = centre - size // 2
  rows = (jnp.arange(height) >= start[0]) & (jnp.arange(height) < start[0] + size[0])
  cols = (jnp.arange(width) >= start[1]) & (jnp.arange(width) < start[1] + size[1])
  keep = 1.0 - (rows[:, None] & cols[None, :]).astype(x.dtype)
  return x * keep[:, :, None]


def _flip(x: jax.Array, key: jax.Array) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key), x[:, ::-1, :], x)


_FUNCTIONS = {"color": _color, "translation": _translation, "cutout": _cutout, "flip": _flip}


def diff_augment(images: jax.Array, policy: tuple[str, ...], keys: jax.Array) -> jax.Array:
  """Applies the policy's operations in order to images (B, H, W, C), example i with `keys[i]`.

  Each operation draws from its own key (folded in by its name's index in
  `OPERATIONS`), so adding an operation to a policy leaves the others' draws
  unchanged.
  """
  if not policy:
    return images
  if images.ndim != 4:
    raise ConfigError(f"DiffAugment needs images (B, H, W, C), got shape {images.shape}")

  def one(x: jax.Array, key: jax.Array) -> jax.Array:
    for name in policy:
      x = _FUNCTIONS[name](x, jax.random.fold_in(key, OPERATIONS.index(name)))
    return x

  return jax.vmap(one)(images, keys)
