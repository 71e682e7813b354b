"""The one immutable training state, its construction and the players' optimizers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from gan import data as data_lib
from gan import ramps, streams
from gan.utils import ConfigError


class TrainState(train_state.TrainState):
  """One player's parameters, optimizer state and non-trained variables (batch-norm stats)."""

  batch_stats: Any = flax.struct.field(default_factory=dict)

  def variables(self, params: Any | None = None) -> dict[str, Any]:
    """Variables for `apply_fn`, optionally with other `params` (e.g. the EMA copy)."""
    variables = {"params": self.params if params is None else params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    return variables


@flax.struct.dataclass
class GANState:
  """Everything a run needs to continue bit-identically; saved whole in checkpoints.

  Attributes:
    step: generator updates done so far.
    g: the generator's TrainState.
    d: the discriminator's TrainState; `d.step` counts D updates, which is
      also the number of data batches consumed.
    g_ema: exponential moving average of the generator's parameters, used for
      samples and evaluation.
    rng: the run's base key. Every random number of a step is derived from it
      with `fold_in` on the step and the example index, never split forward.
    data_perm: the current epoch's data order (see `gan.data.next_batch`).

  Semi-supervised methods (`gan.semi`) also use:
    c: the classifier's TrainState (Triple-GAN's third player).
    c_ema: exponential moving average of the classifier's parameters (of D's
      for Improved-GAN, whose discriminator is the classifier): the test error
      is measured with these.
    labelled_perm: the current epoch's order of the labelled subset.
    d_perms: the orders of D's own batches ({"d_unlabelled": ..., "d_labelled": ...}),
      when D's batches differ from C's (Triple-GAN's `semi.d_batches`).
    c_ema_stats: exponential moving average of the classifier's batch-norm
      statistics, when they are averaged too (`semi.classifier_ema_stats`).
  They are None (no leaves) otherwise, so plain GAN checkpoints are unchanged.
  """

  step: jax.Array
  g: TrainState
  d: TrainState
  g_ema: Any
  rng: jax.Array
  data_perm: jax.Array
  c: TrainState | None = None
  c_ema: Any = None
  labelled_perm: jax.Array | None = None
  d_perms: dict[str, jax.Array] | None = None
  c_ema_stats: Any = None

  @property
  def players(self) -> tuple[str, ...]:
    """The names of the trained players: ("g", "d") or ("g", "d", "c")."""
    return ("g", "d") if self.c is None else ("g", "d", "c")


def field(tree: Any, name: str) -> Any:
  """`tree.name` of a state object, or `tree[name]` of the dict a checkpoint restores to."""
  return tree[name] if isinstance(tree, Mapping) else getattr(tree, name)


def learning_rate(optim: ml_collections.ConfigDict, num_steps: int) -> float | optax.Schedule:
  """A player's learning rate: `optim.lr`, or a schedule of the update's index t (from 0).

  `optim.decay="linear"` decays the rate to 0 over `num_steps`, holding it until
  `optim.decay_start` (default 0) if set (Improved-GAN's CIFAR-10 code: constant for
  800 epochs, then linearly to 0 over the last 400). "exponential" gives update t
  the rate lr * decay_rate**((t - decay_start) // decay_every) once t >= decay_start
  (Triple-GAN's per-epoch annealing): the first lowered rate is at decay_start +
  decay_every.
  """
  decay = optim.get("decay", "none")
  if decay == "none":
    return optim.lr
  if decay == "linear":
    start = optim.get("decay_start", 0)
    if not 0 <= start < num_steps:
      raise ConfigError(f"optim.decay_start={start} must lie in [0, num_steps={num_steps})")
    return optax.linear_schedule(optim.lr, 0.0, num_steps - start, transition_begin=start)
  if decay == "exponential":
    return optax.exponential_decay(
        optim.lr,
        transition_steps=optim.decay_every,
        decay_rate=optim.decay_rate,
        transition_begin=optim.decay_start,
        staircase=True,
    )
  raise ConfigError(f"unknown learning-rate decay {decay!r}; use 'none', 'linear' or 'exponential'")


def make_optimizer(
    optim: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
  """Adam for one player, at `learning_rate(optim, num_steps)`.

  `optim.b1_rampdown` (start_epoch, epochs, steps_per_epoch, final) ramps
  beta1 down from `optim.b1` to `final` (Triple-GAN's CIFAR-10 classifier).

  `optim.eps` (default 1e-8) is added to Adam's denominator, `optim.eps_root`
  (default 0) under its square root: update = m / (sqrt(v + eps_root) + eps).
  Some papers' code used the second form (Improved-GAN: eps_root 1e-8, eps 0),
  which damps the steps of parameters whose gradients are below ~1e-4 instead
  of scaling them up to full size.

  `optim.clear_nans` (default False) sets NaN gradient entries to 0 before
  Adam, so one NaN does not reach the moments or the parameters (the
  `robust_adam` of Triple-GAN's CIFAR-10 code clears NaNs after each update
  instead; here the step's guard then finds nothing to drop).

  The updates are then multiplied by a scale held in the optimizer state (1 at
  the start), so the health monitor's remedy can lower a learning rate in a
  running or restored state without recompiling (`scale_learning_rates`).
  """
  rate = learning_rate(optim, num_steps)
  args = {"b2": optim.b2, "eps": optim.get("eps", 1e-8), "eps_root": optim.get("eps_root", 0.0)}
  if ramp := optim.get("b1_rampdown"):
    # beta1 falls from optim.b1 to ramp.final with Laine & Aila's ramp-down (`gan.ramps`);
    # Adam's bias correction uses the current beta1, as their code's does.
    def b1(count: jax.Array) -> jax.Array:
      r = ramps.rampdown(count, ramp.start_epoch, ramp.epochs, ramp.steps_per_epoch)
      return r * optim.b1 + (1.0 - r) * ramp.final

    adam = optax.inject_hyperparams(optax.adam)(rate, b1=b1, **args)
  else:
    adam = optax.adam(rate, b1=optim.b1, **args)
  if optim.get("clear_nans", False):  # nested: the state stays (Adam's, the scale's)
    adam = optax.chain(optax.zero_nans(), adam)
  return optax.chain(adam, optax.inject_hyperparams(optax.scale)(step_size=1.0))


def schedule_steps(config: ml_collections.ConfigDict) -> dict[str, int]:
  """The length of each player's learning-rate schedule: D takes n_critic updates per G step."""
  return {"g": config.num_steps, "d": config.num_steps * config.n_critic}


def learning_rate_scales(state: GANState) -> dict[str, float]:
  """The current multipliers of both players' learning rates (1.0 unless a remedy lowered them)."""
  return {
      name: float(getattr(state, name).opt_state[1].hyperparams["step_size"])
      for name in state.players
  }


def with_learning_rate_scale(state: GANState, scale: float) -> GANState:
  """Sets every player's learning-rate multiplier to `scale` (an unreplicated state)."""

  def scaled(player: TrainState) -> TrainState:
    adam, scale_state = player.opt_state
    hyperparams = dict(scale_state.hyperparams)
    old = jnp.asarray(hyperparams["step_size"])
    hyperparams["step_size"] = jnp.asarray(scale, old.dtype)
    return player.replace(opt_state=(adam, scale_state._replace(hyperparams=hyperparams)))

  return state.replace(**{name: scaled(getattr(state, name)) for name in state.players})


def create(
    config: ml_collections.ConfigDict,
    G: nn.Module,
    D: nn.Module,
    image_shape: tuple[int, int, int],
    num_examples: int,
) -> GANState:
  """Initialises both players from `config.seed` (one copy, not yet on devices)."""
  rng = jax.random.PRNGKey(config.seed)
  g_key, d_key = streams.keys(streams.key(rng, "init"), "g_init", "d_init")
  z = jnp.zeros((1, config.model.z_dim), jnp.float32)
  g_vars = G.init(g_key, z, train=False)
  # A packing discriminator (PacGAN) needs at least `pack` examples to judge.
  pack = config.model.d.get("pack", 1)
  # A conditional D creates its label embedding (projection) only when given labels.
  labels = {"y": jnp.zeros((pack,), jnp.int32)} if config.model.d.get("num_classes") else {}
  d_vars = D.init(d_key, jnp.zeros((pack, *image_shape), jnp.float32), train=False, **labels)
  steps = schedule_steps(config)
  g = TrainState.create(
      apply_fn=G.apply,
      params=g_vars["params"],
      batch_stats=g_vars.get("batch_stats", {}),
      tx=make_optimizer(config.optim.g, steps["g"]),
  )
  d = TrainState.create(
      apply_fn=D.apply,
      params=d_vars["params"],
      batch_stats=d_vars.get("batch_stats", {}),
      tx=make_optimizer(config.optim.d, steps["d"]),
  )
  return GANState(
      step=jnp.zeros((), jnp.int32),
      g=g,
      d=d,
      g_ema=jax.tree.map(jnp.copy, g_vars["params"]),
      rng=rng,
      data_perm=data_lib.epoch_permutation(streams.key(rng, "data"), jnp.int32(0), num_examples),
  )
