"""Layers whose stock Flax/XLA:CPU formulation is too slow for our training loop.

Both workarounds here apply on the CPU backend only (`gan.platform.choices`,
decided from JAX's default backend when the step is traced): on an
accelerator ``ConvTranspose`` is Flax's formulation with JAX's gradient and
``batch_chunked`` leaves the batch whole.

This module owns ``ConvTranspose``: a drop-in replacement for
``flax.linen.ConvTranspose`` (same attributes we use, same parameter names,
shapes and initialisers, numerically the same forward pass) whose gradients
are formulated so that XLA's CPU backend runs every convolution on its fast
(Eigen/YNNPACK) path.

Why it exists:
  A transposed convolution with stride ``s > 1`` is, in XLA, a convolution
  whose *input* is dilated (``lhs_dilation=s``). Its forward pass and its input
  gradient are fine on XLA:CPU (the input gradient is an ordinary strided
  convolution). Its *kernel* gradient, however, is derived by JAX as a
  convolution that carries the ``lhs_dilation`` over to the kernel gradient,
  and XLA:CPU lowers that through a slow generic loop, which made the stock
  layer's backward pass much slower than its forward pass and the DCGAN
  training step much slower than it needs to be. The adjoint formulation
  below runs it on the fast path, and is faster than a sub-pixel (phase)
  decomposition too; with it the step is dominated by the stride-1
  7x7x256 -> 7x7x128 layer, which already runs at XLA's GEMM peak. The
  timings are in benchmarks/README.md ("What made the step fast").

How:
  A transposed convolution ``T`` is the adjoint of a strided convolution ``S``
  (kernel spatially flipped, in/out channels swapped, padding complemented).
  So we define the gradient with ``jax.custom_vjp``:

    * input grad  = ``S(dy)`` -- an ordinary strided convolution;
    * kernel grad = the kernel gradient of ``S`` at input ``dy`` with cotangent
      ``x`` -- exactly the op JAX emits for a strided ``nn.Conv``, which XLA:CPU
      runs on its fast path.

  Stride 1 needs none of this: ``T`` is then an ordinary SAME/VALID
  convolution whose gradients are already fast, and measurements showed no
  gain from a custom gradient, im2col/col2im matmuls, per-tap matmuls that skip
  the zero padding, or region-split VALID convolutions (all were equal or
  slower), so stride 1 uses the plain convolution.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax import lax

from gan import platform

Array = jax.Array
Initializer = nn.initializers.Initializer
Padding = str | Sequence[tuple[int, int]]

# Same default kernel initialiser as flax.linen.ConvTranspose.
default_kernel_init = nn.initializers.lecun_normal()


def _dimension_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
  """Channels-last layouts, as flax.linen.ConvTranspose uses."""
  spatial = 'HWDXYZ'[:num_spatial]
  return lax.ConvDimensionNumbers(
      *lax.conv_dimension_numbers(
          (1,) * (num_spatial + 2),
          (1,) * (num_spatial + 2),
          ('N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C'),
      )
  )


def _transpose_padding(
    kernel_size: Sequence[int], strides: Sequence[int], padding: Padding
) -> tuple[tuple[int, int], ...]:
  """Padding of the input-dilated convolution, as ``lax.conv_transpose``.

  Mirrors ``jax._src.lax.convolution._conv_transpose_padding`` (a private
  function, hence copied) so that outputs match ``flax.linen.ConvTranspose``
  bit for bit: strings describe the padding of the forward convolution whose
  transpose we compute; explicit pairs are applied to the dilated input as is.
  """
  if isinstance(padding, str):
    padding = padding.upper()
    pads = []
    for k, s in zip(kernel_size, strides, strict=True):
      if padding == 'SAME':
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
      elif padding == 'VALID':
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
      else:
        raise ValueError(f'Unsupported padding {padding!r}.')
      pads.append((pad_a, pad_len - pad_a))
    return tuple(pads)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _flip_swap(kernel: Array) -> Array:
  """Kernel of the adjoint: spatially flipped, in/out channels swapped."""
  spatial_axes = tuple(range(kernel.ndim - 2))
  return jnp.swapaxes(jnp.flip(kernel, spatial_axes), -1, -2)


def _forward(x, kernel, strides, pads, precision):
  # The same op lax.conv_transpose emits, so the forward pass matches Flax.
  return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(1,) * len(strides),
      padding=pads,
      lhs_dilation=strides,
      dimension_numbers=_dimension_numbers(len(strides)),
      precision=precision,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(
    x: Array,
    kernel: Array,
    strides: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    precision: Any = None,
) -> Array:
  """Channels-last ``lax.conv_transpose`` with a fast custom gradient.

  Args:
    x: input of shape ``(N, *spatial, in_features)``.
    kernel: kernel of shape ``(*kernel_size, in_features, out_features)``
      (not flipped, i.e. ``transpose_kernel=False`` semantics).
    strides: stride per spatial dimension.
    pads: ``(low, high)`` padding of the dilated input per spatial dimension,
      see ``_transpose_padding``.
    precision: ``lax`` precision for all convolutions.

  Returns:
    The transposed convolution, same values as ``lax.conv_transpose``.
  """
  return _forward(x, kernel, strides, pads, precision)


def _conv_transpose_fwd(x, kernel, strides, pads, precision):
  return _forward(x, kernel, strides, pads, precision), (x, kernel)


def _conv_transpose_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  dn = _dimension_numbers(len(strides))
  kernel_size = kernel.shape[:-2]
  # S: the strided convolution whose adjoint is our forward pass. Complementing
  # the padding (k - 1 - p) is what makes <T x, y> == <x, S y> hold exactly and
  # gives S an output of exactly x's spatial shape.
  adj_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_size, pads, strict=True))

  def strided_conv(v):
    return lax.conv_general_dilated(
        dy, v, strides, adj_pads, dimension_numbers=dn, precision=precision
    )

  # dx = S(dy); dS/dv at (dy, cotangent x) is the kernel gradient of an
  # ordinary strided convolution -- the fast XLA:CPU path we are after.
  dx, vjp_fn = jax.vjp(strided_conv, _flip_swap(kernel))
  (dv,) = vjp_fn(x.astype(dx.dtype))
  return dx.astype(x.dtype), _flip_swap(dv).astype(kernel.dtype)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class ConvTranspose(nn.Module):
  """Drop-in ``flax.linen.ConvTranspose`` with fast XLA:CPU gradients.

  Same parameters (``kernel`` of shape ``(*kernel_size, in, features)``,
  optional ``bias`` of shape ``(features,)``), same initialisers and the same
  output as ``flax.linen.ConvTranspose`` with ``transpose_kernel=False``. Not
  supported: ``kernel_dilation``, ``mask``, ``transpose_kernel``,
  ``'CIRCULAR'`` padding.

  For stride 1 this is a plain convolution (already fast). For stride > 1 the
  gradient is the custom VJP described in the module docstring.

  Attributes:
    features: number of output channels.
    kernel_size: spatial kernel shape (an int means 1-D).
    strides: stride per spatial dimension (int broadcasts); None means 1.
    padding: 'SAME', 'VALID', or ``(low, high)`` pairs with the same meaning as
      in ``lax.conv_transpose``.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: dtype of the parameters.
    precision: ``lax`` precision of the convolutions.
    kernel_init: initialiser of the kernel.
    bias_init: initialiser of the bias.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: Padding = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """Applies the transposed convolution.

    Args:
      inputs: array of shape ``(*batch_dims, *spatial, in_features)``; batch
        dimensions are flattened and restored (one is added if missing), as in
        Flax.

    Returns:
      Array of shape ``(*batch_dims, *out_spatial, features)``.
    """
    if isinstance(self.kernel_size, int):
      kernel_size = (self.kernel_size,)
    else:
      kernel_size = tuple(self.kernel_size)
    n = len(kernel_size)
    if self.strides is None:
      strides = (1,) * n
    elif isinstance(self.strides, int):
      strides = (self.strides,) * n
    else:
      strides = tuple(self.strides)

    batch_shape = inputs.shape[: inputs.ndim - n - 1]
    x = inputs.reshape((-1,) + inputs.shape[inputs.ndim - n - 1 :])

    kernel = self.param(
        'kernel',
        self.kernel_init,
        kernel_size + (x.shape[-1], self.features),
        self.param_dtype,
    )
    bias = (
        self.param('bias', self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias
        else None
    )
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)

    pads = _transpose_padding(kernel_size, strides, self.padding)
    if all(s == 1 for s in strides) or not platform.current().custom_conv_transpose:
      # Stride 1: an ordinary convolution, whose gradients are already fast. Off the CPU
      # backend: the stock formulation and its JAX gradient (`gan.platform`).
      y = _forward(x, kernel, strides, pads, self.precision)
    else:
      y = conv_transpose(x, kernel, strides, pads, self.precision)

    if bias is not None:
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])


def batch_chunked(layer: Any, x: Array, chunk: int) -> Array:
  """``layer(x)`` computed on slices of at most ``chunk`` examples, then concatenated.

  XLA:CPU convolutions lose per-image efficiency as the batch grows past what
  fits in cache; slicing the batch of a per-example layer (a convolution, not
  batch norm) keeps each convolution small without changing any result. On
  other backends (`gan.platform.choices`) the layer sees the whole batch.
  """
  n = x.shape[0]
  if not chunk or n <= chunk or not platform.current().conv_chunk:
    return layer(x)
  pieces = jnp.split(x, list(range(chunk, n, chunk)))
  return jnp.concatenate([layer(p) for p in pieces])
