"""Penalties on the gradient of D's output with respect to its input: R1 and WGAN-GP.

Both take the input gradient that `input_gradient` computes as the gradient of
the batch's summed logits, one backward pass for the whole batch. Row i of it
is grad_x D(x_i) when D treats examples independently; batch norm in D
(which the WGAN-GP paper advises against) or a minibatch standard-deviation
channel add the small cross-example terms, as in the reference
implementations that take the same gradient of a sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def input_gradient(
    fn: Callable[[jax.Array], tuple[jax.Array, Any]], x: jax.Array
) -> tuple[jax.Array, Any, jax.Array]:
  """`fn(x) -> (logits (B,), aux)`: returns the logits, aux and d(sum of logits)/dx."""
  logits, vjp, aux = jax.vjp(fn, x, has_aux=True)
  (grad,) = vjp(jnp.ones_like(logits))
  return logits, aux, grad


def r1(grad: jax.Array) -> jax.Array:
  """E ||grad_x D(x)||^2 over real x: R1 (Mescheder et al. 2018) without its weight gamma / 2."""
  return jnp.mean(jnp.sum(grad.reshape(grad.shape[0], -1) ** 2, axis=1))


def gradient_penalty(grad: jax.Array) -> jax.Array:
  """E (||grad_x D(x)|| - 1)^2: WGAN-GP's penalty (Gulrajani et al. 2017) without its lambda.

  The norm's gradient is taken as 0 where the input gradient is 0 (instead of NaN).
  """
  norms = optax.safe_norm(grad.reshape(grad.shape[0], -1), 0.0, axis=1)
  return jnp.mean((norms - 1.0) ** 2)


def interpolate(real: jax.Array, fake: jax.Array, keys: jax.Array) -> jax.Array:
  """e_i x_i + (1 - e_i) x~_i with e_i ~ U[0, 1] drawn from `keys[i]`: WGAN-GP's sample points."""
  e = jax.vmap(jax.random.uniform)(keys).reshape(-1, *(1,) * (real.ndim - 1))
  return e * real + (1.0 - e) * fake
