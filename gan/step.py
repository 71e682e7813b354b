"""The training step: n_critic discriminator updates, then one generator update.

`make_train_step` returns a pure per-device function
`train_step(state, data) -> (state, metrics)` written with collectives over
the named axis "data". It is wrapped once, outside the loop, either by
`pmap_step` (one program per local device, state replicated and donated) or by
`shard_map_step` (the same function under `jax.shard_map` over a mesh, with
unreplicated state, also donated); both give the same numbers. The loop picks
one with `config.parallel` (`gan.parallel`).

Results do not depend on the number of devices: gradients and metrics are
averaged with `lax.pmean`, batch-norm statistics are averaged over the axis,
and every random number (z, labels, dropout masks, augmentations, the data
order) is a function of the step and of the example's index in the global
batch.

Every training-mode pass of D (on reals, fakes, WGAN-GP's interpolates, and
on fakes in G's update) applies it with "batch_stats" mutable and threads the
result into the next pass, so spectral normalisation's power-iteration
vectors advance once per pass (as PyTorch's `spectral_norm` hook does in
every training-mode forward call) and a batch-norm D keeps running
statistics; the step stores the last state in `state.d`. Outside
the step (samples, evaluators, the health monitor's probes) D runs with
train=False and reads that state without writing it.

The stabilisers (penalties, DiffAugment, conditioning and the AC-GAN loss)
and their config keys are listed in `GANStepConfig`; learning rates and their
decay are `gan.state.make_optimizer`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gan import augment, losses, penalties, streams
from gan.state import GANState, TrainState
from gan.utils import ConfigError

AXIS = "data"
Metrics = dict[str, jax.Array]
StepFn = Callable[[GANState, dict[str, jax.Array]], tuple[GANState, Metrics]]
# Draws a step's data batch on the devices: (data, perm, key, step, global_batch, axis_name)
# -> (new perm, batch); one per dataset (`gan.data.batch_fn`), handed to the step.
BatchFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommonStepConfig:
  """The settings every method's step has, read once from the experiment config."""

  global_batch: int
  z_dim: int
  ema_decay: float
  health_signals: bool = True  # update ratios and the finiteness flag (config.health.enabled)
  guard_nonfinite: bool = True

  @staticmethod
  def common(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of the common fields."""
    health = config.get("health", {})
    return {
        "global_batch": config.batch_size,
        "z_dim": config.model.z_dim,
        "ema_decay": config.ema_decay,
        "health_signals": health.get("enabled", True),
        "guard_nonfinite": health.get("guard_nonfinite", True),
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANStepConfig(CommonStepConfig):
  """The static settings of a GAN step.

  Attributes (the config key in brackets, top level unless it says `model.`;
  a missing key takes the default, which switches the feature off):
    n_critic: D updates per G update [n_critic].
    loss: the adversarial loss [loss].
    label_smoothing: one-sided label smoothing [label_smoothing].
    r1_gamma: gamma of the R1 penalty gamma/2 E ||grad_x D(x)||^2 on real data
      [r1_gamma, 0.0].
    r1_every: lazy regularisation (Karras et al. 2020, StyleGAN2): R1 only in
      every k-th D update (D's step 0, k, 2k, ...) with weight k * gamma, the
      same penalty on average for 1/k of its cost [r1_every, 1].
    gp_weight: lambda of the WGAN-GP penalty lambda E (||grad D(x^)|| - 1)^2
      at random interpolates x^ of real and fake images [gp_weight, 0.0].
    diffaugment: DiffAugment operations applied to every image D sees in
      training, e.g. ("color", "translation", "cutout") [diffaugment, ""].
    g_classes: K of a conditional G; fakes are made from uniformly sampled
      labels [model.g.num_classes, 0].
    d_classes: K of a conditional D (projection and/or AC head), which is
      given real labels with reals and the sampled labels with fakes; needs
      g_classes = d_classes [model.d.num_classes, 0].
    ac_head: D also returns class logits; their cross-entropy, weighted by
      ac_weight, joins D's loss on reals and fakes and G's loss on fakes
      (AC-GAN, Odena et al. 2017) [model.d.ac_head, False].
    ac_weight: [ac_weight, 1.0].
    minibatch_std: D's minibatch standard-deviation group size; the
      per-device batch must be a multiple of it [model.d.minibatch_std, 0].
    batch_fn: draws the data batch inside the step (`gan.data.batch_fn` of the dataset).

  A population sweep (`gan.sweep`) replaces label_smoothing, r1_gamma,
  gp_weight, ac_weight or ema_decay by traced arrays, one value per member;
  a penalty whose weight is an array is computed for every member (a member
  with weight 0 adds 0 x the penalty).
  """

  n_critic: int
  loss: losses.GANLoss
  label_smoothing: float
  r1_gamma: float = 0.0
  r1_every: int = 1
  gp_weight: float = 0.0
  diffaugment: tuple[str, ...] = ()
  g_classes: int = 0
  d_classes: int = 0
  ac_head: bool = False
  ac_weight: float = 1.0
  minibatch_std: int = 0
  batch_fn: BatchFn

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, batch_fn: BatchFn) -> GANStepConfig:
    g_classes = config.model.g.get("num_classes", 0)
    d_classes = config.model.d.get("num_classes", 0)
    if d_classes and g_classes != d_classes:
      raise ConfigError(
          f"a conditional D (model.d.num_classes={d_classes}) needs a G conditioned on the "
          f"same classes; model.g.num_classes is {g_classes}"
      )
    return cls(
        **cls.common(config),
        n_critic=config.n_critic,
        loss=losses.get(config.loss, config.label_smoothing),
        label_smoothing=config.label_smoothing,
        r1_gamma=config.get("r1_gamma", 0.0),
        r1_every=config.get("r1_every", 1),
        gp_weight=config.get("gp_weight", 0.0),
        diffaugment=augment.parse_policy(config.get("diffaugment", "")),
        g_classes=g_classes,
        d_classes=d_classes,
        ac_head=config.model.d.get("ac_head", False),
        ac_weight=config.get("ac_weight", 1.0),
        minibatch_std=config.model.d.get("minibatch_std", 0),
        batch_fn=batch_fn,
    )


def _penalised(weight: float | jax.Array) -> bool:
  """Whether a penalty is computed: its weight is nonzero, or traced (see `GANStepConfig`)."""
  return isinstance(weight, jax.Array) or bool(weight)


def global_example_ids(local_batch: int) -> jax.Array:
  """Indices of this device's examples within the global batch."""
  return lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)


def example_keys(key: jax.Array, local_batch: int) -> jax.Array:
  """One key per example of this device: `fold_in(key, i)` for its index i in the global batch."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(global_example_ids(local_batch))


def sample_z(key: jax.Array, local_batch: int, z_dim: int) -> jax.Array:
  """Standard-normal latents; example i of the global batch always gets the same z."""
  return jax.vmap(lambda k: jax.random.normal(k, (z_dim,)))(example_keys(key, local_batch))


def sample_labels(key: jax.Array, local_batch: int, num_classes: int) -> jax.Array:
  """Uniform class labels in [0, num_classes), drawn per example like `sample_z`."""
  keys = example_keys(key, local_batch)
  return jax.vmap(lambda k: jax.random.randint(k, (), 0, num_classes))(keys)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warm-up, min(decay, (1 + t) / (10 + t)), so early EMAs track the model."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(average: Any, new: Any, decay: jax.Array | float) -> Any:
  """One step of an exponential moving average of a parameter tree."""
  return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), average, new)


def update_ratio(new: Any, old: Any) -> jax.Array:
  """||new - old|| / ||old|| over a parameter tree: the relative size of an update."""
  delta = jax.tree.map(lambda n, o: n - o, new, old)
  return optax.tree.norm(delta) / (optax.tree.norm(old) + 1e-12)


# Metrics that must be finite for a step to be applied (see `finish_step`): every
# player's losses, gradient norms and update ratios (the ratios catch parameters that
# an update made non-finite, e.g. with a NaN learning rate).
_FINITE_SUFFIXES = ("/loss", "/grad_norm", "/update_ratio")


def d_metrics(loss, real: jax.Array, fake: jax.Array, grads: Any) -> Metrics:
  """D's loss, accuracies, mean logits and probabilities on real/fake, gradient norm."""
  return {
      "loss": loss,
      "real_acc": jnp.mean(real > 0),
      "fake_acc": jnp.mean(fake < 0),
      "real_logit": jnp.mean(real),
      "fake_logit": jnp.mean(fake),
      "real_prob": jnp.mean(jax.nn.sigmoid(real)),
      "fake_prob": jnp.mean(jax.nn.sigmoid(fake)),
      "grad_norm": optax.tree.norm(grads),
  }


class StepFunctions(NamedTuple):
  """The players' passes and losses of one update, per device (under the named axis AXIS).

  generate(g, params, z, y) -> (images, G's new batch_stats); y is None for an
    unconditional G.
  d_loss(params, d, real, real_y, fake, fake_y, real_key, fake_key) ->
    (loss, (real_logits, fake_logits, aux metrics, D's new batch_stats)); D's
    loss as a function of its `params`, with its other variables from the
    TrainState `d`; labels are None for an unconditional D.
  g_loss(params, g, d, z, y, key) -> (loss, (fake_logits, aux metrics,
    G's new batch_stats, D's new batch_stats)); G's loss as a function of `params`.
  """

  generate: Callable[..., tuple[jax.Array, Any]]
  d_loss: Callable[..., tuple[jax.Array, Any]]
  g_loss: Callable[..., tuple[jax.Array, Any]]


def make_step_functions(cfg: GANStepConfig, G: nn.Module, D: nn.Module) -> StepFunctions:
  """Builds the passes and losses that `make_train_step` differentiates."""

  def generate(g: TrainState, params: Any, z: jax.Array, y: jax.Array | None):
    labels = {"y": y} if cfg.g_classes else {}
    fake, mutated = G.apply(g.variables(params), z, train=True, mutable=["batch_stats"], **labels)
    return fake, mutated.get("batch_stats", {})

  def discriminate(params: Any, batch_stats: Any, x: jax.Array, y: jax.Array | None, key):
    """D in training mode on DiffAugment(x): logits, class logits (or None), new batch_stats."""
    if cfg.diffaugment:
      keys = example_keys(streams.key(key, "augment"), x.shape[0])
      x = augment.diff_augment(x, cfg.diffaugment, keys)
    variables = {"params": params} | ({"batch_stats": batch_stats} if batch_stats else {})
    labels = {"y": y} if cfg.d_classes else {}
    out, mutated = D.apply(
        variables,
        x,
        train=True,
        rngs={"dropout": streams.key(key, "dropout")},
        mutable=["batch_stats"],
        **labels,
    )
    logits, class_logits = out if cfg.ac_head else (out, None)
    return logits, class_logits, mutated.get("batch_stats", {})

  def r1_pass(on_real: Callable, real: jax.Array, d_step: jax.Array):
    """D on the reals and the R1 penalty (0 in the updates that lazy regularisation skips)."""

    def penalised():
      logits, aux, grad = penalties.input_gradient(on_real, real)
      return logits, aux, penalties.r1(grad)

    def skipped():
      logits, aux = on_real(real)
      return logits, aux, jnp.zeros((), logits.dtype)

    if cfg.r1_every == 1:
      return penalised()
    return lax.cond(d_step % cfg.r1_every == 0, penalised, skipped)

  def d_loss(params, d: TrainState, real, real_y, fake, fake_y, real_key, fake_key):
    aux = {}

    def on_real(x):
      logits, class_logits, batch_stats = discriminate(params, d.batch_stats, x, real_y, real_key)
      return logits, (class_logits, batch_stats)

    if _penalised(cfg.r1_gamma):
      real_logits, (real_classes, batch_stats), aux["r1"] = r1_pass(on_real, real, d.step)
    else:
      real_logits, (real_classes, batch_stats) = on_real(real)
    fake_logits, fake_classes, batch_stats = discriminate(
        params, batch_stats, fake, fake_y, fake_key
    )
    loss = cfg.loss.d(real_logits, fake_logits, cfg.label_smoothing)
    if _penalised(cfg.r1_gamma):
      loss = loss + 0.5 * cfg.r1_gamma * cfg.r1_every * aux["r1"]
    if _penalised(cfg.gp_weight):
      # Interpolates are judged with the real images' labels.
      pass_key = streams.key(real_key, "interpolate")
      mix_key = streams.key(pass_key, "mix")
      mixed = penalties.interpolate(real, fake, example_keys(mix_key, real.shape[0]))

      def on_mixed(x):
        logits, _, new_stats = discriminate(params, batch_stats, x, real_y, pass_key)
        return logits, new_stats

      _, batch_stats, grad = penalties.input_gradient(on_mixed, mixed)
      aux["gp"] = penalties.gradient_penalty(grad)
      loss = loss + cfg.gp_weight * aux["gp"]
    if cfg.ac_head:
      aux["ac_loss"] = losses.classification(real_classes, real_y) + losses.classification(
          fake_classes, fake_y
      )
      aux["real_class_acc"] = jnp.mean(jnp.argmax(real_classes, axis=-1) == real_y)
      aux["fake_class_acc"] = jnp.mean(jnp.argmax(fake_classes, axis=-1) == fake_y)
      loss = loss + cfg.ac_weight * aux["ac_loss"]
    return loss, (real_logits, fake_logits, aux, batch_stats)

  def g_loss(params, g: TrainState, d: TrainState, z, y, key):
    fake, g_stats = generate(g, params, z, y)
    fake_logits, fake_classes, d_stats = discriminate(d.params, d.batch_stats, fake, y, key)
    loss = cfg.loss.g(fake_logits)
    aux = {}
    if cfg.ac_head:
      aux["ac_loss"] = losses.classification(fake_classes, y)
      loss = loss + cfg.ac_weight * aux["ac_loss"]
    return loss, (fake_logits, aux, g_stats, d_stats)

  return StepFunctions(generate, d_loss, g_loss)


def make_train_step(cfg: GANStepConfig, G: nn.Module, D: nn.Module) -> StepFn:
  """Builds the per-device step for generator `G` and discriminator `D`."""
  fns = make_step_functions(cfg, G, D)

  def latents(key: jax.Array, local_batch: int) -> tuple[jax.Array, jax.Array | None]:
    """z and, for a conditional G, the labels of this device's fakes."""
    if not cfg.g_classes:
      return sample_z(key, local_batch, cfg.z_dim), None
    z_key, label_key = streams.keys(key, "z", "labels")
    return sample_z(z_key, local_batch, cfg.z_dim), sample_labels(
        label_key, local_batch, cfg.g_classes
    )

  def d_update(g: TrainState, d: TrainState, batch: dict[str, jax.Array], key: jax.Array):
    z_key, real_key, fake_key = streams.keys(key, "z", "real", "fake")
    real = batch["image"]
    z, fake_y = latents(z_key, real.shape[0])
    fake, batch_stats = fns.generate(g, g.params, z, fake_y)
    fake = lax.stop_gradient(fake)
    real_y = batch["label"] if cfg.d_classes else None
    (loss, (real_logits, fake_logits, aux, d_stats)), grads = jax.value_and_grad(
        fns.d_loss, has_aux=True
    )(d.params, d, real, real_y, fake, fake_y, real_key, fake_key)
    grads = lax.pmean(grads, AXIS)
    metrics = d_metrics(loss, real_logits, fake_logits, grads) | aux
    d = d.apply_gradients(grads=grads, batch_stats=d_stats)
    return d, g.replace(batch_stats=batch_stats), metrics

  def g_update(g: TrainState, d: TrainState, local_batch: int, key: jax.Array):
    z_key, pass_key = streams.keys(key, "z", "fake")
    z, y = latents(z_key, local_batch)
    (loss, (fake_logits, aux, g_stats, d_stats)), grads = jax.value_and_grad(
        fns.g_loss, has_aux=True
    )(g.params, g, d, z, y, pass_key)
    grads = lax.pmean(grads, AXIS)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "fake_logit": jnp.mean(fake_logits),
    } | aux
    g = g.apply_gradients(grads=grads, batch_stats=g_stats)
    return g, d.replace(batch_stats=d_stats), metrics

  def train_step(state: GANState, data: dict[str, jax.Array]) -> tuple[GANState, Metrics]:
    local_batch = cfg.global_batch // lax.axis_size(AXIS)
    if cfg.minibatch_std and local_batch % cfg.minibatch_std:
      raise ConfigError(
          f"model.d.minibatch_std={cfg.minibatch_std} needs a per-device batch that is a "
          f"multiple of it, got {local_batch}"
      )
    critic_key, g_key = streams.keys(streams.step_key(state.rng, state.step), "critic", "generator")

    # A Python loop, not lax.fori_loop: XLA:CPU runs the same updates several times
    # slower inside a while loop (benchmarks/README.md). n_critic is small, so
    # unrolling costs only compile time.
    g, d, perm = state.g, state.d, state.data_perm
    data_key = streams.key(state.rng, "data")
    for i in range(cfg.n_critic):
      perm, batch = cfg.batch_fn(data, perm, data_key, d.step, cfg.global_batch, AXIS)
      d, g, d_metrics = d_update(g, d, batch, jax.random.fold_in(critic_key, i))
    g, d, g_metrics = g_update(g, d, local_batch, g_key)

    decay = ema_decay_at(state.step, cfg.ema_decay)
    g_ema = ema_update(state.g_ema, g.params, decay)
    new_state = state.replace(step=state.step + 1, g=g, d=d, g_ema=g_ema, data_perm=perm)
    metrics = {f"d/{k}": v for k, v in d_metrics.items()}
    metrics |= {f"g/{k}": v for k, v in g_metrics.items()}
    return finish_step(cfg, state, new_state, metrics)

  return train_step


def finish_step(
    cfg: CommonStepConfig, state: GANState, new_state: GANState, metrics: Metrics
) -> tuple[GANState, Metrics]:
  """The common end of every method's step: health signals, device-averaged metrics, guard.

  Adds the players' update ratios, averages the metrics over the devices and,
  with `cfg.guard_nonfinite`, drops the whole update of a step whose losses,
  gradient norms or updates are not finite, or that wrote a non-finite value
  anywhere in the state (the EMAs, batch statistics, optimizer moments): only
  the step counter advances, so NaN/inf never reaches a saved state.
  """
  if cfg.health_signals:
    for name in state.players:
      old, new = getattr(state, name).params, getattr(new_state, name).params
      metrics[f"{name}/update_ratio"] = update_ratio(new, old)
  metrics = lax.pmean(metrics, AXIS)  # identical on every device from here on
  if not (cfg.health_signals or cfg.guard_nonfinite):
    return new_state, metrics
  checked = [k for k in metrics if k.endswith(_FINITE_SUFFIXES)]
  finite = jnp.all(jnp.stack([jnp.isfinite(metrics[k]) for k in checked]))
  floats = [x for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  # The state is the same on every device (replicated), and so is this verdict.
  finite &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats]))
  metrics["health/finite"] = finite.astype(jnp.float32)
  if cfg.guard_nonfinite:
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = kept.replace(step=new_state.step)
  return new_state, metrics


def pmap_step(train_step: StepFn, devices: list[jax.Device] | None = None) -> StepFn:
  """One program per device (default: all local ones); state and data carry a device axis."""
  return jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def shard_map_step(train_step: StepFn, mesh: Mesh) -> StepFn:
  """The same per-device function under `jax.shard_map` (pmap's successor).

  State and data are passed unreplicated (replicated over the mesh); each
  device runs `train_step` on its share of the batch exactly as under pmap.
  """
  mapped = jax.shard_map(
      train_step, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()), check_vma=False
  )
  return jax.jit(mapped, donate_argnums=(0,))


def make_sample_fn(G: nn.Module) -> Callable[[TrainState, Any, jax.Array], jax.Array]:
  """Jitted generator in inference mode (running batch-norm statistics)."""

  @jax.jit
  def sample(g: TrainState, params: Any, z: jax.Array) -> jax.Array:
    return G.apply(g.variables(params), z, train=False)

  return sample
