"""Improved-GAN (Salimans et al. 2016, Sec. 5): semi-supervised learning with a K+1-class D.

The discriminator is the classifier: it outputs K logits l_1..l_K for the real
classes and the "fake" class has its logit fixed at 0, so with
Z(x) = sum_k exp(l_k(x)),

  p(y = k | x, real) = softmax(l)_k,     D(x) = p(real | x) = Z / (Z + 1),

i.e. D's real-vs-fake logit is logsumexp(l). The losses, for a labelled batch
(x_l, y_l), an unlabelled batch x_u and generated x_g = G(z):

  L_sup   = E[logsumexp(l(x_l)) - l_{y_l}(x_l)]                 (cross-entropy)
  L_unsup = 1/2 E[softplus(-lse(x_u))] + 1/2 E[softplus(lse(x_g))]
          = 1/2 (E[-log D(x_u)] + E[-log(1 - D(x_g))])
  L_D     = L_sup + unlabelled_weight * L_unsup
  L_G     = mean_j (E f_j(x_u') - E f_j(G(z)))^2                (feature matching)

with f the output of D's last hidden layer (noise on, as in training) and
x_u' a second unlabelled batch. The batch means of f are averaged over the
devices, so the loss is that of the global batch whatever the device count.

One step: draw the batches, update D, then G against the new D, then the
EMAs of G (samples) and of D (the classifier whose test error is reported).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from gan import data as data_lib
from gan import step as step_lib
from gan import streams
from gan.semi import common
from gan.state import GANState, TrainState, field


def supervised_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of the K real classes."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def unsupervised_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """1/2 (E[-log D(x)] + E[-log(1 - D(G(z)))]) with D = Z / (Z + 1)."""
  real = jax.nn.logsumexp(real_logits, axis=-1)
  fake = jax.nn.logsumexp(fake_logits, axis=-1)
  return 0.5 * jnp.mean(jax.nn.softplus(-real)) + 0.5 * jnp.mean(jax.nn.softplus(fake))


def feature_matching_loss(
    real_features: jax.Array, fake_features: jax.Array, axis_name: str | None = None
) -> jax.Array:
  """Mean squared difference of the batch-mean features (global batch over `axis_name`)."""
  real, fake = jnp.mean(real_features, axis=0), jnp.mean(fake_features, axis=0)
  if axis_name is not None:
    real, fake = lax.pmean(real, axis_name), lax.pmean(fake, axis_name)
  return jnp.mean((real - fake) ** 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImprovedGANStepConfig(step_lib.CommonStepConfig):
  """The static settings of an Improved-GAN step."""

  classifier_ema_decay: float
  unlabelled_weight: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ImprovedGANStepConfig:
    return cls(
        **cls.common(config),
        classifier_ema_decay=config.semi.classifier_ema_decay,
        unlabelled_weight=config.semi.unlabelled_weight,
    )


def _uniform_examples(key: jax.Array, data: dict[str, jax.Array], local_batch: int) -> jax.Array:
  """Unlabelled images drawn with replacement; example i of the global batch depends on i only."""
  num = data["image"].shape[0]
  ids = step_lib.global_example_ids(local_batch)
  index = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, num))(ids)
  return data_lib.to_float(data["image"][index])


def make_train_step(cfg: ImprovedGANStepConfig, G: nn.Module, D: nn.Module) -> step_lib.StepFn:
  """The per-device Improved-GAN step (wrap with `gan.step.pmap_step`); D is the classifier."""

  def discriminate(params: Any, x: jax.Array, key: jax.Array):
    rngs = {"noise": streams.key(key, "noise")}
    logits, mutated = D.apply(
        {"params": params}, x, train=True, rngs=rngs, mutable=["intermediates"]
    )
    return logits, mutated["intermediates"]["features"][0]

  def generate(g: TrainState, params: Any, z: jax.Array):
    fake, mutated = G.apply(g.variables(params), z, train=True, mutable=["batch_stats"])
    return fake, mutated["batch_stats"]

  def train_step(state: GANState, data: dict[str, jax.Array]) -> tuple[GANState, step_lib.Metrics]:
    local_batch = cfg.global_batch // lax.axis_size(step_lib.AXIS)
    d_key, g_key = streams.keys(streams.step_key(state.rng, state.step), "critic", "generator")
    sizes = {"unlabelled": cfg.global_batch, "labelled": cfg.global_batch}
    orders, batches = common.draw_batches(state, data, sizes)
    unlabelled, labelled = batches["unlabelled"], batches["labelled"]
    g, d = state.g, state.d
    z = step_lib.sample_z(streams.key(d_key, "z"), local_batch, cfg.z_dim)
    fake = lax.stop_gradient(generate(g, g.params, z)[0])

    def d_loss_fn(params):
      lab_logits, _ = discriminate(params, labelled["image"], streams.key(d_key, "labelled"))
      real_logits, _ = discriminate(params, unlabelled["image"], streams.key(d_key, "unlabelled"))
      fake_logits, _ = discriminate(params, fake, streams.key(d_key, "fake"))
      sup = supervised_loss(lab_logits, labelled["label"])
      unsup = unsupervised_loss(real_logits, fake_logits)
      return sup + cfg.unlabelled_weight * unsup, (sup, unsup, lab_logits, real_logits, fake_logits)

    (d_loss, aux), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d.params)
    sup, unsup, lab_logits, real_logits, fake_logits = aux
    d_grads = lax.pmean(d_grads, step_lib.AXIS)
    d = d.apply_gradients(grads=d_grads)

    g_real = _uniform_examples(streams.key(g_key, "unlabelled"), data, local_batch)
    g_z = step_lib.sample_z(streams.key(g_key, "z"), local_batch, cfg.z_dim)
    _, real_features = discriminate(d.params, g_real, streams.key(g_key, "real"))

    def g_loss_fn(params):
      fake, batch_stats = generate(g, params, g_z)
      fake_logits, fake_features = discriminate(d.params, fake, streams.key(g_key, "fake"))
      loss = feature_matching_loss(real_features, fake_features, step_lib.AXIS)
      return loss, (batch_stats, fake_logits)

    (g_loss, (batch_stats, g_fake_logits)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        g.params
    )
    g_grads = lax.pmean(g_grads, step_lib.AXIS)
    g = g.apply_gradients(grads=g_grads, batch_stats=batch_stats)

    g_ema = step_lib.ema_update(
        state.g_ema, g.params, step_lib.ema_decay_at(state.step, cfg.ema_decay)
    )
    c_ema = step_lib.ema_update(
        state.c_ema, d.params, step_lib.ema_decay_at(state.step, cfg.classifier_ema_decay)
    )
    new_state = state.replace(
        step=state.step + 1,
        g=g,
        d=d,
        g_ema=g_ema,
        c_ema=c_ema,
        **orders,
    )
    real_lse = jax.nn.logsumexp(real_logits, axis=-1)
    fake_lse = jax.nn.logsumexp(fake_logits, axis=-1)
    metrics = {
        f"d/{k}": v for k, v in step_lib.d_metrics(d_loss, real_lse, fake_lse, d_grads).items()
    }
    metrics |= {
        "d/loss_sup": sup,
        "d/loss_unsup": unsup,
        "d/train_acc": jnp.mean(jnp.argmax(lab_logits, -1) == labelled["label"]),
        "g/loss": g_loss,
        "g/grad_norm": optax.tree.norm(g_grads),
        "g/fake_logit": jnp.mean(jax.nn.logsumexp(g_fake_logits, axis=-1)),
    }
    return step_lib.finish_step(cfg, state, new_state, metrics)

  return train_step


def create_state(
    config: ml_collections.ConfigDict,
    G: nn.Module,
    D: nn.Module,
    images: np.ndarray,
    num_labelled: int,
) -> GANState:
  """Initialises G, and D from a batch of training images (data-dependent weight norm).

  `images` is the uint8 training split; `num_labelled` the (tiled) labelled set's size.
  """
  rng = jax.random.PRNGKey(config.seed)
  g_key, d_key, noise_key, init_key = streams.keys(
      streams.key(rng, "init"), "g_init", "d_init", "noise", "z"
  )
  z = jax.random.normal(init_key, (config.semi.init_batch, config.model.z_dim))
  g_vars = G.init(g_key, z, train=False)
  x = common.init_images(config, images)
  # Outside the mapped step there is no device axis: initialise a copy without one.
  d_vars = D.clone(axis_name=None).init({"params": d_key, "noise": noise_key}, x, train=True)
  g = common.new_player(G, g_vars, config.optim.g, config.num_steps)
  d = common.new_player(D, d_vars, config.optim.d, config.num_steps)
  return GANState(
      step=jnp.zeros((), jnp.int32),
      g=g,
      d=d,
      g_ema=jax.tree.map(jnp.copy, g.params),
      rng=rng,
      c_ema=jax.tree.map(jnp.copy, d.params),
      **common.first_orders(rng, len(images), num_labelled),
  )


def classifier(D: nn.Module, state: Any, average: bool = True) -> tuple[nn.Module, dict[str, Any]]:
  """(module, variables) of the classifier: D's K logits (noise off in inference mode).

  The EMA of D's parameters, or with `average=False` D itself (the paper's
  code of its date scored the raw D).
  """
  return D, {"params": field(state, "c_ema") if average else field(field(state, "d"), "params")}
