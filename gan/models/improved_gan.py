"""Networks of the semi-supervised methods.

Improved-GAN's permutation-invariant MNIST pair (Salimans et al. 2016, Sec. 5.1
and their public code):

  G: z (100) -> Dense 500 (no bias) -> BN (no scale) -> softplus
       -> Dense 500 (no bias) -> BN (no scale) -> softplus
       -> weight-normalised Dense 784 -> sigmoid
  D: Gaussian noise 0.3 on the input -> weight-normalised Dense 1000, 500, 250,
       250, 250, each ReLU then Gaussian noise 0.5 -> weight-normalised Dense 10

The paper draws z uniformly from [0, 1]^100. The codebase's latents are
standard normal everywhere (samples, evaluators), so the generator maps them
through the normal CDF first: Phi(z) is exactly uniform on [0, 1]. Images
stay in the codebase's [-1, 1] range outside the networks: G returns
2 sigmoid - 1 and D looks at (x + 1) / 2, so inside, both see the paper's
[0, 1] pixels. D's hidden layers initialise their weight-norm scales and
biases from the init batch and keep the scales fixed, the output layer learns
its scale (as in the paper's code; Triple-GAN's code differs: see the
discriminator's attributes); D `sow`s its last hidden layer
("intermediates"/"features"): the feature-matching target and the health
monitor's diversity space.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models.weight_norm import GaussianNoise, WNDense


def _with_label(x: jax.Array, label: jax.Array | None) -> jax.Array:
  return x if label is None else jnp.concatenate([x, label], axis=-1)


def one_hot_labels(y: jax.Array | None, batch: int, classes: int, default: str) -> jax.Array | None:
  """The one-hot labels a conditional network concatenates, or None if it is unconditional."""
  if not classes:
    return None
  if y is None:  # class i mod K for example i, or the all-zero "no label"
    if default == "cycle":
      return jax.nn.one_hot(jnp.arange(batch) % classes, classes)
    return jnp.zeros((batch, classes))
  return jax.nn.one_hot(y, classes)


class ImprovedGANGenerator(nn.Module):
  """z (B, z_dim), standard normal [, labels y (B,)] -> images (B, 28, 28, 1) in [-1, 1].

  With `label_classes` = K > 0 the generator is conditional: the one-hot label
  is concatenated to the input of every layer (Triple-GAN's MNIST G). Called
  without `y` it draws class i mod K for example i, so sample grids and
  evaluators see every class equally often.
  """

  widths: tuple[int, ...] = (500, 500)
  image_shape: tuple[int, int, int] = (28, 28, 1)
  label_classes: int = 0
  bn_scale: bool = False  # a learned scale in the batch norms (Triple-GAN's code has one)
  axis_name: str | None = None  # batch-norm statistics are averaged over this axis

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    label = one_hot_labels(y, z.shape[0], self.label_classes, "cycle")
    x = jax.scipy.stats.norm.cdf(z)  # uniform on [0, 1]^z_dim, as in the paper
    for width in self.widths:
      x = nn.Dense(width, use_bias=False)(_with_label(x, label))
      x = nn.BatchNorm(
          use_running_average=not train,
          use_scale=self.bn_scale,
          momentum=0.9,
          epsilon=1e-4,
          axis_name=self.axis_name if train else None,
      )(x)
      x = nn.softplus(x)
    size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
    x = nn.sigmoid(WNDense(size, data_init=False)(_with_label(x, label)))
    return (2.0 * x - 1.0).reshape(z.shape[0], *self.image_shape)


class ImprovedGANDiscriminator(nn.Module):
  """Images (B, ...) in [-1, 1] [, labels y (B,)] -> logits (B, num_classes), or (B,) if 1.

  Improved-GAN: K = `num_classes` logits of the real classes; the fake
  class's logit is fixed at 0, so D(x) = Z / (Z + 1) with Z = sum_k exp(logit_k)
  (`gan.semi.improved_gan` reads D's real/fake logit as logsumexp(logits)).
  With `label_classes` > 0 and `num_classes` = 1 it is Triple-GAN's pair
  discriminator D(x, y): the one-hot label joins the input of every layer and
  the output is one real/fake logit per pair (called without `y`, it sees the
  all-zero label: the health monitor's diversity probe).
  """

  widths: tuple[int, ...] = (1000, 500, 250, 250, 250)
  num_classes: int = 10
  label_classes: int = 0
  input_noise: float = 0.3
  hidden_noise: float = 0.5
  kernel_stddev: float = 0.1  # initial weight-norm directions (the paper's code: N(0, 0.1^2))
  # Triple-GAN's code: scales 1 and biases 0 at the start, every scale fixed (the output's
  # too), and a second copy of the label joined after the first hidden layer, before its
  # noise (so the second layer sees [noisy [h, y], y]).
  data_init: bool = True
  train_output_scale: bool = True
  label_twice: bool = False
  axis_name: str | None = None  # the noise is keyed by the example's index along this axis

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, y: jax.Array | None = None) -> jax.Array:
    label = one_hot_labels(y, x.shape[0], self.label_classes, "zeros")
    x = (x.reshape(x.shape[0], -1) + 1.0) / 2.0
    x = GaussianNoise(self.input_noise, self.axis_name)(x, train)
    dense = functools.partial(WNDense, kernel_stddev=self.kernel_stddev, data_init=self.data_init)
    for i, width in enumerate(self.widths):
      x = nn.relu(dense(width, train_scale=False)(_with_label(x, label)))
      features = x
      if i == 0 and self.label_twice:
        x = _with_label(x, label)
      x = GaussianNoise(self.hidden_noise, self.axis_name)(x, train)
    self.sow("intermediates", "features", features)
    logits = dense(self.num_classes, train_scale=self.train_output_scale)(_with_label(x, label))
    return logits[:, 0] if self.num_classes == 1 else logits
