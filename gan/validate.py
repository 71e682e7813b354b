"""Config-time checks: every setting with a natural range is in it before anything slow runs.

`check(config)` raises `gan.utils.ConfigError` naming the first bad key and its
allowed range, e.g. "n_critic=0: must be an integer >= 1", which the command
line prints in one line. It runs once in `gan.build.run` (so in every run and
every sweep member) and in `gan.sweep` for all members before the first is
built. A key a config leaves out is not checked here (the code then uses its
default), except the ones every run reads (`REQUIRED`).

NaN is rejected in every numeric setting, wherever it sits (a NaN learning rate
or EMA decay trains silently into NaN parameters).

`check_run_dir(workdir)` checks that the files and folders a run writes are not
in the way (`W/samples` being a file), and `config_diff` says in one line how
two configs differ (a resume whose checkpoint does not fit the config).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from gan import health
from gan.utils import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
  """A number in [low, high] (an end excluded if `*_open`; None: unbounded), finite unless
  `infinite_ok`, an integer if `integer`; None allowed if `optional`. A sequence is checked
  element by element (`model.d.widths`)."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  optional: bool = False
  infinite_ok: bool = False

  def describe(self) -> str:
    kind = "an integer" if self.integer else "a finite number"
    if self.infinite_ok:
      kind = "a number"
    if self.low is not None and self.high is not None:
      left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
      bounds = f" in {left}{self.low:g}, {self.high:g}{right}"
    elif self.low is not None:
      bounds = f" {'>' if self.low_open else '>='} {self.low:g}"
    elif self.high is not None:
      bounds = f" {'<' if self.high_open else '<='} {self.high:g}"
    else:
      bounds = ""
    return kind + bounds + (" (or None)" if self.optional else "")

  def ok(self, value: Any) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return False
    if self.integer and not isinstance(value, numbers.Integral):
      return False
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not self.infinite_ok):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)

  def check(self, key: str, value: Any) -> None:
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not all(self.ok(v) for v in values):
      each = "each element " if isinstance(value, (tuple, list)) else ""
      raise ConfigError(f"{key}={value!r}: {each}must be {self.describe()}")


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `options`."""

  options: tuple[str, ...]

  def check(self, key: str, value: Any) -> None:
    if value not in self.options:
      raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(repr, self.options))}")


COUNT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)  # [0, 1]
BELOW_ONE = Range(0, 1, high_open=True)  # [0, 1): Adam's betas, dropout, label smoothing
FINITE = Range()

# Key patterns (`*`: any one key at that level) and their ranges. Every run reads the
# REQUIRED ones; the others are checked where a config sets them.
RULES: dict[str, Range | Choice] = {
    "seed": NON_NEGATIVE_INT,  # numpy's generators refuse negative seeds
    "batch_size": COUNT,
    "num_steps": COUNT,
    "n_critic": COUNT,
    "num_samples": COUNT,
    "log_every": COUNT,
    "sample_every": COUNT,
    "checkpoint_every": COUNT,
    "keep_checkpoints": COUNT,
    "ema_decay": PROBABILITY,
    "label_smoothing": BELOW_ONE,
    "r1_gamma": NON_NEGATIVE,
    "r1_every": COUNT,
    "gp_weight": NON_NEGATIVE,
    "ac_weight": NON_NEGATIVE,
    "best_checkpoint.mode": Choice(("min", "max")),
    "best_checkpoint.keep": COUNT,
    "inject_fault.step": NON_NEGATIVE_INT,
    "inject_fault.lr_factor": POSITIVE,
    # Each player's optimizer (g, d, and a classifier's c).
    "optim.*.lr": POSITIVE,
    "optim.*.b1": BELOW_ONE,
    "optim.*.b2": BELOW_ONE,
    "optim.*.eps": NON_NEGATIVE,
    "optim.*.eps_root": NON_NEGATIVE,
    "optim.*.decay": Choice(("none", "linear", "exponential")),
    "optim.*.decay_start": NON_NEGATIVE_INT,
    "optim.*.decay_every": COUNT,
    "optim.*.decay_rate": Range(0, 1, low_open=True),
    "optim.*.b1_rampdown.final": BELOW_ONE,
    "optim.*.b1_rampdown.start_epoch": NON_NEGATIVE_INT,
    "optim.*.b1_rampdown.epochs": COUNT,
    "optim.*.b1_rampdown.steps_per_epoch": COUNT,
    "model.z_dim": COUNT,
    "model.*.width": COUNT,
    "model.*.widths": COUNT,
    "model.*.depth": COUNT,
    "model.*.channels": COUNT,
    "model.*.image_shape": COUNT,
    "model.*.conv_chunk": Range(1, integer=True, optional=True),
    "model.*.pack": COUNT,
    "model.*.label_classes": COUNT,
    "model.*.num_classes": NON_NEGATIVE_INT,  # 0: unconditional
    "model.*.minibatch_std": NON_NEGATIVE_INT,  # 0: off
    "model.*.dropout_rate": BELOW_ONE,
    "model.*.input_noise": NON_NEGATIVE,
    "model.*.hidden_noise": NON_NEGATIVE,
    "model.*.momentum": PROBABILITY,
    "model.*.z_scale": FINITE,
    # Semi-supervised methods (gan.semi).
    "semi.labels_per_class": COUNT,
    "semi.label_seed": Range(0, integer=True, optional=True),
    "semi.num_classes": Range(2, integer=True),
    "semi.init_batch": COUNT,
    "semi.unlabelled_weight": NON_NEGATIVE,
    "semi.classifier_ema_decay": PROBABILITY,
    "semi.alpha": PROBABILITY,
    "semi.alpha_p": NON_NEGATIVE,
    "semi.pseudo_start_step": NON_NEGATIVE_INT,
    "semi.entropy_weight": NON_NEGATIVE,
    "semi.balance_weight": NON_NEGATIVE,
    "semi.adversarial_scale": NON_NEGATIVE,
    "semi.consistency_weight": NON_NEGATIVE,
    "semi.consistency_rampup_epochs": NON_NEGATIVE_INT,
    "semi.steps_per_epoch": COUNT,
    "semi.zca_images": NON_NEGATIVE_INT,  # 0: all
    "semi.trunk_d_weight": NON_NEGATIVE,
    "semi.pretrain.steps": NON_NEGATIVE_INT,  # 0: off
    "semi.pretrain.unlabelled_batch": COUNT,
    "semi.pretrain.lr": POSITIVE,
    "semi.pretrain.b1": BELOW_ONE,
    "semi.pretrain.entropy_weight": NON_NEGATIVE,
    "semi.pretrain.balance_weight": NON_NEGATIVE,
    # Evaluators (gan.evaluation.evaluators.DEFAULTS).
    "evals.*.every": COUNT,
    "evals.*.num_samples": COUNT,
    "evals.*.seed": NON_NEGATIVE_INT,
    "evals.*.kid_subsets": COUNT,
    "evals.*.kid_subset_size": COUNT,
    "evals.*.pr_samples": COUNT,
    "evals.*.num_reference": COUNT,
    "evals.*.is_splits": COUNT,
    "evals.*.batch_size": COUNT,
    # Training health (gan.health), checked after merging with its defaults.
    "health.max_rollbacks": NON_NEGATIVE_INT,
    "health.warmup_steps": NON_NEGATIVE_INT,
    "health.remedy_lr_factor": Range(0, 1, low_open=True),
    "health.remedy_steps": NON_NEGATIVE_INT,  # 0: never undone
    "health.*.window": COUNT,
    "health.*.action": Choice(health.ACTIONS),
    "health.discriminator_wins.acc": PROBABILITY,
    "health.discriminator_wins.g_grad_drop": NON_NEGATIVE,
    "health.discriminator_wins.fake_prob": PROBABILITY,
    "health.discriminator_wins.reference": COUNT,
    "health.mode_collapse.diversity": NON_NEGATIVE,
    "health.mode_collapse.coverage": PROBABILITY,
    "health.divergence.loss_factor": POSITIVE,
    "health.divergence.loss_floor": NON_NEGATIVE,
    "health.divergence.max_loss": Range(0, low_open=True, infinite_ok=True),
    "health.divergence.max_update_ratio": Range(0, low_open=True, infinite_ok=True),
    "health.plateau.patience": NON_NEGATIVE_INT,  # 0: off
    "health.plateau.min_delta": NON_NEGATIVE,
    # Population sweeps (gan.population; each member's config is checked as a run's).
    "sweep.members": Range(1, integer=True, optional=True),
    "sweep.target.mode": Choice(("min", "max")),
    "sweep.target.threshold": Range(optional=True),
}
REQUIRED = (
    "seed",
    "batch_size",
    "num_steps",
    "n_critic",
    "num_samples",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "ema_decay",
    "label_smoothing",
    "model.z_dim",
    "optim.g.lr",
    "optim.g.b1",
    "optim.g.b2",
    "optim.d.lr",
    "optim.d.b1",
    "optim.d.b2",
)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a.b.c": leaf} of a nested mapping (sequences are leaves)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat |= flatten(value, f"{prefix}{key}.")
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _as_dict(tree: Any) -> dict[str, Any]:
  return tree.to_dict() if isinstance(tree, ml_collections.ConfigDict) else dict(tree)


def _nan(value: Any) -> bool:
  if isinstance(value, (tuple, list)):
    return any(_nan(v) for v in value)
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


def check(config: Any) -> None:
  """Raises ConfigError for the first setting of `config` outside its range (see the module)."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
        f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict: "
        "get_config() must return a ConfigDict"
    )
  flat = flatten(config.to_dict())
  for key, value in flat.items():
    if _nan(value):
      raise ConfigError(f"{key}={value!r}: a setting cannot be NaN")
  for key in REQUIRED:
    if key not in flat:
      raise ConfigError(f"the config has no {key} (it must be {RULES[key].describe()})")
  try:
    settings = health.merged(config.get("health"))
  except ValueError as e:  # an unknown key
    raise ConfigError(str(e)) from None
  flat |= flatten(_as_dict(settings), "health.")
  for key, value in flat.items():
    for pattern, rule in RULES.items():
      if fnmatch.fnmatchcase(key, pattern) and key.count(".") == pattern.count("."):
        rule.check(key, value)
  for player, optim in _as_dict(config.optim).items():
    if isinstance(optim, Mapping) and optim.get("eps", 1e-8) == 0 == optim.get("eps_root", 0):
      raise ConfigError(
          f"optim.{player}.eps and optim.{player}.eps_root are both 0: Adam would divide by 0 "
          "for a parameter without gradient; make one of them > 0"
      )


# What a run writes in its directory: folders and files (gan.loop, gan.build, gan.runs).
RUN_FOLDERS = ("checkpoints", "samples", "tensorboard")
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "events.jsonl",
    "evals.jsonl",
    "health.json",
    "pretrain.json",
    "eval.json",
)


def check_run_dir(workdir: str) -> None:
  """Raises ConfigError if something in `workdir` is in the way of a file or folder a run writes."""
  for name in RUN_FOLDERS:
    path = os.path.join(workdir, name)
    if os.path.exists(path) and not os.path.isdir(path):
      raise ConfigError(f"{path} is a file; a run writes a folder there: move it away")
  for name in RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      raise ConfigError(f"{path} is a folder; a run writes a file there: move it away")


def config_diff(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    limit: int = 3,
    ignore: tuple[str, ...] = (),
) -> str:
  """How `current` differs from `saved`, in one line: "model.z_dim: 100 -> 64, ..." ("" if not).

  Keys under the top-level names in `ignore` do not count.
  """
  old, new = flatten(_as_dict(saved)), flatten(_as_dict(current))
  for flat in (old, new):
    for key in [k for k in flat if k.split(".")[0] in ignore]:
      del flat[key]

  def shown(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "unset"

  def norm(value: Any) -> Any:  # a config read back from JSON has lists for tuples
    return list(value) if isinstance(value, tuple) else value

  changed = [
      f"{key}: {shown(old, key)} -> {shown(new, key)}"
      for key in sorted(set(old) | set(new))
      if key not in old or key not in new or norm(old[key]) != norm(new[key])
  ]
  more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
  return ", ".join(changed[:limit]) + more
