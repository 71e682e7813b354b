"""SNGAN's CIFAR-10 networks (Miyato et al. 2018): the "standard CNN" and the ResNet, 32x32x3.

Standard CNN (the paper's Table 3, M_g = 4; `width` = 64 gives these channels):

  G: z (128) -> Dense 4*4*512 -> BN -> ReLU -> DeConv 4x4 s2 256 -> BN -> ReLU
       -> DeConv 128 -> BN -> ReLU -> DeConv 64 -> BN -> ReLU -> Conv 3x3 3 -> tanh
  D: Conv 3x3 64 -> lReLU(0.1) -> Conv 4x4 s2 64 -> Conv 3x3 128 -> Conv 4x4 s2 128
       -> Conv 3x3 256 -> Conv 4x4 s2 256 -> Conv 3x3 512 (each lReLU 0.1)
       -> Dense 1 on the flattened 4x4x512 features

The table lists no normalisation after G's dense layer; the authors' code
(pfnet-research/chainer-gan-lib, DCGANGenerator) has BN + ReLU there, and so
do we, per channel of the 4x4x512 map. Their discriminator code also doubles
the channels at each stride-2 convolution (64 -> 128 at the second layer);
we follow the paper's table. Weights start from N(0, 0.02^2), as in that code.

ResNet (the paper's appendix; G width 256, D width 128):

  G: z (128) -> Dense 4*4*256 -> 3 x GBlock(256, up) -> BN -> ReLU -> Conv 3x3 3 -> tanh
     GBlock: BN -> ReLU -> up x2 -> Conv 3x3 -> BN -> ReLU -> Conv 3x3,
             plus shortcut Conv 1x1 of the upsampled input
  D: DBlock(128, down, first) -> DBlock(128, down) -> DBlock(128) -> DBlock(128)
       -> ReLU -> sum over H, W -> Dense 1 (no bias)
     DBlock: [ReLU ->] Conv 3x3 -> ReLU -> Conv 3x3 [-> avg-pool 2x2], plus a
             shortcut (Conv 1x1 [of the pooled input] where the block downsamples
             or changes width, else identity). The first ("optimized") block has
             no leading ReLU: its input is the image.

Upsampling is nearest-neighbour and downsampling 2x2 average pooling. A 1x1
convolution commutes with both, so shortcuts run it on the smaller map (4x
fewer multiply-adds, same function). Residual-path convolutions start from
Glorot-uniform scaled by sqrt(2), the rest from plain Glorot-uniform, as in
the authors' code (pfnet-research/sngan_projection). G's last batch norm is
unconditional even in a conditional G, as there.

Every layer has a bias except the ResNet D's output layer; batch norm uses
momentum 0.9 and epsilon 2e-5 (Chainer's defaults, the authors' framework).
Parameter counts at the default widths are in `tests/test_cifar_models.py`.

Conditioning (`num_classes`), spectral normalisation (`spectral_norm`, on by
default: these are SNGAN's discriminators), the projection and AC heads, D's
return convention, the optional minibatch standard-deviation channel
(`minibatch_std`, off by default) and mixed precision (`dtype`) are described in
`gan.models.conditioning`. Every D
`sow`s its features phi(x) ("intermediates"/"features") for the health monitor.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models import layers
from gan.models.conditioning import (
    ConditionalBatchNorm,
    discriminator_head,
    generator_labels,
    minibatch_stddev,
    spectral,
)

_CNN_INIT = nn.initializers.normal(0.02)
_GLOROT = nn.initializers.xavier_uniform()
_RESIDUAL_INIT = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")  # sqrt(2) x Glorot


def _norm(num_classes: int, axis_name: str | None, dtype: Any, **kwargs) -> ConditionalBatchNorm:
  return ConditionalBatchNorm(
      num_classes, momentum=0.9, epsilon=2e-5, axis_name=axis_name, dtype=dtype, **kwargs
  )


def _upsample(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class CNNGenerator32(nn.Module):
  """z (B, z_dim) [, labels y (B,)] -> images (B, 32, 32, channels) in [-1, 1].

  Attributes:
    width: channels of the last hidden layer; the others are 2x, 4x and 8x.
    channels: output image channels.
    num_classes: K > 0 for conditional batch norm on y, 0 for an unconditional G.
    axis_name: data-parallel axis over which batch-norm statistics are averaged.
    dtype: computation dtype (parameters stay float32; the images are returned as
      float32).
  """

  width: int = 64
  channels: int = 3
  num_classes: int = 0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    y = generator_labels(y, z.shape[0], self.num_classes)
    norm = functools.partial(_norm, self.num_classes, self.axis_name, self.dtype)
    x = nn.Dense(4 * 4 * 8 * self.width, kernel_init=_CNN_INIT, dtype=self.dtype)(z)
    x = x.reshape(z.shape[0], 4, 4, 8 * self.width)
    x = nn.relu(norm()(x, y, train))
    for multiple in (4, 2, 1):
      conv_t = layers.ConvTranspose(
          multiple * self.width,
          (4, 4),
          strides=(2, 2),
          padding="SAME",
          kernel_init=_CNN_INIT,
          dtype=self.dtype,
      )
      x = nn.relu(norm()(conv_t(x), y, train))
    x = nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=_CNN_INIT, dtype=self.dtype)(x)
    return jnp.tanh(x).astype(jnp.float32)


class CNNDiscriminator32(nn.Module):
  """Images (B, 32, 32, C) [, labels y (B,)] -> logits (B,) [, class logits (B, K)].

  Attributes:
    width: channels of the first convolution; later ones are 2x, 4x and 8x.
    num_classes: K > 0 for a conditional D (projection and/or AC head).
    projection: with K > 0, add the projection term <embed(y), phi(x)>.
    ac_head: also return class logits (needs K > 0).
    spectral_norm: spectrally normalise every weight (convolutions, dense
      layers, the embedding).
    minibatch_std: group size of a minibatch standard-deviation channel
      appended before the last convolution (0: none; see
      `gan.models.conditioning`).
    axis_name: unused (no batch statistics); kept for the registry interface.
    dtype: computation dtype of the convolutions (the head computes in float32).
  """

  width: int = 64
  num_classes: int = 0
  projection: bool = True
  ac_head: bool = False
  spectral_norm: bool = True
  minibatch_std: int = 0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None):
    for i, multiple in enumerate((1, 1, 2, 2, 4, 4, 8)):
      size, stride = (3, 1) if i % 2 == 0 else (4, 2)  # 3x3 convolutions, 4x4 s2 between
      if i == 6 and self.minibatch_std:
        x = minibatch_stddev(x, self.minibatch_std)
      conv = nn.Conv(
          multiple * self.width,
          (size, size),
          strides=(stride, stride),
          kernel_init=_CNN_INIT,
          dtype=self.dtype,
          name=f"conv{i}",
      )
      x = nn.leaky_relu(spectral(conv, x, enabled=self.spectral_norm, train=train), 0.1)
    features = x.reshape(x.shape[0], -1)
    return discriminator_head(self, features, y, train=train, use_bias=True, kernel_init=_CNN_INIT)


class GBlock(nn.Module):
  """ResNet generator block: doubles the resolution, outputs `features` channels."""

  features: int
  num_classes: int = 0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None, train: bool) -> jax.Array:
    norm = functools.partial(_norm, self.num_classes, self.axis_name, self.dtype)
    conv = functools.partial(
        nn.Conv, self.features, (3, 3), kernel_init=_RESIDUAL_INIT, dtype=self.dtype
    )
    h = nn.relu(norm(name="norm1")(x, y, train))
    h = conv(name="conv1")(_upsample(h))
    h = nn.relu(norm(name="norm2")(h, y, train))
    h = conv(name="conv2")(h)
    shortcut = nn.Conv(
        self.features, (1, 1), kernel_init=_GLOROT, dtype=self.dtype, name="shortcut"
    )(x)
    return h + _upsample(shortcut)


class DBlock(nn.Module):
  """ResNet discriminator block, optionally halving the resolution.

  Attributes:
    features: output channels (also the hidden convolution's).
    downsample: end with 2x2 average pooling.
    first: the "optimized" first block: no ReLU before its first convolution.
    spectral_norm: spectrally normalise the convolutions.
    dtype: computation dtype.
  """

  features: int
  downsample: bool = False
  first: bool = False
  spectral_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    sn = {"enabled": self.spectral_norm, "train": train}
    conv = functools.partial(
        nn.Conv, self.features, (3, 3), kernel_init=_RESIDUAL_INIT, dtype=self.dtype
    )
    h = x if self.first else nn.relu(x)
    h = spectral(conv(name="conv1"), h, **sn)
    h = spectral(conv(name="conv2"), nn.relu(h), **sn)
    shortcut = x
    if self.downsample:
      h, shortcut = _downsample(h), _downsample(shortcut)
    if self.downsample or x.shape[-1] != self.features:
      conv_1x1 = nn.Conv(
          self.features, (1, 1), kernel_init=_GLOROT, dtype=self.dtype, name="shortcut"
      )
      shortcut = spectral(conv_1x1, shortcut, **sn)
    return h + shortcut


class ResNetGenerator32(nn.Module):
  """z (B, z_dim) [, labels y (B,)] -> images (B, 32, 32, channels) in [-1, 1].

  Attributes:
    width: channels of the 4x4 map and of every block.
    channels, num_classes, axis_name, dtype: as for `CNNGenerator32` (the last
      batch norm is unconditional, see the module docstring).
  """

  width: int = 256
  channels: int = 3
  num_classes: int = 0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    y = generator_labels(y, z.shape[0], self.num_classes)
    x = nn.Dense(4 * 4 * self.width, kernel_init=_GLOROT, dtype=self.dtype)(z)
    x = x.reshape(z.shape[0], 4, 4, self.width)
    for _ in range(3):
      x = GBlock(self.width, self.num_classes, self.axis_name, self.dtype)(x, y, train)
    x = nn.relu(_norm(0, self.axis_name, self.dtype)(x, None, train))
    x = nn.Conv(self.channels, (3, 3), kernel_init=_GLOROT, dtype=self.dtype)(x)
    return jnp.tanh(x).astype(jnp.float32)


class ResNetDiscriminator32(nn.Module):
  """Images (B, 32, 32, C) [, labels y (B,)] -> logits (B,) [, class logits (B, K)].

  Attributes:
    width: channels of every block.
    num_classes, projection, ac_head, spectral_norm, axis_name, dtype: as for
      `CNNDiscriminator32`.
    minibatch_std: group size of a minibatch standard-deviation channel
      appended before the last block, which then has a 1x1 shortcut
      convolution (0: none).
  """

  width: int = 128
  num_classes: int = 0
  projection: bool = True
  ac_head: bool = False
  spectral_norm: bool = True
  minibatch_std: int = 0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None):
    block = functools.partial(
        DBlock, self.width, spectral_norm=self.spectral_norm, dtype=self.dtype
    )
    x = block(downsample=True, first=True)(x, train)
    x = block(downsample=True)(x, train)
    x = block()(x, train)
    if self.minibatch_std:
      x = minibatch_stddev(x, self.minibatch_std)
    x = block()(x, train)
    features = jnp.sum(nn.relu(x), axis=(1, 2))  # global sum pooling, as in the paper
    return discriminator_head(self, features, y, train=train, use_bias=False, kernel_init=_GLOROT)
