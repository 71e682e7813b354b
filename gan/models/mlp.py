"""MLP generator and discriminator for low-dimensional data (the 2D mixtures), and for
images as flat vectors (the MNIST-MLP members of population sweeps).

The discriminator optionally *packs* m samples into one decision (PacGAN, Lin
et al. 2018): the batch (B, d) is reshaped to (B/m, m*d), so D judges m
samples jointly, which penalises a generator that drops modes. m=1 is a
plain discriminator. It may also drop hidden units in training, as the
fully connected MNIST GAN of Goodfellow et al. (2014) does in its D.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan.models.dropout import Dropout

_ACTIVATIONS = {"relu": nn.relu, "lrelu": lambda x: nn.leaky_relu(x, 0.2), "elu": nn.elu}


def _activation(name: str):
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


class MLPGenerator(nn.Module):
  """z (B, z_dim) -> `depth` hidden layers of `width` -> points (B, out_dim), linear output.

  With `image_shape` (e.g. (28, 28, 1)) it makes images instead: tanh outputs
  in [-1, 1], shaped (B, *image_shape), and `out_dim` is unused.
  """

  width: int = 256
  depth: int = 3
  out_dim: int = 2
  activation: str = "relu"
  image_shape: tuple[int, ...] = ()
  axis_name: str | None = None  # unused: no batch statistics; kept for the registry interface

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    del train
    act = _activation(self.activation)
    x = z
    for _ in range(self.depth):
      x = act(nn.Dense(self.width)(x))
    if not self.image_shape:
      return nn.Dense(self.out_dim)(x)
    x = jnp.tanh(nn.Dense(math.prod(self.image_shape))(x))
    return x.reshape(x.shape[0], *self.image_shape)


class MLPDiscriminator(nn.Module):
  """Points (B, d) -> `depth` hidden layers of `width` -> logits (B / pack,).

  `dropout_rate`: dropout after each hidden layer, in training only (0: none).
  """

  width: int = 256
  depth: int = 3
  pack: int = 1
  activation: str = "lrelu"
  dropout_rate: float = 0.0
  axis_name: str | None = None  # data-parallel axis, for dropout masks (gan.models.dropout)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    act = _activation(self.activation)
    x = x.reshape(x.shape[0] // self.pack, -1)
    for _ in range(self.depth):
      x = act(nn.Dense(self.width)(x))
      x = Dropout(self.dropout_rate, axis_name=self.axis_name)(x, deterministic=not train)
    self.sow("intermediates", "features", x)  # for the health monitor's diversity signal
    return nn.Dense(1)(x)[:, 0]
