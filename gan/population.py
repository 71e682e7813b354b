"""A population of runs in one compiled program: the members of `config.sweep` and their step.

`expand(config)` turns the experiment config and its `sweep` section (see
`gan.sweep` for the format) into one config per member. Members are then
trained `jax.vmap`-ed over a leading member axis of the GANState, inside the
per-device step that `gan.step.pmap_step` maps over the devices' "data" axis.

How members differ inside one program:
  traced        numbers the step can take as arrays (`TRACED`: the players'
                learning rates, Adam's b1, b2, eps and eps_root,
                label_smoothing, r1_gamma, gp_weight, ac_weight,
                ema_decay). Each member's value rides along in
                `Population.hparams`, and the member's optimizers and
                step settings are rebuilt from it inside the vmapped step, so one
                compiled program serves every value. (`TrainState.tx` is a
                static field, and Adam's state does not depend on these
                numbers: a member's state and checkpoint are exactly those of
                a plain run.)
  structural    every other swept key (the loss, n_critic, a schedule, the
                networks' sizes) changes the program. Members that agree on
                all of them form a group with its own compiled program
                (`group_key`). A `lax.switch` over, say, losses would compute
                every branch for every member under vmap.
  seed          not a hyperparameter: it changes the initial state and the
                random streams, which are data.
Keys every member shares by construction (`SHARED`: the dataset, batch size,
number of steps, cadences, evaluators) cannot be swept.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from gan import methods
from gan import state as state_lib
from gan import step as step_lib
from gan.utils import ConfigError

# Hyperparameters that members of one program may differ in (config keys).
TRACED = (
    *(f"optim.{player}.{key}" for player in "gd" for key in ("lr", "b1", "b2", "eps", "eps_root")),
    "label_smoothing",
    "r1_gamma",
    "gp_weight",
    "ac_weight",
    "ema_decay",
)
# Top-level config keys that the members share: their data, loop and evaluation.
SHARED = (
    "dataset",
    "train_split",
    "data_dir",
    "batch_size",
    "num_steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_samples",
    "evals",
    "method",
    "sweep",
)


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of a sweep: its index, seed, swept values (by config key) and full config."""

  index: int
  seed: int
  values: dict[str, Any]
  config: ml_collections.ConfigDict

  @property
  def hyperparameters(self) -> dict[str, Any]:
    return {"seed": self.seed, **self.values}


def _parent(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  *path, name = key.split(".")
  node = config
  for part in path:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or name not in node:
    raise ConfigError(f"sweep.params: the config has no key {key!r}")
  return node, name


def _axes(config: ml_collections.ConfigDict) -> dict[tuple[str, ...], Any]:
  """sweep.params as {config keys set together: values}, checked against the config."""
  axes = {}
  for name, values in (config.sweep.get("params") or {}).items():
    keys = tuple(key.strip().replace("/", ".") for key in name.split(","))
    for key in keys:
      if key == "seed":
        raise ConfigError("sweep.params: give seeds as sweep.seed")
      if key.split(".")[0] in SHARED:
        raise ConfigError(f"sweep.params: {key!r} is shared by all members and cannot be swept")
      _parent(config, key)
    axes[keys] = values
  return axes


def _draw(rng: np.random.Generator, values: Any) -> Any:
  """One random-mode value: a choice from a list, or from a {"min", "max", "log"} range."""
  if isinstance(values, ml_collections.ConfigDict):
    low, high = float(values.min), float(values.max)
    if values.get("log", False):
      return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return float(rng.uniform(low, high))
  return values[int(rng.integers(len(values)))]


def expand(config: ml_collections.ConfigDict) -> list[Member]:
  """The members of `config.sweep`, each with its own config (see `gan.sweep` for the format)."""
  sweep = config.get("sweep")
  if not sweep:
    raise ConfigError("the config has no sweep section (config.sweep); see gan/sweep.py")
  if methods.get(config).semi_supervised:
    raise ConfigError(
        "population sweeps train plain GANs (config.method must be unset): a semi-supervised "
        "member's labelled subset is data chosen by its seed, and a population shares one copy "
        "of the data"
    )
  axes = _axes(config)
  mode, count = sweep.get("mode", "grid"), sweep.get("members")
  if mode == "grid":
    seeds = tuple(sweep.get("seed") or (config.seed,))
    rows = [
        (combo[0], dict(zip(axes, combo[1:], strict=True)))
        for combo in itertools.product(seeds, *axes.values())
    ]
    if count and count != len(rows):
      raise ConfigError(f"sweep.members={count}, but the grid has {len(rows)} members")
  elif mode == "random":
    if not count:
      raise ConfigError("a random sweep needs sweep.members")
    seeds = tuple(sweep.get("seed") or range(config.seed, config.seed + count))
    if len(seeds) != count:
      raise ConfigError(f"sweep.seed gives {len(seeds)} seeds for {count} members")
    rng = np.random.default_rng(sweep.get("random_seed", 0))
    rows = [(seed, {keys: _draw(rng, v) for keys, v in axes.items()}) for seed in seeds]
  else:
    raise ConfigError(f"unknown sweep.mode {mode!r}; use 'grid' or 'random'")
  members = []
  for index, (seed, chosen) in enumerate(rows):
    member_config = config.copy_and_resolve_references()
    member_config.seed = int(seed)
    values = {}
    for keys, value in chosen.items():
      for key in keys:
        node, name = _parent(member_config, key)
        try:
          node[name] = value
        except TypeError as e:  # ConfigDict keeps a key's type
          raise ConfigError(f"sweep.params: {key}={value!r}: {e}") from None
        values[key] = value
    members.append(Member(index, int(seed), values, member_config))
  return members


def traced_keys(members: Sequence[Member]) -> tuple[str, ...]:
  """The swept keys that are traced (the same for every member)."""
  return tuple(key for key in members[0].values if key in TRACED)


def group_key(member: Member) -> tuple[tuple[str, str], ...]:
  """Members with equal keys share a compiled program: their structural values agree."""
  return tuple((k, repr(v)) for k, v in member.values.items() if k not in TRACED)


@flax.struct.dataclass
class Population:
  """The state of a group of members: a GANState whose leaves carry a leading member axis,
  and the members' traced hyperparameters (config key -> (K,) float32)."""

  state: state_lib.GANState
  hparams: dict[str, jax.Array]


def stack(trees: Sequence[Any]) -> Any:
  """Trees of one structure as one tree with a leading member axis (NumPy arrays).

  The static fields (a TrainState's `tx`) are the first tree's: the members'
  optimizers differ only in traced numbers, which the step puts back.
  """
  leaves = [jax.tree.leaves(tree) for tree in trees]
  stacked = [np.stack([np.asarray(x) for x in xs]) for xs in zip(*leaves, strict=True)]
  return jax.tree.unflatten(jax.tree.structure(trees[0]), stacked)


def take(tree: Any, index: int) -> Any:
  """Member `index` of a stacked tree."""
  return jax.tree.map(lambda x: x[index], tree)


def create(members: Sequence[Member], states: Sequence[state_lib.GANState]) -> Population:
  """The population of `members` (one group) from their own (initial or restored) states."""
  keys = traced_keys(members)
  hparams = {k: np.asarray([m.values[k] for m in members], np.float32) for k in keys}
  return Population(stack(states), hparams)


def make_population_step(
    config: ml_collections.ConfigDict,
    method: methods.GAN,
    nets: methods.Networks,
    traced: Sequence[str],
) -> Callable[[Population, dict[str, jax.Array]], tuple[Population, step_lib.Metrics]]:
  """The per-device step of a group: the method's train step vmapped over the members.

  `config` is any member's: the group's members agree on everything but the
  `traced` keys, whose values come from `Population.hparams`. Metrics come back
  with a leading member axis. Wrap it with `gan.step.pmap_step`.
  """
  base = method.step_config(config)
  schedule_steps = state_lib.schedule_steps(config)

  def member_step(hparams, state, data):
    cfg = dataclasses.replace(base, **{k: v for k, v in hparams.items() if "." not in k})
    players = {}
    for name in ("g", "d"):
      prefix = f"optim.{name}."
      numbers = {k[len(prefix) :]: v for k, v in hparams.items() if k.startswith(prefix)}
      if numbers:
        optim = ml_collections.ConfigDict(config.optim[name].to_dict() | numbers)
        tx = state_lib.make_optimizer(optim, schedule_steps[name])
        players[name] = getattr(state, name).replace(tx=tx)
    new_state, metrics = method.make_step(cfg, nets)(state.replace(**players), data)
    # The traced optimizers stay inside: the state leaves with the static fields it came with.
    tx = {name: getattr(new_state, name).replace(tx=getattr(state, name).tx) for name in players}
    return new_state.replace(**tx), metrics

  def population_step(population: Population, data: dict[str, jax.Array]):
    member_hparams = {k: population.hparams[k] for k in traced}
    state, metrics = jax.vmap(member_step, in_axes=(0, 0, None))(
        member_hparams, population.state, data
    )
    return population.replace(state=state), metrics

  return population_step
