"""Networks of Triple-GAN (Li et al. 2017) on MNIST: conditional G and D, a CNN classifier.

G and D are the Improved-GAN MLPs (`gan.models.improved_gan`) made
conditional by concatenating the one-hot label to the input of every layer,
the usual way Triple-GAN's MNIST networks take labels:

  G(z, y): [Phi(z), y] -> 500 softplus BN -> [., y] -> 500 softplus BN -> [., y]
           -> weight-normalised 784 sigmoid
  D(x, y): [x + noise 0.3, y] -> WN 1000 -> noise 0.5 -> [., y] -> 500 -> ... -> 250
           -> [., y] -> WN 1 (real-vs-fake logit of the pair)

The classifier C(y | x) is a CNN with dropout:

  5x5 conv 32 -> 2x2 max-pool -> dropout 0.5 -> 3x3 conv 64 -> 3x3 conv 64
  -> 2x2 max-pool -> dropout 0.5 -> 3x3 conv 128 -> 3x3 conv 128
  -> global mean pool -> dense 10, ReLU and batch norm after every convolution.

Interfaces shared with the rest of the codebase: G and D take the label as an
optional keyword. Without one, G draws class `i mod K` for example i (sample
grids and evaluators then see every class equally often) and D sees the
all-zero label (the health monitor's diversity probe).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models.dropout import Dropout
from gan.models.weight_norm import GaussianNoise, WNDense


def _one_hot(y: jax.Array | None, batch: int, num_classes: int, default: str) -> jax.Array:
  if y is None:
    if default == "cycle":
      return jax.nn.one_hot(jnp.arange(batch) % num_classes, num_classes)
    return jnp.zeros((batch, num_classes))
  return jax.nn.one_hot(y, num_classes)


class ConditionalGenerator(nn.Module):
  """(z (B, z_dim) standard normal, y (B,) int) -> images (B, 28, 28, 1) in [-1, 1]."""

  widths: tuple[int, ...] = (500, 500)
  num_classes: int = 10
  image_shape: tuple[int, int, int] = (28, 28, 1)
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    label = _one_hot(y, z.shape[0], self.num_classes, "cycle")
    x = jax.scipy.stats.norm.cdf(z)
    for width in self.widths:
      x = nn.Dense(width, use_bias=False)(jnp.concatenate([x, label], axis=-1))
      x = nn.BatchNorm(
          use_running_average=not train,
          use_scale=False,
          momentum=0.9,
          epsilon=1e-4,
          axis_name=self.axis_name if train else None,
      )(x)
      x = nn.softplus(x)
    size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
    x = WNDense(size, data_init=False)(jnp.concatenate([x, label], axis=-1))
    return (2.0 * nn.sigmoid(x) - 1.0).reshape(z.shape[0], *self.image_shape)


class ConditionalDiscriminator(nn.Module):
  """(images (B, ...) in [-1, 1], y (B,) int) -> one real/fake logit per pair, shape (B,)."""

  widths: tuple[int, ...] = (1000, 500, 250, 250, 250)
  num_classes: int = 10
  input_noise: float = 0.3
  hidden_noise: float = 0.5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    label = _one_hot(y, x.shape[0], self.num_classes, "zeros")
    x = (x.reshape(x.shape[0], -1) + 1.0) / 2.0
    x = GaussianNoise(self.input_noise, self.axis_name)(x, train)
    for width in self.widths:
      x = nn.relu(WNDense(width, train_scale=False)(jnp.concatenate([x, label], axis=-1)))
      features = x
      x = GaussianNoise(self.hidden_noise, self.axis_name)(x, train)
    self.sow("intermediates", "features", features)
    return WNDense(1, train_scale=True)(jnp.concatenate([x, label], axis=-1))[:, 0]


class CNNClassifier(nn.Module):
  """Images (B, 28, 28, C) in [-1, 1] -> class logits (B, num_classes)."""

  widths: tuple[int, int, int] = (32, 64, 128)
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=self.axis_name if train else None,
    )
    dropout = functools.partial(Dropout, self.dropout_rate, axis_name=self.axis_name)

    def conv(features: int, size: int, h: jax.Array) -> jax.Array:
      return nn.relu(norm()(nn.Conv(features, (size, size), padding="SAME", use_bias=False)(h)))

    a, b, c = self.widths
    x = conv(a, 5, x)
    x = dropout()(nn.max_pool(x, (2, 2), (2, 2)), deterministic=not train)
    x = conv(b, 3, conv(b, 3, x))
    x = dropout()(nn.max_pool(x, (2, 2), (2, 2)), deterministic=not train)
    x = conv(c, 3, conv(c, 3, x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
