"""A classifier and a pair discriminator that share their first four ResNet blocks (CIFAR-10).

Both networks are the same five-block ResNet of SNGAN's discriminator blocks
(`gan.models.sngan.DBlock`, no spectral norm), width `width` throughout, the
trunk optionally normalised (`norm`):

  trunk (shared):  DBlock(down, first) 32 -> 16 -> DBlock(down) 16 -> 8 -> DBlock -> DBlock
  C's head:        DBlock -> ReLU -> global mean pool -> dropout -> dense K
  D's head:        DBlock -> ReLU -> global pool (`pool`: sum or mean) -> dense 1 + <embed(y), x>

D judges image-label pairs with a projection head (Miyato & Koyama 2018), as
Triple-GAN's D(x, y) must; without a label (the health monitor's probe) the
projection term is left out. The trunk's parameters are "trunk" in both
networks' trees. A Triple-GAN run with `config.semi.shared_trunk` keeps them
in C's state only (D's state holds its head) and hands C's current trunk to D
in every D pass (`gan.semi.triple_gan`): one set of trunk parameters, trained
by C's optimizer on the sum of C's and D's losses. Either network also runs
on its own with a full tree (tests, `init`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models.conditioning import discriminator_head
from gan.models.dropout import Dropout
from gan.models.sngan import DBlock
from gan.utils import ConfigError

TRUNK = "trunk"  # the shared subtree's name in both networks' parameters

_block = functools.partial(DBlock, spectral_norm=False)


NORMS = ("none", "layer")


class Trunk(nn.Module):
  """Images (B, 32, 32, C) in [-1, 1] -> features (B, 8, 8, width): the first four blocks.

  `norm="layer"` normalises each block's output per example over its positions
  and channels, with a learned scale and bias per channel (layer normalisation,
  Ba et al. 2016): no batch statistics, so a D pass on generated images and a C
  pass on real ones never mix, and training and evaluation compute the same thing.
  """

  width: int = 128
  norm: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.norm not in NORMS:
      raise ConfigError(f"the shared trunk's norm must be one of {NORMS}, not {self.norm!r}")
    # Built in this order so that the blocks keep their parameter names (DBlock_0..3).
    blocks = [_block(self.width, downsample=True, first=True), _block(self.width, downsample=True)]
    last = _block(self.width)
    blocks += [_block(self.width), last]
    for block in blocks:
      x = block(x, train)
      if self.norm == "layer":
        x = nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1)(x)
    return x


class SharedTrunkClassifier(nn.Module):
  """Images (B, 32, 32, C) in [-1, 1] -> class logits (B, num_classes)."""

  width: int = 128
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: str | None = None
  norm: str = "none"  # the trunk's (`Trunk`)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Trunk(self.width, self.norm, name=TRUNK)(x, train)
    x = jnp.mean(nn.relu(_block(self.width, name="block5")(x, train)), axis=(1, 2))
    x = Dropout(self.dropout_rate, axis_name=self.axis_name)(x, deterministic=not train)
    return nn.Dense(self.num_classes, name="classifier")(x)


class SharedTrunkDiscriminator(nn.Module):
  """Images (B, 32, 32, C) in [-1, 1] [, labels y (B,)] -> real/fake logits (B,) of the pairs.

  `num_classes`, `projection`, `ac_head` and `spectral_norm` are the attributes
  `gan.models.conditioning.discriminator_head` reads.
  """

  width: int = 128
  num_classes: int = 10
  projection: bool = True
  ac_head: bool = False
  spectral_norm: bool = False
  axis_name: str | None = None
  pool: str = "sum"  # "sum" (SNGAN's) or "mean": 1/64 of the logit's scale at 8x8
  norm: str = "none"  # the trunk's (`Trunk`)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    if self.pool not in ("sum", "mean"):
      raise ConfigError(f"model.d.pool must be 'sum' or 'mean', not {self.pool!r}")
    reduce = jnp.sum if self.pool == "sum" else jnp.mean
    x = Trunk(self.width, self.norm, name=TRUNK)(x, train)
    features = reduce(nn.relu(_block(self.width, name="block5")(x, train)), axis=(1, 2))
    init = nn.initializers.xavier_uniform()
    return discriminator_head(self, features, y, train=train, use_bias=True, kernel_init=init)
