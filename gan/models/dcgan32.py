"""DCGAN generator and discriminator for 32x32 colour images (CIFAR-10).

Radford et al. (2016) give design rules rather than a CIFAR-10 network: strided
convolutions instead of pooling in D and fractionally-strided ones in G, batch
norm in both except G's output and D's input layer, ReLU in G with a tanh
output, LeakyReLU(0.2) in D, 5x5 kernels and weights from N(0, 0.02^2). Applied
at 32x32 with three resolution steps (4 -> 8 -> 16 -> 32), the shape WGAN-GP's
CIFAR-10 DCGAN baseline also has (Gulrajani et al. 2017). With `width` = 64:

  G: z (100) -> Dense 4*4*256 -> BN -> ReLU -> ConvT 5x5 s2 128 -> BN -> ReLU
       -> ConvT 5x5 s2 64 -> BN -> ReLU -> ConvT 5x5 s2 3 -> tanh
  D: Conv 5x5 s2 64 -> LReLU -> Conv 5x5 s2 128 -> BN -> LReLU
       -> Conv 5x5 s2 256 -> BN -> LReLU -> Dense 1 on the flattened 4x4x256 features

Layers followed by batch norm have no bias (it would be cancelled). D's batch
norm can be switched off (`batch_norm=False`, the convolutions then get biases),
the usual choice together with `spectral_norm=True`; with batch norm, D keeps
batch statistics and averages them over `axis_name` in training, like G.

Conditioning, spectral normalisation, the projection and AC heads, D's
return convention, the optional minibatch standard-deviation channel
(`minibatch_std`) and mixed precision (`dtype`) are those of
`gan.models.conditioning`; D `sow`s its
flattened features ("intermediates"/"features") for the health monitor.
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

_INIT = nn.initializers.normal(0.02)


class Generator32(nn.Module):
  """z (B, z_dim) [, labels y (B,)] -> images (B, 32, 32, channels) in [-1, 1].

  Attributes:
    width: channels of the last hidden layer; the others are 2x and 4x this.
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
    norm = functools.partial(
        ConditionalBatchNorm, self.num_classes, axis_name=self.axis_name, dtype=self.dtype
    )
    conv_t = functools.partial(
        layers.ConvTranspose,
        kernel_size=(5, 5),
        strides=(2, 2),
        padding="SAME",
        kernel_init=_INIT,
        dtype=self.dtype,
    )
    x = nn.Dense(4 * 4 * 4 * self.width, use_bias=False, kernel_init=_INIT, dtype=self.dtype)(z)
    x = x.reshape(z.shape[0], 4, 4, 4 * self.width)
    x = nn.relu(norm()(x, y, train))
    x = nn.relu(norm()(conv_t(2 * self.width, use_bias=False)(x), y, train))
    x = nn.relu(norm()(conv_t(self.width, use_bias=False)(x), y, train))
    return jnp.tanh(conv_t(self.channels)(x)).astype(jnp.float32)


class Discriminator32(nn.Module):
  """Images (B, 32, 32, C) [, labels y (B,)] -> logits (B,) [, class logits (B, K)].

  Attributes:
    width: channels of the first convolution; the others are 2x and 4x this.
    batch_norm: batch norm after the second and third convolutions.
    num_classes: K > 0 for a conditional D (projection and/or AC head).
    projection: with K > 0, add the projection term <embed(y), phi(x)>.
    ac_head: also return class logits (needs K > 0).
    spectral_norm: spectrally normalise every weight.
    minibatch_std: group size of a minibatch standard-deviation channel
      appended before the last convolution (0: none; see
      `gan.models.conditioning`).
    axis_name: data-parallel axis over which D's batch statistics are averaged.
    dtype: computation dtype of the convolutions and batch norms (the head
      computes in float32).
  """

  width: int = 64
  batch_norm: bool = True
  num_classes: int = 0
  projection: bool = True
  ac_head: bool = False
  spectral_norm: bool = False
  minibatch_std: int = 0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None):
    for i, multiple in enumerate((1, 2, 4)):
      if i == 2 and self.minibatch_std:
        x = minibatch_stddev(x, self.minibatch_std)
      normalised = self.batch_norm and i > 0
      conv = nn.Conv(
          multiple * self.width,
          (5, 5),
          strides=(2, 2),
          use_bias=not normalised,
          kernel_init=_INIT,
          dtype=self.dtype,
          name=f"conv{i}",
      )
      x = spectral(conv, x, enabled=self.spectral_norm, train=train)
      if normalised:
        norm = ConditionalBatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=f"norm{i}")
        x = norm(x, None, train)
      x = nn.leaky_relu(x, 0.2)
    features = x.reshape(x.shape[0], -1)
    return discriminator_head(self, features, y, train=train, use_bias=True, kernel_init=_INIT)
