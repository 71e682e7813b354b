"""Triple-GAN's CIFAR-10 networks (Li et al. 2017): classifier C, generator G(z, y), D(x, y).

As in the authors' code (zhenxuan00/triple-gan, x2y_yz2x_xy2p_ssl_cifar10.py),
with `widths` at their defaults:

  C (conv-large, Laine & Aila 2017's Pi-model network): ZCA -> Gaussian noise 0.15
      -> 3 x [conv 3x3 128] -> max-pool 2x2 -> dropout 0.5
      -> 3 x [conv 3x3 256] -> max-pool 2x2 -> dropout 0.5
      -> conv 3x3 512 (valid) -> conv 1x1 256 -> conv 1x1 128 -> global mean pool
      -> dense 10; every convolution and the dense layer weight-normalised
      (directions N(0, 0.05^2), scales initialised from the first batch, no
      bias) and followed by a mean-only batch norm (running mean, momentum
      0.999) with a bias, then LeakyReLU(0.1) (not after the dense layer).
      32 -> 16 -> 8 -> 6 spatially.
  G: [Phi(z), y] -> dense 4*4*512 -> BN -> ReLU -> [., y] -> deconv 5x5 s2 256
      -> BN -> ReLU -> [., y] -> deconv 128 -> BN -> ReLU -> [., y]
      -> weight-normalised deconv 3 -> tanh; batch norms without scale, one-hot
      labels concatenated to the input and to every feature map.
  D: dropout 0.2 -> [x, y] -> conv 3x3 32 -> [., y] -> conv 3x3 s2 32 -> dropout 0.2
      -> [., y] -> conv 64 -> [., y] -> conv s2 64 -> dropout 0.2 -> [., y]
      -> conv 3x3 128 (valid) -> [., y] -> conv 3x3 128 (valid) -> global mean pool
      -> [., y] -> dense 1; every layer weight-normalised, LeakyReLU(0.2).

The code initialises only C from data; G's and D's weight-norm scales stay at
1 and their biases at 0 (D's hidden scales are not trained, the output
layers' are). The paper draws z uniformly from [0, 1]^100; here z is standard
normal, mapped through the normal CDF Phi (exactly uniform), as in
`gan.models.improved_gan`. D sees images in [-1, 1] (the code's pixels are
(x - 127.5) / 128), C their ZCA-whitened version. Called without labels, G
draws class i mod K for example i and D sees the all-zero label (the health
monitor's probe); D `sow`s its pooled features.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gan.models import layers
from gan.models.dropout import Dropout
from gan.models.improved_gan import one_hot_labels
from gan.models.weight_norm import GaussianNoise, MeanOnlyBatchNorm, WNConv, WNDense
from gan.models.whitening import ZCA


def _with_label_maps(x: jax.Array, label: jax.Array) -> jax.Array:
  """Concatenates the one-hot label (B, K) to every position of a feature map (B, H, W, C)."""
  maps = jnp.broadcast_to(label[:, None, None, :], (*x.shape[:3], label.shape[-1]))
  return jnp.concatenate([x, maps], axis=-1)


class ConvLargeClassifier(nn.Module):
  """Images (B, 32, 32, C) in [-1, 1] -> class logits (B, num_classes).

  Attributes:
    widths: channels of the three 3x3 blocks, then of the two 1x1 layers.
    num_classes: K.
    input_noise: std of the Gaussian noise added to the whitened input in training.
    dropout_rate: after each max-pool, in training.
    zca: start with a ZCA layer (`gan.models.whitening`); `init` takes its fit as
      `whitening=(mean, matrix)` (the identity without one).
    bn_momentum: of the mean-only batch norms' running means.
    axis_name: data-parallel axis (batch means, noise and dropout are global).
  """

  widths: tuple[int, int, int, int, int] = (128, 256, 512, 256, 128)
  num_classes: int = 10
  input_noise: float = 0.15
  dropout_rate: float = 0.5
  zca: bool = True
  bn_momentum: float = 0.999
  axis_name: str | None = None

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool, whitening: tuple[np.ndarray, np.ndarray] | None = None
  ) -> jax.Array:
    if self.zca:
      x = ZCA(name="zca")(x, whitening)
    x = GaussianNoise(self.input_noise, self.axis_name)(x, train)
    norm = functools.partial(MeanOnlyBatchNorm, self.bn_momentum, self.axis_name)
    dropout = functools.partial(Dropout, self.dropout_rate, axis_name=self.axis_name)

    def conv(features: int, size: int, padding: str, h: jax.Array) -> jax.Array:
      h = WNConv(features, (size, size), padding=padding, use_bias=False)(h)
      return nn.leaky_relu(norm()(h, train), 0.1)

    a, b, c, d, e = self.widths
    for width in (a, b):
      for _ in range(3):
        x = conv(width, 3, "SAME", x)
      x = dropout()(nn.max_pool(x, (2, 2), (2, 2)), deterministic=not train)
    x = conv(e, 1, "VALID", conv(d, 1, "VALID", conv(c, 3, "VALID", x)))
    x = WNDense(self.num_classes, use_bias=False)(jnp.mean(x, axis=(1, 2)))
    return norm()(x, train)


class ConditionalGenerator32(nn.Module):
  """z (B, z_dim), standard normal [, labels y (B,)] -> images (B, 32, 32, channels) in [-1, 1].

  Attributes:
    width: channels of the last hidden map (the others 2x and 4x).
    num_classes: K, the one-hot label's length.
    channels: of the images.
    axis_name: batch-norm statistics are averaged over this axis in training.
  """

  width: int = 128
  num_classes: int = 10
  channels: int = 3
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    label = one_hot_labels(y, z.shape[0], self.num_classes, "cycle")
    init = nn.initializers.normal(0.05)
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        use_scale=False,
        momentum=0.9,
        epsilon=1e-6,
        axis_name=self.axis_name if train else None,
    )
    deconv = functools.partial(
        layers.ConvTranspose, kernel_size=(5, 5), strides=(2, 2), padding="SAME", kernel_init=init
    )
    x = jax.scipy.stats.norm.cdf(z)  # uniform on [0, 1]^z_dim, as in the paper
    x = nn.Dense(4 * 4 * 4 * self.width, use_bias=False, kernel_init=init)(
        jnp.concatenate([x, label], axis=-1)
    )
    x = nn.relu(norm()(x.reshape(z.shape[0], 4, 4, 4 * self.width)))
    for width in (2 * self.width, self.width):
      x = nn.relu(norm()(deconv(width, use_bias=False)(_with_label_maps(x, label))))
    x = nn.WeightNorm(deconv(self.channels))(_with_label_maps(x, label))
    return jnp.tanh(x)


class PairDiscriminator32(nn.Module):
  """Images (B, 32, 32, C) in [-1, 1] [, labels y (B,)] -> real/fake logits (B,) of the pairs.

  Attributes:
    widths: channels of the three pairs of convolutions.
    num_classes: K, the one-hot label's length.
    dropout_rate: on the input and after each strided convolution, in training.
    axis_name: data-parallel axis (dropout masks are those of the global batch).
  """

  widths: tuple[int, int, int] = (32, 64, 128)
  num_classes: int = 10
  dropout_rate: float = 0.2
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    label = one_hot_labels(y, x.shape[0], self.num_classes, "zeros")
    dropout = functools.partial(Dropout, self.dropout_rate, axis_name=self.axis_name)
    conv = functools.partial(WNConv, data_init=False, train_scale=False)

    def layer(h: jax.Array, features: int, **kwargs) -> jax.Array:
      return nn.leaky_relu(conv(features, **kwargs)(_with_label_maps(h, label)), 0.2)

    a, b, c = self.widths
    x = dropout()(x, deterministic=not train)
    for width in (a, b):
      x = layer(layer(x, width), width, strides=2)
      x = dropout()(x, deterministic=not train)
    x = layer(layer(x, c, padding="VALID"), c, padding="VALID")
    features = jnp.mean(x, axis=(1, 2))
    self.sow("intermediates", "features", features)
    logits = WNDense(1, data_init=False)(jnp.concatenate([features, label], axis=-1))
    return logits[:, 0]
