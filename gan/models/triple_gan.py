"""Networks of Triple-GAN (Li et al. 2017) on MNIST: the CNN classifier.

G and D are the Improved-GAN MLPs (`gan.models.improved_gan`) made
conditional (`label_classes=10`; D with `num_classes=1`) by concatenating the
one-hot label to the input of every layer, the usual way Triple-GAN's MNIST
networks take labels:

  G(z, y): [Phi(z), y] -> 500 softplus BN -> [., y] -> 500 softplus BN -> [., y]
           -> weight-normalised 784 sigmoid
  D(x, y): [x + noise 0.3, y] -> WN 1000 -> noise 0.5 -> [., y] -> 500 -> ... -> 250
           -> [., y] -> WN 1 (real-vs-fake logit of the pair)

The classifier C(y | x) is a CNN with dropout:

  5x5 conv 32 -> 2x2 max-pool -> dropout 0.5 -> 3x3 conv 64 -> 3x3 conv 64
  -> 2x2 max-pool -> dropout 0.5 -> 3x3 conv 128 -> 3x3 conv 128
  -> global mean pool -> dense 10, ReLU and batch norm after every convolution.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models.dropout import Dropout


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
