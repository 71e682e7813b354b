"""Weight-normalised dense layers with data-dependent initialisation, and Gaussian noise.

Weight normalisation (Salimans & Kingma 2016) writes a layer's weight as
w = g * v / ||v||, learning the direction v and the length g separately.
Data-dependent initialisation sets g and the bias from the first batch the
layer sees, so that its pre-activations start with zero mean and unit
variance per unit: g = s / std(t), b = -mean(t) * s / std(t) for
t = x . v / ||v|| and init scale s. Flax runs `init` on a real batch for this
(`model.init(key, batch)`); afterwards g and b are ordinary parameters.
The direction is called "kernel", so parameter-tree tools (e.g. the health
monitor's singular values) see it like any dense kernel. `WNConv` is the same
for a convolution (norm per output channel). `MeanOnlyBatchNorm` (Salimans &
Kingma's companion of weight norm) subtracts the batch mean per channel and
adds a bias, keeping a running mean for inference.
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
    use_bias: add b (off when a mean-only batch norm follows, which has its own).
  """

  features: int
  data_init: bool = True
  init_scale: float = 1.0
  train_scale: bool = True
  kernel_stddev: float = 0.05
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    v = self.param(
        "kernel", nn.initializers.normal(self.kernel_stddev), (x.shape[-1], self.features)
    )
    return _scale_and_shift(self, x @ (v / jnp.linalg.norm(v, axis=0, keepdims=True)))


def _scale_and_shift(layer: WNDense | WNConv, t: jax.Array) -> jax.Array:
  """t * g (+ b) with the layer's scale g and bias b, initialised from t if `data_init`.

  `t` holds the pre-activations of unit-norm weights, features on the last axis;
  called from the layer's compact method, so the parameters are the layer's.
  """
  features = t.shape[-1]
  axes = tuple(range(t.ndim - 1))
  if layer.data_init and layer.is_initializing():
    mean, std = jnp.mean(t, axis=axes), jnp.sqrt(jnp.var(t, axis=axes) + 1e-8)
    scale_init = lambda *_: layer.init_scale / std  # noqa: E731
    bias_init = lambda *_: -mean * layer.init_scale / std  # noqa: E731
  else:
    scale_init = lambda *_: jnp.full((features,), layer.init_scale, t.dtype)  # noqa: E731
    bias_init = nn.initializers.zeros
  g = layer.param("scale", scale_init, (features,))
  if not layer.train_scale:
    g = jax.lax.stop_gradient(g)
  if not layer.use_bias:
    return t * g
  return t * g + layer.param("bias", bias_init, (features,))


class WNConv(nn.Module):
  """Weight-normalised 2D convolution on (B, H, W, C): the norm is per output channel.

  Attributes:
    features, kernel_size, strides, padding: as for `nn.Conv` ("SAME" or "VALID").
    data_init, init_scale, train_scale, kernel_stddev, use_bias: as for `WNDense`; data-dependent
      statistics are over the batch and both spatial axes.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: str = "SAME"
  data_init: bool = True
  init_scale: float = 1.0
  train_scale: bool = True
  kernel_stddev: float = 0.05
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    v = self.param("kernel", nn.initializers.normal(self.kernel_stddev), shape)
    w = v / jnp.sqrt(jnp.sum(v * v, axis=(0, 1, 2), keepdims=True))
    t = lax.conv_general_dilated(
        x,
        w,
        (self.strides, self.strides),
        self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return _scale_and_shift(self, t)


class MeanOnlyBatchNorm(nn.Module):
  """x - mean + b per channel: the batch mean in training (and at init), a running one otherwise.

  Attributes:
    momentum: running mean <- momentum * running mean + (1 - momentum) * batch mean.
    axis_name: the batch mean is averaged over this device axis in training.
  """

  momentum: float = 0.999
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    running = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    if train or self.is_initializing():
      mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
      if train and self.axis_name is not None:
        mean = lax.pmean(mean, self.axis_name)
      if train and not self.is_initializing():
        running.value = self.momentum * running.value + (1.0 - self.momentum) * mean
    else:
      mean = running.value
    return x - mean + self.param("bias", nn.initializers.zeros, (features,))


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
