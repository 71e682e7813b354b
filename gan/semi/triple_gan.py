"""Triple-GAN (Li et al. 2017): a classifier, a conditional generator and a pair discriminator.

Three players share one compiled step. C(y | x) labels images, G(z, y) draws
images of a label, D(x, y) judges image-label pairs. With a labelled batch
(x_l, y_l), an unlabelled batch x_u with labels y_c ~ C(. | x_u) drawn from
the classifier, and generated pairs (G(z, y_g), y_g) with balanced y_g:

  L_D = E[-log D(x_l, y_l)] + alpha E[-log(1 - D(x_u, y_c))]
        + (1 - alpha) E[-log(1 - D(G(z, y_g), y_g))]
  L_C = E[-log C(y_l | x_l)]                                        (R_L)
        + s alpha E[(log(1 - D(x_u, y_c)) - b) log C(y_c | x_u)]    (adversarial)
        + alpha_P [step >= pseudo_start] E[-log C(y_g | G(z, y_g))]  (R_P)
        + entropy_weight H(C(. | x_u)) + balance_weight CE(uniform, E C(. | x_u))
        + w(t) E[||C(. | x_u) - C'(. | x_u)||^2] / K                 (consistency)
  L_G = E[-log D(G(z, y_g), y_g)]

C's adversarial term is the score-function (REINFORCE) gradient of
alpha E_{y ~ C(.|x)}[log(1 - D(x, y))], the paper's term, because y is
discrete; b, the batch mean of log(1 - D), is a baseline that lowers the
variance without changing the expected gradient. G uses the non-saturating
form of its term (its 1 - alpha factor is dropped: Adam is invariant to a
constant scale). The last two terms of L_C are regularisers of the paper's
public code (weights 0.3 and 1e-3 there; 0 = off, the default): the mean
entropy of C's predictions on unlabelled images, and the cross-entropy of the
uniform distribution against C's mean prediction, which keeps every class in
use. s (`adversarial_scale`, default 1) scales C's adversarial term alone:
Triple-GAN's CIFAR-10 code weights it by 0.01 x 1/2. The updates run D, then
C and G against the new D, then the EMAs of G (samples) and C (the classifier
whose test error is reported).

Options that follow the authors' code (`config.semi`; the experiments'
`reference` variants set them all, and their docstrings cite the code):
  batches         global sizes of C's labelled batch and of the generated one
                  (G's, D's generated pairs, R_P's); x_u's is config.batch_size.
  d_batches       D's own real pairs: `labelled` labelled ones drawn in their
                  own order (0: C's labelled batch) and `unlabelled` images
                  labelled by C's argmax (0: none). L_D's first term is then
                  the mean of -log D over all of them.
  adversarial     "argmax": C's term is s alpha E[p_max -log D(x_u, y_max)],
                  y_max C's most likely label, the gradient through p_max
                  (`argmax_adversarial_loss`); D's classifier-labelled fake
                  pairs are labelled by C's argmax too.
  update_order    "dgc": D, then G, then C, whose R_P takes fresh pairs of the
                  new G (the default "dcg" reuses D's generated pairs).
  classifier_weight_decay   times the squared kernel of C's output layer
                  (`C.OUTPUT_LAYER`), added to L_C.
  classifier_ema_stats      C's EMA averages its batch-norm statistics too
                  (`GANState.c_ema_stats`), and the scored classifier uses them.

Options for CIFAR-10 (all off by default, and then the step is unchanged):
  consistency     the Pi-model term of Laine & Aila (2017): the squared
                  difference of C's class probabilities in two passes over x_u
                  with independent noise, dropout (and augmentation), both
                  differentiated, averaged over classes and examples; its
                  weight w(t) = consistency_weight * rampup(t), 0 in the first
                  epoch (`gan.ramps`, as in both papers' code).
  augmentation    every training pass of C sees its images transformed by a
                  DiffAugment policy (`gan.augment`), e.g. "translation"; the
                  pass that draws y_c and the one that scores it see one
                  transformation.
  zca             C's first layer whitens (`gan.models.whitening`), fitted on
                  `zca_images` training images (0: all) when the state is built.
  shared_trunk    C and D share their first layers (`gan.models.shared_trunk`):
                  the trunk's parameters live in C's state and D's state holds
                  its head; every D pass runs on C's current trunk, and the
                  trunk's gradient from L_D (taken in D's update, at the
                  parameters D saw) is added to its gradient from L_C in C's
                  update. So the trunk is trained by C's optimizer on L_C + L_D.

Before the game, `pretrain` can train C alone on the labels (and its entropy
and balance terms), as the paper's MNIST code does (`config.semi.pretrain`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from gan import augment, ramps, streams
from gan import data as data_lib
from gan import step as step_lib
from gan.models import shared_trunk, whitening
from gan.semi import common
from gan.state import GANState, TrainState, field
from gan.utils import ConfigError


def discriminator_loss(
    real: jax.Array, classified: jax.Array, generated: jax.Array, alpha: float
) -> jax.Array:
  """L_D from D's logits on labelled, classifier-labelled and generated pairs."""
  return (
      jnp.mean(jax.nn.softplus(-real))
      + alpha * jnp.mean(jax.nn.softplus(classified))
      + (1.0 - alpha) * jnp.mean(jax.nn.softplus(generated))
  )


def classifier_adversarial_loss(
    logits: jax.Array, sampled: jax.Array, d_logits: jax.Array, alpha: float, axis_name=None
) -> jax.Array:
  """The score-function surrogate of alpha E_{y ~ C}[log(1 - D(x, y))], with a batch baseline.

  `logits` are C's on the unlabelled batch, `sampled` the labels drawn from
  them, `d_logits` D's on those pairs. Its gradient with respect to C is the
  REINFORCE estimate; its value is not the term itself.
  """
  cost = lax.stop_gradient(-jax.nn.softplus(d_logits))  # log(1 - D(x, y)): C lowers it
  baseline = jnp.mean(cost)
  if axis_name is not None:
    baseline = lax.pmean(baseline, axis_name)
  log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), sampled[:, None], axis=1)[:, 0]
  return alpha * jnp.mean((cost - baseline) * log_prob)


def argmax_adversarial_loss(logits: jax.Array, d_logits: jax.Array, weight: float) -> jax.Array:
  """C's adversarial term as the authors' code computes it: weight E[p_max -log D(x, y_max)].

  `logits` are C's on the unlabelled batch, `d_logits` D's on the pairs of those
  images with C's most likely labels (a constant for C). The gradient reaches C
  through its top class probability p_max only: C grows its confidence where D
  takes the pair for real and lowers it where D does not.
  """
  p_max = jnp.max(jax.nn.softmax(logits), axis=-1)
  return weight * jnp.mean(p_max * jax.nn.softplus(-lax.stop_gradient(d_logits)))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def entropy(logits: jax.Array) -> jax.Array:
  """Mean entropy of C's predictions: lowering it makes C confident on unlabelled data."""
  log_p = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, axis=-1))


def balance(logits: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Cross-entropy of the uniform class distribution against C's mean prediction.

  Smallest (log K) when the batch's predictions use every class equally; it
  counters the entropy term's pull toward predicting a few classes. The mean is
  over the global batch.
  """
  mean = jnp.mean(jax.nn.softmax(logits), axis=0)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  return -jnp.mean(jnp.log(mean + 1e-8))


def consistency(logits: jax.Array, other_logits: jax.Array) -> jax.Array:
  """The Pi-model term: mean over examples and classes of (p - p')^2, p = softmax(logits)."""
  return jnp.mean(jnp.square(jax.nn.softmax(logits) - jax.nn.softmax(other_logits)))


def consistency_weight(
    step: jax.Array, weight: float, rampup_epochs: int, steps_per_epoch: int
) -> jax.Array:
  """w(t): `weight` times the ramp-up over `rampup_epochs`, and 0 in the first epoch."""
  w = weight * ramps.rampup(step, rampup_epochs, steps_per_epoch)
  return jnp.where(jnp.asarray(step) >= steps_per_epoch, w, 0.0)


ADVERSARIAL_FORMS = ("reinforce", "argmax")
UPDATE_ORDERS = ("dcg", "dgc")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TripleGANStepConfig(step_lib.CommonStepConfig):
  """The static settings of a Triple-GAN step (batch sizes global; `global_batch` is x_u's)."""

  num_classes: int
  classifier_ema_decay: float
  alpha: float
  alpha_p: float
  pseudo_start: int
  entropy_weight: float
  balance_weight: float
  adversarial_scale: float = 1.0
  consistency_weight: float = 0.0
  consistency_rampup_epochs: int = 0
  steps_per_epoch: int = 1
  classifier_augment: tuple[str, ...] = ()
  shared_trunk: bool = False
  trunk_d_weight: float = 1.0
  labelled_batch: int = 0  # 0: global_batch
  generated_batch: int = 0  # 0: global_batch
  d_labelled: int = 0  # 0: D's labelled pairs are C's labelled batch
  d_unlabelled: int = 0  # 0: no classifier-labelled pairs among D's real ones
  adversarial: str = "reinforce"
  update_order: str = "dcg"
  classifier_weight_decay: float = 0.0
  classifier_ema_stats: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> TripleGANStepConfig:
    semi = config.semi
    batches, d_batches = semi.get("batches", {}), semi.get("d_batches", {})
    adversarial = semi.get("adversarial", "reinforce")
    if adversarial not in ADVERSARIAL_FORMS:
      raise ConfigError(f"unknown semi.adversarial {adversarial!r}; use one of {ADVERSARIAL_FORMS}")
    order = semi.get("update_order", "dcg")
    if order not in UPDATE_ORDERS:
      raise ConfigError(f"unknown semi.update_order {order!r}; use one of {UPDATE_ORDERS}")
    return cls(
        **cls.common(config),
        num_classes=semi.num_classes,
        classifier_ema_decay=semi.classifier_ema_decay,
        alpha=semi.alpha,
        alpha_p=semi.alpha_p,
        pseudo_start=semi.pseudo_start_step,
        entropy_weight=semi.get("entropy_weight", 0.0),
        balance_weight=semi.get("balance_weight", 0.0),
        adversarial_scale=semi.get("adversarial_scale", 1.0),
        consistency_weight=semi.get("consistency_weight", 0.0),
        consistency_rampup_epochs=semi.get("consistency_rampup_epochs", 0),
        steps_per_epoch=semi.get("steps_per_epoch", 1),
        classifier_augment=augment.parse_policy(semi.get("classifier_augment", "")),
        shared_trunk=semi.get("shared_trunk", False),
        trunk_d_weight=semi.get("trunk_d_weight", 1.0),
        labelled_batch=batches.get("labelled", 0) or config.batch_size,
        generated_batch=batches.get("generated", 0) or config.batch_size,
        d_labelled=d_batches.get("labelled", 0),
        d_unlabelled=d_batches.get("unlabelled", 0),
        adversarial=adversarial,
        update_order=order,
        classifier_weight_decay=semi.get("classifier_weight_decay", 0.0),
        classifier_ema_stats=semi.get("classifier_ema_stats", False),
    )


def _local(size: int, num_devices: int) -> int:
  """A global batch's share on each device; it must split evenly."""
  if size % num_devices:
    raise ConfigError(f"a batch of {size} does not split over {num_devices} devices")
  return size // num_devices


def make_train_step(cfg: TripleGANStepConfig, G: nn.Module, D: nn.Module, C: nn.Module):
  """The per-device Triple-GAN step (wrap with `gan.step.pmap_step`)."""

  def generate(g: TrainState, params: Any, z: jax.Array, y: jax.Array):
    fake, mutated = G.apply(g.variables(params), z, train=True, y=y, mutable=["batch_stats"])
    return fake, mutated["batch_stats"]

  def with_trunk(params: Any, c_params: Any) -> Any:
    """D's parameters, with C's trunk in a shared-trunk run."""
    if not cfg.shared_trunk:
      return params
    return {**params, shared_trunk.TRUNK: c_params[shared_trunk.TRUNK]}

  def discriminate(params: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
    rngs = {"noise": streams.key(key, "noise"), "dropout": streams.key(key, "dropout")}
    return D.apply({"params": params}, x, train=True, y=y, rngs=rngs)

  def classify(c: TrainState, params: Any, x: jax.Array, key: jax.Array):
    if cfg.classifier_augment:
      keys = step_lib.example_keys(streams.key(key, "augment"), x.shape[0])
      x = augment.diff_augment(x, cfg.classifier_augment, keys)
    rngs = {"dropout": streams.key(key, "dropout"), "noise": streams.key(key, "noise")}
    logits, mutated = C.apply(
        c.variables(params), x, train=True, rngs=rngs, mutable=["batch_stats"]
    )
    return logits, mutated.get("batch_stats", {})

  def argmax_labels(c: TrainState, x: jax.Array, key: jax.Array) -> jax.Array:
    """C's most likely labels for `x`, from a training pass (dropout and noise on)."""
    return jnp.argmax(lax.stop_gradient(classify(c, c.params, x, key)[0]), axis=-1)

  def train_step(state: GANState, data: dict[str, jax.Array]) -> tuple[GANState, step_lib.Metrics]:
    num_devices = lax.axis_size(step_lib.AXIS)
    local_batch = _local(cfg.global_batch, num_devices)
    local_generated = _local(cfg.generated_batch, num_devices)
    d_key, c_key, g_key = streams.keys(
        streams.step_key(state.rng, state.step), "critic", "classifier", "generator"
    )
    sizes = {"unlabelled": cfg.global_batch, "labelled": cfg.labelled_batch}
    if cfg.d_labelled:
      sizes["d_labelled"] = cfg.d_labelled
    if cfg.d_unlabelled:
      sizes["d_unlabelled"] = cfg.d_unlabelled
    orders, batches = common.draw_batches(state, data, sizes)
    unlabelled, labelled = batches["unlabelled"], batches["labelled"]
    g, d, c = state.g, state.d, state.c
    x_l, y_l, x_u = labelled["image"], labelled["label"], unlabelled["image"]
    ids = step_lib.global_example_ids(local_batch)
    # Balanced labels for the generated pairs (G's, D's and R_P's batches).
    y_g = step_lib.global_example_ids(local_generated) % cfg.num_classes
    z = step_lib.sample_z(streams.key(d_key, "z"), local_generated, cfg.z_dim)
    fake = lax.stop_gradient(generate(g, g.params, z, y_g)[0])
    c_unlabelled_key = streams.key(c_key, "unlabelled")
    classify_key = streams.key(d_key, "classify")
    if cfg.adversarial == "reinforce":
      # C's unlabelled pass runs twice with one dropout key: here to draw the labels, and in
      # C's loss for their log-probabilities, which the score-function gradient needs from
      # the very distribution the labels were drawn from.
      c_logits_u, _ = classify(c, c.params, x_u, c_unlabelled_key)
      sample_key = streams.key(c_key, "sample")
      y_c = jax.vmap(lambda i, x: jax.random.categorical(jax.random.fold_in(sample_key, i), x))(
          ids, lax.stop_gradient(c_logits_u)
      )  # example i's label depends on its index in the global batch only
    else:  # the authors' code: C's most likely label, from a pass of D's update
      y_c = argmax_labels(c, x_u, streams.key(classify_key, "fake"))

    # D: labelled pairs are real (with `d_batches`, D's own labelled batch and unlabelled
    # images labelled by C's argmax, as in the authors' code); classifier-labelled and
    # generated pairs are fake.
    x_real, y_real = x_l, y_l
    if cfg.d_labelled:
      x_real, y_real = batches["d_labelled"]["image"], batches["d_labelled"]["label"]
    if cfg.d_unlabelled:
      x_du = batches["d_unlabelled"]["image"]
      y_du = argmax_labels(c, x_du, streams.key(classify_key, "real"))
      x_real, y_real = jnp.concatenate([x_real, x_du]), jnp.concatenate([y_real, y_du])
    d_keys = streams.keys(d_key, "labelled", "unlabelled", "fake")

    def d_loss_fn(params, c_params):
      params = with_trunk(params, c_params)
      real = discriminate(params, x_real, y_real, d_keys[0])
      classified = discriminate(params, x_u, y_c, d_keys[1])
      generated = discriminate(params, fake, y_g, d_keys[2])
      loss = discriminator_loss(real, classified, generated, cfg.alpha)
      return loss, (real, classified, generated)

    # With a shared trunk, L_D's gradient also reaches C's parameters (the trunk's part).
    argnums = (0, 1) if cfg.shared_trunk else 0
    (d_loss, (real, classified, generated)), grads = jax.value_and_grad(
        d_loss_fn, argnums, has_aux=True
    )(d.params, c.params)
    d_grads, trunk_grads = grads if cfg.shared_trunk else (grads, None)
    d_grads = lax.pmean(d_grads, step_lib.AXIS)
    d = d.apply_gradients(grads=d_grads)

    def update_c(c: TrainState, pseudo_images: jax.Array):
      """C: supervised, adversarial (against the new D), R_P on `pseudo_images` once on."""
      judge_key = streams.key(c_key, "judge")
      d_params = with_trunk(d.params, c.params)
      if cfg.adversarial == "reinforce":
        d_on_classified = discriminate(d_params, x_u, y_c, judge_key)
      c_keys = [streams.key(c_key, "labelled"), c_unlabelled_key, streams.key(c_key, "fake")]
      pseudo_weight = jnp.where(state.step >= cfg.pseudo_start, cfg.alpha_p, 0.0)
      # The Pi-model's second pass over x_u: its own noise, dropout and augmentation.
      pi_key = streams.key(c_key, "consistency")
      pi_weight = consistency_weight(
          state.step, cfg.consistency_weight, cfg.consistency_rampup_epochs, cfg.steps_per_epoch
      )
      adv_weight = cfg.alpha * cfg.adversarial_scale

      def c_loss_fn(params):
        logits_l, _ = classify(c, params, x_l, c_keys[0])
        logits_u, batch_stats = classify(c, params, x_u, c_keys[1])
        logits_g, _ = classify(c, params, pseudo_images, c_keys[2])
        sup = cross_entropy(logits_l, y_l)
        if cfg.adversarial == "reinforce":
          adv = classifier_adversarial_loss(
              logits_u, y_c, d_on_classified, adv_weight, step_lib.AXIS
          )
        else:
          y_top = jnp.argmax(lax.stop_gradient(logits_u), axis=-1)
          adv = argmax_adversarial_loss(
              logits_u, discriminate(d_params, x_u, y_top, judge_key), adv_weight
          )
        pseudo = cross_entropy(logits_g, y_g)
        ent, bal = entropy(logits_u), balance(logits_u, step_lib.AXIS)
        loss = sup + adv + pseudo_weight * pseudo
        loss += cfg.entropy_weight * ent + cfg.balance_weight * bal
        pi = jnp.zeros(())
        if cfg.consistency_weight:
          pi = consistency(logits_u, classify(c, params, x_u, pi_key)[0])
          loss += pi_weight * pi
        decay = jnp.zeros(())
        if cfg.classifier_weight_decay:  # the squared weights of C's output layer
          decay = jnp.sum(jnp.square(params[C.OUTPUT_LAYER]["kernel"]))
          loss += cfg.classifier_weight_decay * decay
        parts = {"loss_sup": sup, "loss_adv": adv, "loss_pseudo": pseudo, "entropy": ent}
        parts |= {"balance": bal, "consistency": pi, "weight_decay": decay}
        return loss, (batch_stats, parts, logits_l, logits_u)

      (c_loss, (c_batch_stats, parts, logits_l, logits_u)), c_grads = jax.value_and_grad(
          c_loss_fn, has_aux=True
      )(c.params)
      if cfg.shared_trunk:
        c_grads = jax.tree.map(lambda a, b: a + cfg.trunk_d_weight * b, c_grads, trunk_grads)
      c_grads = lax.pmean(c_grads, step_lib.AXIS)
      c = c.apply_gradients(grads=c_grads, batch_stats=c_batch_stats)
      metrics = {"c/loss": c_loss} | {f"c/{k}": v for k, v in parts.items()}
      if not cfg.classifier_weight_decay:
        del metrics["c/weight_decay"]
      metrics |= {
          "c/consistency_weight": pi_weight,
          "c/pseudo_weight": pseudo_weight,
          "c/train_acc": jnp.mean(jnp.argmax(logits_l, -1) == y_l),
          # The unlabelled batch's true labels are used for this number only (monitoring).
          "c/unlabelled_acc": jnp.mean(jnp.argmax(logits_u, -1) == unlabelled["label"]),
          "c/grad_norm": optax.tree.norm(c_grads),
      }
      return c, metrics

    def update_g(g: TrainState, c: TrainState):
      """G: non-saturating, against the new D (on `c`'s trunk if shared), fresh latents."""
      g_z = step_lib.sample_z(streams.key(g_key, "z"), local_generated, cfg.z_dim)
      g_pass_key = streams.key(g_key, "fake")

      def g_loss_fn(params):
        images, batch_stats = generate(g, params, g_z, y_g)
        logits = discriminate(with_trunk(d.params, c.params), images, y_g, g_pass_key)
        return jnp.mean(jax.nn.softplus(-logits)), (batch_stats, logits)

      (g_loss, (g_batch_stats, g_logits)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
          g.params
      )
      g_grads = lax.pmean(g_grads, step_lib.AXIS)
      g = g.apply_gradients(grads=g_grads, batch_stats=g_batch_stats)
      metrics = {
          "g/loss": g_loss,
          "g/grad_norm": optax.tree.norm(g_grads),
          "g/fake_logit": jnp.mean(g_logits),
      }
      return g, metrics

    if cfg.update_order == "dcg":  # C's R_P reuses D's generated pairs; then G
      c, c_metrics = update_c(c, fake)
      g, g_metrics = update_g(g, c)
    else:  # the authors' code: G, then C with R_P on fresh pairs from the new G
      g, g_metrics = update_g(g, c)
      z_p = step_lib.sample_z(streams.key(c_key, "z"), local_generated, cfg.z_dim)
      c, c_metrics = update_c(c, lax.stop_gradient(generate(g, g.params, z_p, y_g)[0]))

    c_decay = step_lib.ema_decay_at(state.step, cfg.classifier_ema_decay)
    new_state = state.replace(
        step=state.step + 1,
        g=g,
        d=d,
        c=c,
        g_ema=step_lib.ema_update(
            state.g_ema, g.params, step_lib.ema_decay_at(state.step, cfg.ema_decay)
        ),
        c_ema=step_lib.ema_update(state.c_ema, c.params, c_decay),
        **orders,
    )
    if cfg.classifier_ema_stats:
      new_state = new_state.replace(
          c_ema_stats=step_lib.ema_update(state.c_ema_stats, c.batch_stats, c_decay)
      )
    metrics = {f"d/{k}": v for k, v in step_lib.d_metrics(d_loss, real, generated, d_grads).items()}
    metrics |= {"d/classified_acc": jnp.mean(classified < 0)} | c_metrics | g_metrics
    return step_lib.finish_step(cfg, state, new_state, metrics)

  return train_step


def create_state(
    config: ml_collections.ConfigDict,
    G: nn.Module,
    D: nn.Module,
    C: nn.Module,
    images: np.ndarray,
    num_labelled: int,
) -> GANState:
  """Initialises the three players; weight norms from a batch of training images.

  With `config.semi.zca`, C's whitening is fitted here first (on the first
  `zca_images` training images, all if 0), so C's data-dependent initialisation
  sees whitened images. With `config.semi.shared_trunk`, D's state leaves out
  the trunk, which lives in C's (see the module docstring).
  """
  rng = jax.random.PRNGKey(config.seed)
  keys = streams.keys(
      streams.key(rng, "init"), "z", "labels", "g_init", "d_init", "noise", "c_init"
  )
  n, num_classes = config.semi.init_batch, config.semi.num_classes
  z = jax.random.normal(keys[0], (n, config.model.z_dim))
  y = jax.random.randint(keys[1], (n,), 0, num_classes)
  x = common.init_images(config, images)
  g_vars = G.init(keys[2], z, train=False, y=y)
  # Outside the mapped step there is no device axis: initialise copies without one.
  d_rngs = {"params": keys[3], "noise": keys[4], "dropout": keys[4]}
  d_vars = D.clone(axis_name=None).init(d_rngs, x, True, y=y)
  c_kwargs = {}
  if config.semi.get("zca"):
    num = config.semi.get("zca_images", 0) or len(images)
    c_kwargs["whitening"] = whitening.fit_zca(images[:num])
  c_vars = C.clone(axis_name=None).init(keys[5], x, train=False, **c_kwargs)
  if config.semi.get("shared_trunk"):
    trunks = [v["params"].get(shared_trunk.TRUNK) for v in (c_vars, d_vars)]
    if None in trunks or jax.tree.map(jnp.shape, trunks[0]) != jax.tree.map(jnp.shape, trunks[1]):
      raise ConfigError(
          "semi.shared_trunk needs a classifier and a discriminator with the same trunk "
          "(model.classifier = model.discriminator = 'shared_trunk', one width)"
      )
    head = {k: v for k, v in d_vars["params"].items() if k != shared_trunk.TRUNK}
    d_vars = {**d_vars, "params": head}
  g = common.new_player(G, g_vars, config.optim.g, config.num_steps)
  c = common.new_player(C, c_vars, config.optim.c, config.num_steps)
  d_batches = config.semi.get("d_batches", {})
  walks = ["unlabelled", "labelled"]
  walks += [f"d_{name}" for name in ("labelled", "unlabelled") if d_batches.get(name, 0)]
  ema_stats = config.semi.get("classifier_ema_stats", False)
  return GANState(
      step=jnp.zeros((), jnp.int32),
      g=g,
      d=common.new_player(D, d_vars, config.optim.d, config.num_steps),
      g_ema=jax.tree.map(jnp.copy, g.params),
      rng=rng,
      c=c,
      c_ema=jax.tree.map(jnp.copy, c.params),
      c_ema_stats=jax.tree.map(jnp.copy, c.batch_stats) if ema_stats else None,
      **common.first_orders(rng, len(images), num_labelled, walks),
  )


def pretrain(
    config: ml_collections.ConfigDict,
    C: nn.Module,
    state: GANState,
    arrays: dict[str, np.ndarray],
    log: Callable[[str], None] = print,
) -> tuple[GANState, dict[str, Any]]:
  """Trains C alone before the game (`config.semi.pretrain`; off when `steps` is 0).

  Triple-GAN's MNIST code pre-trains its classifier for 30 epochs with 100
  labels before the three players start: each step takes every labelled
  example (at most `config.batch_size`) and `unlabelled_batch` unlabelled
  images, and minimises C's supervised cross-entropy plus `entropy_weight`
  times the entropy of its predictions on the unlabelled batch plus
  `balance_weight` times the cross-entropy of the uniform distribution against
  their mean (and `weight_decay` times the squared kernel of C's output layer,
  which the code's pre-training loss also has), with an Adam of its own
  (`lr`, `b1`) whose state is then discarded. The unlabelled images are
  walked in seeded epoch permutations (their labels serve only the printed
  monitoring accuracy); no augmentation.
  The game starts from the pre-trained C and its running batch-norm
  statistics; C's EMA follows the pre-training, and the game's EMA then starts
  its warm-up from it (so within some tens of steps it tracks the game's C,
  where the paper's code keeps one 0.01-rate average throughout). G and D are
  untouched. The paper's code pre-trains only with at most 100 labels; here
  `steps` decides.

  Runs on one device before the state is replicated, identically in every
  process. Returns the new state and a summary (steps, seconds, final losses).
  """
  pre = config.semi.pretrain
  if not pre.steps:
    return state, {}
  start = time.perf_counter()
  C1 = C.clone(axis_name=None)  # one device, no data-parallel axis
  num_classes = config.semi.num_classes
  num_labelled = config.semi.labels_per_class * num_classes  # the tiled subset's first copy
  x_l_all = arrays["labelled_image"][:num_labelled]
  y_l_all = arrays["labelled_label"][:num_labelled]
  images, true_labels = arrays["image"], arrays["label"]
  l_batch, u_batch = min(config.batch_size, num_labelled), pre.unlabelled_batch
  tx = optax.adam(pre.lr, b1=pre.b1, b2=0.999, eps=1e-8)
  c = state.c
  carry = (c.params, c.batch_stats, tx.init(c.params), state.c_ema)
  key = streams.key(state.rng, "pretrain")

  @jax.jit
  def step(carry, x_l, y_l, x_u, y_u, t):
    params, batch_stats, opt_state, ema = carry
    k = jax.random.fold_in(key, t)

    def apply(p, x, k):
      rngs = {"dropout": streams.key(k, "dropout"), "noise": streams.key(k, "noise")}
      variables = {"params": p, "batch_stats": batch_stats} if batch_stats else {"params": p}
      return C1.apply(
          variables, data_lib.to_float(x), train=True, rngs=rngs, mutable=["batch_stats"]
      )

    def loss_fn(p):
      logits_l, _ = apply(p, x_l, streams.key(k, "labelled"))
      logits_u, mutated = apply(p, x_u, streams.key(k, "unlabelled"))
      sup, ent, bal = cross_entropy(logits_l, y_l), entropy(logits_u), balance(logits_u)
      loss = sup + pre.entropy_weight * ent + pre.balance_weight * bal
      if weight_decay := pre.get("weight_decay", 0.0):
        loss += weight_decay * jnp.sum(jnp.square(p[C.OUTPUT_LAYER]["kernel"]))
      acc_u = jnp.mean(jnp.argmax(logits_u, -1) == y_u)
      return loss, (mutated.get("batch_stats", {}), sup, ent, bal, acc_u)

    (loss, (batch_stats, *parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = step_lib.ema_update(
        ema, params, step_lib.ema_decay_at(t, config.semi.classifier_ema_decay)
    )
    return (params, batch_stats, opt_state, ema), (loss, *parts)

  rng = np.random.default_rng([config.seed, streams.STREAMS["pretrain"]])
  unlabelled_batches = _epoch_batches(rng, len(images), u_batch)
  labelled_batches = _epoch_batches(rng, num_labelled, l_batch)
  log_every = max(1, pre.steps // 10)
  for t in range(pre.steps):
    u, lab = next(unlabelled_batches), next(labelled_batches)
    x_l, y_l, x_u, y_u = x_l_all[lab], y_l_all[lab], images[u], true_labels[u]
    carry, values = step(carry, x_l, y_l, x_u, y_u, jnp.int32(t))
    if (t + 1) % log_every == 0 or t + 1 == pre.steps:
      loss, sup, ent, bal, acc_u = (float(v) for v in values)
      log(
          f"pre-training C: step {t + 1}/{pre.steps}, loss {loss:.4f} (supervised {sup:.4f}, "
          f"entropy {ent:.4f}, balance {bal:.4f}), unlabelled batch accuracy {acc_u:.3f}"
      )
  params, batch_stats, _, ema = carry
  summary = {
      "steps": pre.steps,
      "seconds": round(time.perf_counter() - start, 1),
      "loss": loss,
      "supervised": sup,
      "entropy": ent,
      "balance": bal,
      "unlabelled_batch_accuracy": acc_u,
  }
  state = state.replace(c=c.replace(params=params, batch_stats=batch_stats), c_ema=ema)
  if state.c_ema_stats is not None:  # the game's average of the statistics starts from these
    state = state.replace(c_ema_stats=jax.tree.map(jnp.copy, batch_stats))
  return state, summary


def _epoch_batches(rng: np.random.Generator, n: int, batch: int) -> Iterator[np.ndarray]:
  """Index batches walking seeded permutations of range(n), epoch after epoch."""
  queue = np.empty(0, np.int64)
  while True:
    while len(queue) < batch:
      queue = np.concatenate([queue, rng.permutation(n)])
    yield queue[:batch]
    queue = queue[batch:]


def classifier(C: nn.Module, state: Any, average: bool = True) -> tuple[nn.Module, dict[str, Any]]:
  """(module, variables) of the EMA classifier, or with `average=False` of C itself.

  The EMA's batch-norm statistics are their average where the run keeps one
  (`semi.classifier_ema_stats`), else the raw classifier's running statistics.
  """
  c = field(state, "c")
  raw_stats = field(c, "batch_stats")
  if not average:
    return C, {"params": field(c, "params"), "batch_stats": raw_stats}
  stats = state.get("c_ema_stats") if isinstance(state, Mapping) else state.c_ema_stats
  return C, {"params": field(state, "c_ema"), "batch_stats": raw_stats if stats is None else stats}
