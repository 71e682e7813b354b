"""The training step: n_critic discriminator updates, then one generator update.

`make_train_step` returns a pure per-device function
`train_step(state, data) -> (state, metrics)` written with collectives over
the named axis "data". It is wrapped once, outside the loop, either by
`pmap_step` (one program per local device, state replicated and donated) or by
`shard_map_step` (the same function under `jax.shard_map` over a mesh, with
unreplicated state); both give the same numbers.

Results do not depend on the number of devices: gradients and metrics are
averaged with `lax.pmean`, batch-norm statistics are averaged over the axis,
and every random number (z, dropout masks, the data order) is a function of
the step and of the example's index in the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gan import data as data_lib
from gan import losses
from gan.state import GANState, TrainState, data_key

AXIS = "data"
Metrics = dict[str, jax.Array]
StepFn = Callable[[GANState, dict[str, jax.Array]], tuple[GANState, Metrics]]


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
class StepConfig(CommonStepConfig):
  """The static settings of a GAN step."""

  n_critic: int
  loss: losses.GANLoss
  label_smoothing: float
  r1_gamma: float
  batch_fn: data_lib.BatchFn

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> StepConfig:
    return cls(
        **cls.common(config),
        n_critic=config.n_critic,
        loss=losses.get(config.loss, config.label_smoothing),
        label_smoothing=config.label_smoothing,
        r1_gamma=config.get("r1_gamma", 0.0),
        batch_fn=data_lib.batch_fn(config.dataset),
    )


def global_example_ids(local_batch: int) -> jax.Array:
  """Indices of this device's examples within the global batch."""
  return lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)


def sample_z(key: jax.Array, local_batch: int, z_dim: int) -> jax.Array:
  """Standard-normal latents; example i of the global batch always gets the same z."""
  ids = global_example_ids(local_batch)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(ids)


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


def make_train_step(cfg: StepConfig, G: nn.Module, D: nn.Module) -> StepFn:
  """Builds the per-device step for generator `G` and discriminator `D`."""

  def generate(g: TrainState, params: Any, z: jax.Array):
    fake, mutated = G.apply(g.variables(params), z, train=True, mutable=["batch_stats"])
    return fake, mutated.get("batch_stats", {})

  def discriminate(d: TrainState, params: Any, x: jax.Array, key: jax.Array) -> jax.Array:
    return D.apply(d.variables(params), x, train=True, rngs={"dropout": key})

  def d_update(g: TrainState, d: TrainState, real: jax.Array, key: jax.Array):
    z_key, real_key, fake_key = jax.random.split(key, 3)
    fake, batch_stats = generate(g, g.params, sample_z(z_key, real.shape[0], cfg.z_dim))
    fake = lax.stop_gradient(fake)

    def loss_fn(params):
      aux = {}
      if cfg.r1_gamma:
        # R1 (Mescheder et al. 2018): gamma/2 E ||grad_x D(x)||^2 on real data.
        real_logits, d_real_vjp = jax.vjp(lambda x: discriminate(d, params, x, real_key), real)
        (input_grad,) = d_real_vjp(jnp.ones_like(real_logits))
        aux["r1"] = jnp.mean(jnp.sum(input_grad.reshape(real.shape[0], -1) ** 2, axis=1))
      else:
        real_logits = discriminate(d, params, real, real_key)
      fake_logits = discriminate(d, params, fake, fake_key)
      loss = cfg.loss.d(real_logits, fake_logits, cfg.label_smoothing)
      if cfg.r1_gamma:
        loss = loss + 0.5 * cfg.r1_gamma * aux["r1"]
      return loss, (real_logits, fake_logits, aux)

    (loss, (real_logits, fake_logits, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        d.params
    )
    grads = lax.pmean(grads, AXIS)
    metrics = d_metrics(loss, real_logits, fake_logits, grads) | aux
    return d.apply_gradients(grads=grads), g.replace(batch_stats=batch_stats), metrics

  def g_update(g: TrainState, d: TrainState, local_batch: int, key: jax.Array):
    z_key, dropout_key = jax.random.split(key)
    z = sample_z(z_key, local_batch, cfg.z_dim)

    def loss_fn(params):
      fake, batch_stats = generate(g, params, z)
      fake_logits = discriminate(d, d.params, fake, dropout_key)
      return cfg.loss.g(fake_logits), (batch_stats, fake_logits)

    (loss, (batch_stats, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g.params)
    grads = lax.pmean(grads, AXIS)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "fake_logit": jnp.mean(fake_logits),
    }
    return g.apply_gradients(grads=grads, batch_stats=batch_stats), metrics

  def train_step(state: GANState, data: dict[str, jax.Array]) -> tuple[GANState, Metrics]:
    local_batch = cfg.global_batch // lax.axis_size(AXIS)
    step_key = jax.random.fold_in(jax.random.fold_in(state.rng, 0x57E9), state.step)
    d_keys_root, g_key = jax.random.split(step_key)

    # A Python loop, not lax.fori_loop: on XLA:CPU the same updates inside a
    # while loop ran 4.5x slower (1260 vs 279 ms per MNIST step at batch 64,
    # benchmarks/README.md). n_critic is small, so unrolling costs only compile time.
    g, d, perm = state.g, state.d, state.data_perm
    for i in range(cfg.n_critic):
      perm, batch = cfg.batch_fn(data, perm, data_key(state.rng), d.step, cfg.global_batch, AXIS)
      d, g, d_metrics = d_update(g, d, batch["image"], jax.random.fold_in(d_keys_root, i))
    g, g_metrics = g_update(g, d, local_batch, g_key)

    decay = ema_decay_at(state.step, cfg.ema_decay)
    g_ema = ema_update(state.g_ema, g.params, decay)
    new_state = state.replace(step=state.step + 1, g=g, d=d, g_ema=g_ema, data_perm=perm)
    metrics = {f"d/{k}": v for k, v in d_metrics.items()}
    metrics |= {f"g/{k}": v for k, v in g_metrics.items()}
    return finish_step(cfg, state, new_state, metrics)

  return train_step


def finish_step(
    cfg: StepConfig, state: GANState, new_state: GANState, metrics: Metrics
) -> tuple[GANState, Metrics]:
  """The common end of every method's step: health signals, device-averaged metrics, guard.

  Adds the players' update ratios, averages the metrics over the devices and,
  with `cfg.guard_nonfinite`, drops the whole update of a step whose losses,
  gradient norms or updates are not finite (only the step counter advances),
  so NaN/inf never reaches the parameters or the optimizer state.
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
