"""Tests that gan.models.layers.ConvTranspose is a drop-in flax ConvTranspose."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan.models.layers import ConvTranspose

# (input spatial, in channels, out channels, stride): the DCGAN generator's
# layers (k5, SAME), plus a few other paddings/strides our formulas cover.
_DCGAN_SHAPES = [
    ((7, 7), 256, 128, 1),
    ((7, 7), 128, 64, 2),
    ((14, 14), 64, 1, 2),
]


def _assert_close(actual, expected, rtol=1e-4):
  """Compares with a tolerance relative to the magnitude of `expected`."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.max(np.abs(expected))), 1e-6)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _pair(spatial, cin, cout, stride, padding='SAME', kernel=(5, 5), bias=True):
  ours = ConvTranspose(cout, kernel, (stride, stride), padding=padding, use_bias=bias)
  ref = nn.ConvTranspose(cout, kernel, (stride, stride), padding=padding, use_bias=bias)
  x = jax.random.normal(jax.random.key(1), (2, *spatial, cin))
  params = ours.init(jax.random.key(0), x)
  ref_params = ref.init(jax.random.key(0), x)
  # Same names, shapes and (same key) initial values as Flax.
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  jax.tree.map(_assert_close, params, ref_params)
  # A non-zero bias so its gradient path is exercised too.
  params = jax.tree.map(lambda p: p + 0.1, params)
  return ours, ref, params, x


@pytest.mark.parametrize('spatial,cin,cout,stride', _DCGAN_SHAPES)
@pytest.mark.parametrize('bias', [True, False])
def test_matches_flax_forward_and_gradients(spatial, cin, cout, stride, bias):
  ours, ref, params, x = _pair(spatial, cin, cout, stride, bias=bias)

  def loss(module):
    # A non-linear loss so the cotangent is not uniform.
    return lambda p, x: jnp.sum(jnp.sin(3.0 * module.apply(p, x)))

  _assert_close(ours.apply(params, x), ref.apply(params, x))
  g_params, g_x = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  r_params, r_x = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  _assert_close(g_x, r_x)
  assert set(g_params['params']) == ({'kernel', 'bias'} if bias else {'kernel'})
  jax.tree.map(_assert_close, g_params, r_params)


@pytest.mark.parametrize('padding,stride', [('VALID', 2), ('SAME', 3), (((1, 2), (0, 3)), 2)])
def test_other_paddings_and_strides(padding, stride):
  ours, ref, params, x = _pair((6, 6), 8, 4, stride, padding, kernel=(5, 3))
  _assert_close(ours.apply(params, x), ref.apply(params, x))

  def grads(module):
    def loss(p, x):
      return jnp.sum(jnp.sin(module.apply(p, x)))

    return jax.grad(loss, argnums=(0, 1))(params, x)

  jax.tree.map(_assert_close, grads(ours), grads(ref))


def test_jit_and_extra_batch_dims():
  ours, ref, params, _ = _pair((7, 7), 16, 8, 2)
  x = jax.random.normal(jax.random.key(2), (2, 3, 7, 7, 16))
  y = jax.jit(ours.apply)(params, x)
  assert y.shape == (2, 3, 14, 14, 8)
  _assert_close(y, ref.apply(params, x))


def test_batch_chunked_generator_equals_unchunked(smoke_config):
  """Slicing the convolutions' batch changes nothing: batch norm still sees the whole batch."""
  from gan import models  # noqa: PLC0415

  z = jax.random.normal(jax.random.PRNGKey(0), (5, 100))
  smoke_config.model.g.conv_chunk = 0
  G_whole, _ = models.build(smoke_config.model, axis_name=None)
  smoke_config.model.g.conv_chunk = 2
  G_chunked, _ = models.build(smoke_config.model, axis_name=None)
  variables = G_whole.init(jax.random.PRNGKey(1), z, train=False)

  def loss(params, G):
    out, _ = G.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        z,
        train=True,
        mutable=['batch_stats'],
    )
    return jnp.sum(out**2), out

  (_, whole), g_whole = jax.value_and_grad(loss, has_aux=True)(variables['params'], G_whole)
  (_, chunked), g_chunked = jax.value_and_grad(loss, has_aux=True)(variables['params'], G_chunked)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_chunked, g_whole
  )
