"""Weight-normalised dense layers with data-dependent initialisation, and Gaussian noise.

Weight normalisation (Salimans & Kingma 2016) writes a layer's weight as
w = g * v / ||v||, learning the direction v and the length g separately.
Data-dependent initialisation sets g and the bias from the first batch the
layer sees, so that its pre-activations start with zero mean and unit
variance per unit: g = s / std(t), b = -mean(t) * s / std(t) for
t = x . v / ||v|| and init scale s. Flax runs `init` on a real batch for this
(`model.init(key, batch)`); afterwards g and b are ordinary parameters.
The direction is called "kernel", so parameter-tree tools (e.g. the health
monitor's singular values) see it like any dense kernel.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from gan.models import dropout


class WNDense(nn.Module):
  """Dense layer y = (x . v / ||v||) * g + b (norm per output unit).

  Attributes:
    features: output units.
    data_init: set g and b from the init batch (otherwise g = init_scale, b = 0).
    init_scale: the target standard deviation of the initial pre-activations.
    train_scale: learn g (else it keeps its initial, data-dependent value).
    kernel_stddev: the initial direction's entries are N(0, kernel_stddev^2); only
      its norm relative to Adam's step size matters, the output does not depend on it.
  """

  features: int
  data_init: bool = True
  init_scale: float = 1.0
  train_scale: bool = True
  kernel_stddev: float = 0.05

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    v = self.param(
        "kernel", nn.initializers.normal(self.kernel_stddev), (x.shape[-1], self.features)
    )
    t = x @ (v / jnp.linalg.norm(v, axis=0, keepdims=True))
    if self.data_init and self.is_initializing():
      mean, std = jnp.mean(t, axis=0), jnp.sqrt(jnp.var(t, axis=0) + 1e-8)
      scale_init = lambda *_: self.init_scale / std  # noqa: E731
      bias_init = lambda *_: -mean * self.init_scale / std  # noqa: E731
    else:
      scale_init = lambda *_: jnp.full((self.features,), self.init_scale, x.dtype)  # noqa: E731
      bias_init = nn.initializers.zeros
    g = self.param("scale", scale_init, (self.features,))
    if not self.train_scale:
      g = jax.lax.stop_gradient(g)
    b = self.param("bias", bias_init, (self.features,))
    return t * g + b


class GaussianNoise(nn.Module):
  """Adds N(0, stddev^2) noise in training (rng stream "noise"); the identity otherwise.

  Like the project's dropout (`gan.models.dropout`), the noise is a hash of each
  element's index in the global batch: cheap on CPU, and the same whatever the
  number of devices the batch is split over (`axis_name`).
  """

  stddev: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.stddev == 0:
      return x
    seed = jax.random.bits(self.make_rng("noise"), (), jnp.uint32)
    offset = 0 if self.axis_name is None else lax.axis_index(self.axis_name) * x.shape[0]
    return x + self.stddev * dropout.normal(seed, x.shape, offset).astype(x.dtype)
