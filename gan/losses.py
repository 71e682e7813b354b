"""Adversarial losses on discriminator logits, chosen by name in `config.loss`.

Each loss is a pair of functions of raw discriminator outputs (logits; no
sigmoid is applied before them), averaged over the batch:

| name            | D minimises                              | G minimises          |
|-----------------|------------------------------------------|----------------------|
| non_saturating  | -log D(x) - log(1 - D(G(z)))             | -log D(G(z))         |
| minimax         | same as non_saturating                   | log(1 - D(G(z)))     |
| hinge           | relu(1 - d(x)) + relu(1 + d(G(z)))       | -d(G(z))             |
| wasserstein     | d(G(z)) - d(x)                           | -d(G(z))             |
| least_squares   | 0.5 (d(x) - 1)^2 + 0.5 d(G(z))^2         | 0.5 (d(G(z)) - 1)^2  |

where D = sigmoid(d). Goodfellow et al. 2014 (minimax and non-saturating),
Lim & Ye 2017 / Miyato et al. 2018 (hinge), Arjovsky et al. 2017
(Wasserstein; needs a Lipschitz constraint from elsewhere), Mao et al. 2017
(least squares, a=0, b=c=1).

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1
by `1 - smoothing` in the discriminator loss only; it is defined for the
losses with targets (non_saturating, minimax, least_squares).

`classification` is the auxiliary-classifier term of AC-GAN (Odena et al.
2017), added to any of these by the step when D has a class head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from gan.utils import ConfigError


@dataclasses.dataclass(frozen=True)
class GANLoss:
  """A named pair of losses. `d(real, fake, smoothing)` and `g(fake)` return scalars."""

  name: str
  d: Callable[[jax.Array, jax.Array, float], jax.Array]
  g: Callable[[jax.Array], jax.Array]
  supports_smoothing: bool


def _bce_d(real: jax.Array, fake: jax.Array, smoothing: float) -> jax.Array:
  # -[t log sigmoid(r) + (1 - t) log(1 - sigmoid(r))] with t = 1 - smoothing,
  # using -log sigmoid(r) = softplus(-r) and -log(1 - sigmoid(r)) = softplus(r).
  target = 1.0 - smoothing
  real_term = target * jax.nn.softplus(-real) + (1.0 - target) * jax.nn.softplus(real)
  return jnp.mean(real_term) + jnp.mean(jax.nn.softplus(fake))


def _non_saturating_g(fake: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.softplus(-fake))


def _minimax_g(fake: jax.Array) -> jax.Array:
  return -jnp.mean(jax.nn.softplus(fake))


def _hinge_d(real: jax.Array, fake: jax.Array, smoothing: float) -> jax.Array:
  del smoothing
  return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))


def _wasserstein_d(real: jax.Array, fake: jax.Array, smoothing: float) -> jax.Array:
  del smoothing
  return jnp.mean(fake) - jnp.mean(real)


def _linear_g(fake: jax.Array) -> jax.Array:
  return -jnp.mean(fake)


def _least_squares_d(real: jax.Array, fake: jax.Array, smoothing: float) -> jax.Array:
  target = 1.0 - smoothing
  return 0.5 * jnp.mean((real - target) ** 2) + 0.5 * jnp.mean(fake**2)


def _least_squares_g(fake: jax.Array) -> jax.Array:
  return 0.5 * jnp.mean((fake - 1.0) ** 2)


LOSSES: dict[str, GANLoss] = {
    loss.name: loss
    for loss in (
        GANLoss("non_saturating", _bce_d, _non_saturating_g, supports_smoothing=True),
        GANLoss("minimax", _bce_d, _minimax_g, supports_smoothing=True),
        GANLoss("hinge", _hinge_d, _linear_g, supports_smoothing=False),
        GANLoss("wasserstein", _wasserstein_d, _linear_g, supports_smoothing=False),
        GANLoss("least_squares", _least_squares_d, _least_squares_g, supports_smoothing=True),
    )
}


def classification(class_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of class logits (B, K) against integer labels (B,)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(class_logits, labels))


def get(name: str, smoothing: float = 0.0) -> GANLoss:
  """Looks up a loss by name, checking that label smoothing makes sense for it."""
  if name not in LOSSES:
    raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
  loss = LOSSES[name]
  if smoothing and not loss.supports_smoothing:
    raise ConfigError(f"label smoothing is not defined for the {name!r} loss")
  if not 0.0 <= smoothing < 1.0:
    raise ConfigError(f"label_smoothing must be in [0, 1), got {smoothing}")
  return loss
