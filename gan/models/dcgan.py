"""DCGAN generator and discriminator for 28x28 single-channel images.

The architecture is the one of the TensorFlow DCGAN tutorial
(tensorflow.org/tutorials/generative/dcgan), so results can be compared with
the many implementations that follow it. With the default `width=64`:

  G: z -> Dense(7*7*256, no bias) -> BN -> LReLU(0.2)
       -> ConvT 128 k5 s1 -> BN -> LReLU -> ConvT 64 k5 s2 -> BN -> LReLU
       -> ConvT 1 k5 s2 -> tanh                     (2,305,472 trainable params)
  D: Conv 64 k5 s2 -> LReLU -> Dropout 0.3 -> Conv 128 k5 s2 -> LReLU
       -> Dropout 0.3 -> Flatten -> Dense 1         (212,865 params)

Kernels use Glorot-uniform initialisation and batch norm uses momentum 0.99
and epsilon 1e-3, the Keras defaults the tutorial trains with. `width` scales
every channel count; tests use small widths to compile quickly.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models import layers
from gan.models.dropout import Dropout

_KERNEL_INIT = nn.initializers.xavier_uniform()


def _lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


class Generator28(nn.Module):
  """Maps z of shape (B, z_dim) to images of shape (B, 28, 28, channels) in [-1, 1].

  Attributes:
    width: channels of the last hidden layer; the others are 2x and 4x this.
    channels: output image channels.
    axis_name: data-parallel axis over which batch-norm statistics are averaged,
      so a batch split over devices normalises exactly like the whole batch.
    conv_chunk: the convolutions run on slices of at most this many examples
      (0: the whole batch); an XLA:CPU speed knob that changes no result, ignored
      on other backends (`gan.platform.choices`).
    z_scale: multiplies z on the way in; 0 gives a generator that ignores its
      latent and so cannot express diversity (the health monitor's broken case).
  """

  width: int = 64
  channels: int = 1
  axis_name: str | None = None
  conv_chunk: int = 64
  z_scale: float = 1.0

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.99,
        epsilon=1e-3,
        axis_name=self.axis_name if train else None,
    )
    conv_t = functools.partial(
        layers.ConvTranspose,
        kernel_size=(5, 5),
        padding="SAME",
        use_bias=False,
        kernel_init=_KERNEL_INIT,
    )
    z = z * self.z_scale
    x = nn.Dense(7 * 7 * 4 * self.width, use_bias=False, kernel_init=_KERNEL_INIT)(z)
    x = _lrelu(norm()(x))
    x = x.reshape(z.shape[0], 7, 7, 4 * self.width)
    chunked = functools.partial(layers.batch_chunked, chunk=self.conv_chunk)
    x = _lrelu(norm()(chunked(conv_t(2 * self.width, strides=(1, 1)), x)))
    x = _lrelu(norm()(chunked(conv_t(self.width, strides=(2, 2)), x)))
    x = chunked(conv_t(self.channels, strides=(2, 2)), x)
    return jnp.tanh(x)


class Discriminator28(nn.Module):
  """Maps images (B, 28, 28, C) to one real/fake logit per image, shape (B,).

  Attributes:
    width: channels of the first convolution; the second has 2x.
    dropout_rate: dropout after each convolution block (active when train).
    axis_name: data-parallel axis, so dropout masks do not depend on how the
      batch is split over devices.
    conv_chunk: as for the generator.
  """

  width: int = 64
  dropout_rate: float = 0.3
  axis_name: str | None = None
  conv_chunk: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(
        nn.Conv, kernel_size=(5, 5), strides=(2, 2), padding="SAME", kernel_init=_KERNEL_INIT
    )
    dropout = functools.partial(Dropout, self.dropout_rate, axis_name=self.axis_name)
    chunked = functools.partial(layers.batch_chunked, chunk=self.conv_chunk)
    x = dropout()(_lrelu(chunked(conv(self.width), x)), deterministic=not train)
    x = dropout()(_lrelu(chunked(conv(2 * self.width), x)), deterministic=not train)
    x = x.reshape(x.shape[0], -1)
    self.sow("intermediates", "features", x)  # for the health monitor's diversity signal
    return nn.Dense(1, kernel_init=_KERNEL_INIT)(x)[:, 0]
