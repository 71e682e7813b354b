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

  5x5 conv 32 (valid) -> 2x2 max-pool -> dropout 0.5 -> 3x3 conv 64 (same)
  -> 3x3 conv 64 (valid) -> 2x2 max-pool -> dropout 0.5 -> 3x3 conv 128 (same)
  -> 3x3 conv 128 (same) -> global mean pool -> dense 10 (init N(0, 0.01^2)),
  batch norm and ReLU after every convolution: the layout of the paper's
  public MNIST code (28 -> 24 -> 12 -> 12 -> 10 -> 5 -> 5 -> 5), ~12M
  multiply-adds per image. The code initialises the convolutions from
  N(0, 0.05^2) and its batch norms add 1e-4 to the variance
  (`kernel_stddev=0.05`, `bn_epsilon=1e-4`; the defaults are Flax's LeCun
  normal and 1e-5).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models.dropout import Dropout


class CNNClassifier(nn.Module):
  """Images (B, 28, 28, C) in [-1, 1] -> class logits (B, num_classes)."""

  widths: tuple[int, int, int] = (32, 64, 128)
  num_classes: int = 10
  dropout_rate: float = 0.5
  kernel_stddev: float | None = None  # the convolutions' N(0, s^2) init; None: LeCun normal
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  # The output layer's parameters (the authors' code puts C's weight decay on its kernel).
  OUTPUT_LAYER: ClassVar[str] = "Dense_0"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=self.bn_epsilon,
        axis_name=self.axis_name if train else None,
    )
    dropout = functools.partial(Dropout, self.dropout_rate, axis_name=self.axis_name)
    init = {}
    if self.kernel_stddev is not None:
      init["kernel_init"] = nn.initializers.normal(self.kernel_stddev)

    def conv(features: int, size: int, padding: str, h: jax.Array) -> jax.Array:
      h = nn.Conv(features, (size, size), padding=padding, use_bias=False, **init)(h)
      return nn.relu(norm()(h))

    a, b, c = self.widths
    x = conv(a, 5, "VALID", x)
    x = dropout()(nn.max_pool(x, (2, 2), (2, 2)), deterministic=not train)
    x = conv(b, 3, "VALID", conv(b, 3, "SAME", x))
    x = dropout()(nn.max_pool(x, (2, 2), (2, 2)), deterministic=not train)
    x = conv(c, 3, "SAME", conv(c, 3, "SAME", x))
    dense = nn.Dense(
        self.num_classes, kernel_init=nn.initializers.normal(0.01), name=self.OUTPUT_LAYER
    )
    return dense(jnp.mean(x, axis=(1, 2)))
