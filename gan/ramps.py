"""Laine & Aila's ramp schedules (2017, "Temporal Ensembling for Semi-Supervised Learning").

Both are functions of the epoch, e = step // steps_per_epoch, constant within
an epoch as in the authors' code (smlaine2/tempens, train.py), which
Triple-GAN's CIFAR-10 code copies (zhenxuan00/triple-gan,
x2y_yz2x_xy2p_ssl_cifar10.py):

  ramp-up    exp(-5 (1 - e / E_up)^2) for e < E_up, then 1: a sigmoid-shaped
             rise of an unsupervised loss weight over the first E_up epochs
  ramp-down  exp(-(0.5 (e - e_0))^2 / E_down) from epoch e_0 on, before it 1:
             the fall of Adam's beta1 (and, in Laine & Aila, of the learning
             rate) over E_down epochs

They take traced steps, so a compiled step or an optax schedule evaluates them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rampup(step: jax.Array | int, epochs: int, steps_per_epoch: int) -> jax.Array:
  """exp(-5 (1 - e / epochs)^2) in epoch e < epochs, 1 afterwards (1 throughout if epochs = 0)."""
  if epochs == 0:
    return jnp.ones((), jnp.float32)
  epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
  p = 1.0 - jnp.minimum(epoch, epochs) / epochs
  return jnp.exp(-5.0 * p * p)


def rampdown(step: jax.Array | int, start: int, epochs: int, steps_per_epoch: int) -> jax.Array:
  """1 before epoch `start`, then exp(-(0.5 (e - start))^2 / epochs) in epoch e."""
  epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
  e = 0.5 * jnp.maximum(epoch - start, 0.0)
  return jnp.exp(-e * e / epochs)
