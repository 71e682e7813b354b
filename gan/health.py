"""Training health: detectors that name a failing run, the evidence, and what to do about it.

The training loop feeds a `Monitor` the metrics of every log step (losses, D's
accuracies, gradient norms, update ratios, the diversity ratio, the
finiteness flag: see `gan.step`) and every evaluation. Each detector keeps a
window of recent records and fires when its condition has held for the whole
window:

  (signals: gan.step computes the losses, accuracies, gradient norms, update
  ratios and a finiteness flag in the compiled step; at log steps the loop adds
  the diversity ratio and D's largest singular value, functions below.)

  discriminator_wins  over the window, D tells real from fake almost perfectly
                      (mean accuracies >= `acc`) and either G's median gradient
                      norm is below `g_grad_drop` x its reference (its median
                      over the first `reference` records after warm-up) or the
                      mean D(G(z)) is below `fake_prob`: G's gradients vanish
                      or every sample is rejected.
  mode_collapse       the diversity ratio of generated vs real samples in D's
                      feature space is below `diversity` (for the window), or
                      an evaluation's class count is below `coverage` x the
                      real data's (one evaluation decides).
  divergence          a non-finite loss or gradient (the step drops such
                      updates, see `gan.step`), a loss above `loss_factor` x
                      its running median or above `max_loss`, or an update
                      larger than `max_update_ratio` x the parameters' norm.
  plateau             the tracked metric (`config.best_checkpoint.metric`) has
                      not improved by `min_delta` for `patience` evaluations.

An event is `{"step", "detector", "evidence", "action", "message", "since",
"test"}` (`test`: which of the detector's tests fired); the loop appends it
to `workdir/events.jsonl`, logs it, and carries out the action:

  log        only record it;
  rollback   restore the last checkpoint saved before the trouble began and
             scale both learning rates by `remedy_lr_factor` (at most
             `max_rollbacks` times in a run; then the action becomes `stop`).
             After `remedy_steps` steps without an event one remedy is undone
             (the rates go back up by 1 / `remedy_lr_factor`, at most to where
             they started), as dynamic loss scaling backs off on an overflow
             and grows again after a run of good steps (Micikevicius et al.
             2018): a transient fault does not slow the rest of the run,
             a lasting one fires again;
  early_stop / stop
             end the run; the best checkpoint by the tracked metric is kept.

A detector fires once per episode. When the condition of a logged episode has
been absent for a whole window, the monitor writes a `cleared` record (action
"cleared", the same `test`), so a report can tell a warning that passed (a
feature-matching G makes near-identical images for its first few hundred
steps) from a problem still there. Open episodes survive a resume (in
health.json); a rollback forgets them (`reset_windows`), and fires again if
the trouble persists. Cleared records do not restart the remedy clock.

All thresholds, windows and actions live in `config.health` (`defaults()`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gan import utils
from gan.evaluation import metrics

DETECTORS = ("discriminator_wins", "mode_collapse", "divergence", "plateau")
# "off" silences a detector (e.g. discriminator_wins for feature-matching semi-supervised
# GANs, whose D is meant to win: see experiments/mnist_improved_gan.py).
ACTIONS = ("off", "log", "rollback", "early_stop", "stop")
CLEARED = "cleared"  # the action of the record that ends an episode; not a configurable action


def defaults() -> ml_collections.ConfigDict:
  """The default `config.health`; windows count log records (every `config.log_every` steps)."""
  return ml_collections.ConfigDict(
      {
          "enabled": True,
          "guard_nonfinite": True,  # the step drops non-finite updates (gan.step)
          "max_rollbacks": 3,
          # discriminator_wins and the diversity test of mode_collapse start after this many
          # steps: a freshly initialised G makes near-identical images and D wins briefly.
          "warmup_steps": 200,
          "remedy_lr_factor": 0.5,
          "remedy_steps": 1000,  # quiet steps before one remedy is undone; 0: never
          "discriminator_wins": {
              "acc": 0.95,
              "g_grad_drop": 0.1,
              "fake_prob": 0.1,
              "reference": 5,
              "window": 5,
              "action": "log",
          },
          "mode_collapse": {"diversity": 0.1, "coverage": 0.5, "window": 5, "action": "log"},
          "divergence": {
              "loss_factor": 20.0,
              "loss_floor": 1.0,  # medians below this count as this (losses near 0 are normal)
              "max_loss": 1e3,
              "max_update_ratio": 0.5,
              "window": 2,
              "action": "rollback",
          },
          "plateau": {"patience": 0, "min_delta": 0.0, "action": "early_stop"},  # 0: off
      }
  )


def merged(config: ml_collections.ConfigDict | dict | None) -> ml_collections.ConfigDict:
  """`defaults()` overridden, key by key at every depth, by `config`; unknown keys are errors."""
  base = defaults()

  def merge(into: ml_collections.ConfigDict, override, path: str) -> None:
    for key, value in dict(override).items():
      if key not in into:
        raise ValueError(f"unknown setting health.{path}{key}; known: {sorted(into.keys())}")
      if isinstance(into[key], ml_collections.ConfigDict):
        merge(into[key], value, f"{path}{key}.")
      else:
        into[key] = value

  merge(base, config or {}, "")
  return base


@dataclasses.dataclass
class Event:
  step: int
  detector: str
  evidence: dict[str, Any]
  action: str
  message: str
  since: int  # first step of the window in which the condition held
  test: str = ""  # which of the detector's tests (default: the detector's name)

  def as_json(self) -> dict[str, Any]:
    return {
        "step": self.step,
        "detector": self.detector,
        "evidence": self.evidence,
        "action": self.action,
        "message": self.message,
        "since": self.since,
        "test": self.test or self.detector,
    }


def _median(values) -> float:
  return float(np.median(np.asarray(list(values), np.float64))) if values else float("nan")


class Monitor:
  """Watches a run's metrics; `observe`/`observe_eval` return the events that fired.

  A detector that fired stays quiet until its condition has cleared, so one
  episode is one event. `state_dict()`/`load_state_dict()` carry the monitor
  across a resume (kept in `workdir/health.json`).
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict | dict,
      metric: str | None = None,
      mode: str = "min",
  ):
    self.config = merged(config)
    for name in DETECTORS:
      action = self.config[name].action
      if action not in ACTIONS:
        raise ValueError(f"health.{name}.action {action!r} is not one of {ACTIONS}")
    self.metric, self.mode = metric or None, mode
    self.records: dict[str, collections.deque] = {}
    self.active: set[str] = set()
    self.g_grad_reference: list[float] = []
    self.loss_history: dict[str, collections.deque] = {
        k: collections.deque(maxlen=50) for k in ("d/loss", "g/loss")
    }
    self.best: float | None = None
    self.evals_since_best = 0
    self.rollbacks = 0
    self.lr_scale = 1.0  # product of the remedies in force
    self.quiet_since = 0  # the step of the last event, or the step a rollback went back to

  # --- persistence -----------------------------------------------------------------------

  def state_dict(self) -> dict[str, Any]:
    return {
        "g_grad_reference": self.g_grad_reference,
        "best": self.best,
        "evals_since_best": self.evals_since_best,
        "rollbacks": self.rollbacks,
        "lr_scale": self.lr_scale,
        "quiet_since": self.quiet_since,
        "active": sorted(self.active),  # open episodes: a resume neither repeats nor loses them
    }

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.g_grad_reference = list(state.get("g_grad_reference", []))
    self.best = state.get("best")
    self.evals_since_best = int(state.get("evals_since_best", 0))
    self.rollbacks = int(state.get("rollbacks", 0))
    self.lr_scale = float(state.get("lr_scale", 1.0))
    self.quiet_since = int(state.get("quiet_since", 0))
    self.active = set(state.get("active", []))

  def reset_windows(self) -> None:
    """Forgets the recent records (after a rollback), so a recurring failure fires again."""
    self.records.clear()
    self.active.clear()
    for history in self.loss_history.values():
      history.clear()

  # --- detectors -------------------------------------------------------------------------

  def _window(self, name: str, length: int) -> collections.deque:
    if name not in self.records or self.records[name].maxlen != length:
      self.records[name] = collections.deque(maxlen=max(1, length))
    return self.records[name]

  def _check(
      self,
      name: str,
      step: int,
      bad: bool,
      evidence: dict,
      message: str,
      since: int | None = None,
      test: str | None = None,
  ) -> list[Event]:
    """Fires `name` once per episode: when `bad` has held for its whole window.

    The episode ends, with a `cleared` record, when `bad` has been false for a
    whole window; records in between (some bad, some not) neither fire nor
    clear. With `since`, `bad` already judges a whole window (starting at step
    `since`), and one record that is not bad clears.
    `test` names one of several tests of a detector (default: the detector), each
    with its own window and episode, so e.g. evaluations and log records do not mix.
    """
    if self.config[name].action == "off":
      return []
    test = test or name
    good = not bad
    if since is None:
      window = self._window(test, int(self.config[name].get("window", 1)))
      window.append((step, bad, evidence))
      full = len(window) == window.maxlen
      bad = full and all(b for _, b, _ in window)
      good = full and not any(b for _, b, _ in window)
      since = window[0][0]
    if test in self.active:
      if not good:
        return []
      self.active.discard(test)
      # Only logged episodes clear: a rollback forgets every open episode with the
      # windows (`reset_windows`; the report counts them closed), and a stop ends the run.
      cleared = f"{name.replace('_', ' ')} cleared"
      return [Event(step, name, evidence, CLEARED, cleared, since=since, test=test)]
    if not bad:
      return []
    self.active.add(test)
    return [self._event(name, step, evidence, message, since=since, test=test)]

  def _event(
      self, name: str, step: int, evidence: dict, message: str, since: int, test: str = ""
  ) -> Event:
    action = self.config[name].action
    self.quiet_since = step
    if action == "rollback":
      if self.rollbacks >= self.config.max_rollbacks:
        action = "stop"
        message += f" (no rollbacks left: {self.rollbacks} done)"
      else:
        self.rollbacks += 1
    return Event(step, name, evidence, action, message, since, test)

  def recovered(self, step: int) -> float | None:
    """The raised learning-rate scale if one remedy is now undone (see `rollback`), else None."""
    steps = self.config.remedy_steps
    if self.lr_scale >= 1.0 or steps <= 0 or step - self.quiet_since < steps:
      return None
    self.lr_scale = min(1.0, self.lr_scale / self.config.remedy_lr_factor)
    self.quiet_since = step
    return self.lr_scale

  def observe(self, step: int, metrics: dict[str, float]) -> list[Event]:
    """Feeds one log step's training metrics; returns the events that fired."""
    m = {k: float(v) for k, v in metrics.items()}
    events: list[Event] = []

    # divergence: non-finite values (dropped by the step) or a loss explosion.
    cfg = self.config.divergence
    nonfinite = m.get("health/finite", 1.0) < 1.0 or any(
        not math.isfinite(m[k]) for k in ("d/loss", "g/loss") if k in m
    )
    exploded = {}
    for key, history in self.loss_history.items():
      if key in m and math.isfinite(m[key]):
        median = _median(history)
        if len(history) >= 5 and abs(m[key]) > cfg.loss_factor * max(abs(median), cfg.loss_floor):
          exploded[key] = {"value": m[key], "median": median}
        elif not nonfinite:
          history.append(m[key])
    for key in ("d/loss", "g/loss"):
      if key in m and abs(m[key]) > cfg.max_loss and key not in exploded:
        exploded[key] = {"value": m[key], "limit": cfg.max_loss}
    jumps = {
        k: m[k]
        for k in ("d/update_ratio", "g/update_ratio")
        if m.get(k, 0.0) > cfg.max_update_ratio
    }
    evidence = {"finite": not nonfinite, **({"exploded": exploded} if exploded else {}), **jumps}
    what = "non-finite loss or gradient (update dropped)" if nonfinite else "loss explosion"
    if jumps and not exploded and not nonfinite:
      what = (
          "parameter updates as large as the parameters ("
          + ", ".join(f"{k} {v:.3g}" for k, v in jumps.items())
          + ")"
      )
    detail = ", ".join(
        f"{k} {v['value']:.3g} above the limit {v['limit']:.3g}"
        if "limit" in v
        else f"{k} {v['value']:.3g} vs median {v['median']:.3g}"
        for k, v in exploded.items()
    )
    events += self._check(
        "divergence",
        step,
        nonfinite or bool(exploded) or bool(jumps),
        evidence,
        f"training diverges: {what}" + (f" ({detail})" if detail else ""),
    )

    if step <= self.config.warmup_steps:
      return events

    # discriminator_wins: D near-perfect and G's gradient vanishing (or G's samples rejected).
    cfg = self.config.discriminator_wins
    if {"d/real_acc", "d/fake_acc", "g/grad_norm"} <= m.keys():
      g_grad = m["g/grad_norm"]
      if len(self.g_grad_reference) < cfg.reference and math.isfinite(g_grad):
        self.g_grad_reference.append(g_grad)
      reference = _median(self.g_grad_reference)
      # Judged on the window's means (one batch's accuracy is noisy), not record by record.
      window = self._window("discriminator_wins", int(cfg.window))
      record = (m["d/real_acc"], m["d/fake_acc"], m.get("d/fake_prob", 1.0), g_grad)
      window.append((step, record))
      real_acc, fake_acc, fake_prob = (float(np.mean([r[i] for _, r in window])) for i in range(3))
      g_grad_median = _median([r[3] for _, r in window])
      wins = len(window) == window.maxlen and min(real_acc, fake_acc) >= cfg.acc
      vanishing = len(self.g_grad_reference) >= cfg.reference and (
          g_grad_median <= cfg.g_grad_drop * reference
      )
      rejected = fake_prob <= cfg.fake_prob
      evidence = {
          "d/real_acc": real_acc,
          "d/fake_acc": fake_acc,
          "d/fake_prob": fake_prob,
          "g/grad_norm": g_grad_median,
          "g/grad_norm_reference": reference,
          "window_records": len(window),
      }
      events += self._check(
          "discriminator_wins",
          step,
          wins and (vanishing or rejected),
          evidence,
          f"the discriminator wins: over the last {len(window)} log steps, mean accuracy real "
          f"{real_acc:.2f} / fake {fake_acc:.2f}, mean D(G(z)) {fake_prob:.3f}, G gradient norm "
          f"{g_grad_median:.3g} (median) vs {reference:.3g} early in the run",
          since=window[0][0],
      )

    # mode_collapse from the in-step diversity ratio.
    cfg = self.config.mode_collapse
    if "health/diversity" in m:
      ratio = m["health/diversity"]
      events += self._check(
          "mode_collapse",
          step,
          ratio < cfg.diversity,
          {"health/diversity": ratio},
          f"mode collapse: generated samples spread {ratio:.2f}x as much as real ones in D's "
          f"feature space (threshold {cfg.diversity})",
      )
    return events

  def observe_eval(self, step: int, metrics: dict[str, float]) -> list[Event]:
    """Feeds one evaluation's flattened results (`<evaluator>/<metric>`)."""
    events: list[Event] = []
    cfg = self.config.mode_collapse
    for key, value in metrics.items():
      if key.endswith("/classes"):
        real = metrics.get(key.replace("/classes", "/real_classes"))
        if real is None:
          continue
        # One evaluation (thousands of samples) decides; it has its own episode, apart
        # from the diversity test's log records.
        events += self._check(
            "mode_collapse",
            step,
            value < cfg.coverage * real,
            {key: value, "real_classes": real},
            f"mode collapse: {int(value)} classes generated, {int(real)} in the real data ({key})",
            since=step,
            test=f"mode_collapse:{key}",
        )
    cfg = self.config.plateau
    if self.metric and cfg.patience > 0 and cfg.action != "off" and self.metric in metrics:
      value = float(metrics[self.metric])
      sign = 1.0 if self.mode == "min" else -1.0
      if self.best is None or sign * (self.best - value) > cfg.min_delta:
        self.best, self.evals_since_best = value, 0
      else:
        self.evals_since_best += 1
      if self.evals_since_best >= cfg.patience:
        events.append(
            self._event(
                "plateau",
                step,
                {self.metric: value, "best": self.best, "evaluations_without_gain": cfg.patience},
                f"plateau: {self.metric} has not improved on {self.best:.4g} for "
                f"{self.evals_since_best} evaluations",
                since=step,
            )
        )
        self.evals_since_best = 0
    return events


def mean_pairwise_distance(features: jax.Array) -> jax.Array:
  """Mean Euclidean distance between the rows of `features` (B, ...), over pairs i != j."""
  f = features.reshape(features.shape[0], -1).astype(jnp.float32)
  d2 = metrics.pairwise_sq_dist(f, f)
  n = f.shape[0]
  off_diagonal = 1.0 - jnp.eye(n, dtype=f.dtype)
  return jnp.sum(jnp.sqrt(d2 + 1e-12) * off_diagonal) / max(n * (n - 1), 1)


def diversity_ratio(real_features: jax.Array, fake_features: jax.Array) -> jax.Array:
  """Spread of generated vs real samples in a feature space (~1 healthy, -> 0 collapsed)."""
  return mean_pairwise_distance(fake_features) / (mean_pairwise_distance(real_features) + 1e-12)


def make_diversity_fn(G: nn.Module, D: nn.Module) -> Callable[..., jax.Array]:
  """Jitted `(g, d, real, z) -> ratio`: the diversity ratio in D's penultimate features.

  G and D run in inference mode (no dropout, running batch-norm statistics),
  so identical images get identical features; D must `sow` its features
  ("intermediates"/"features"), as the project's discriminators do.
  """

  def features(d, x):
    _, mutated = D.apply(d.variables(), x, train=False, mutable=["intermediates"])
    return mutated["intermediates"]["features"][0]

  @jax.jit
  def ratio(g, d, real: jax.Array, z: jax.Array) -> jax.Array:
    fake = G.apply(g.variables(), z, train=False)
    return diversity_ratio(features(d, real), features(d, fake))

  return ratio


def top_singular_values(params: Any) -> dict[str, float]:
  """Largest singular value of every weight matrix (conv kernels as (fan_in, out)) in a tree.

  sqrt of the largest eigenvalue of the smaller Gram matrix, in float64: exact to
  rounding like a full SVD, and several times faster on large kernels such as the
  Improved-GAN D's (benchmarks/README.md), which matters because the training loop
  calls this at every log step.
  """
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in flat:
    leaf = np.asarray(leaf, np.float64)
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if leaf.ndim >= 2 and name.endswith("kernel"):
      w = leaf.reshape(-1, leaf.shape[-1])
      gram = w.T @ w if w.shape[1] <= w.shape[0] else w @ w.T
      out[name] = float(np.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0)))
  return out


def write_event(workdir: str, event: Event) -> None:
  with open(os.path.join(workdir, "events.jsonl"), "a") as f:
    f.write(json.dumps(event.as_json()) + "\n")


def read_events(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "events.jsonl")
  if not os.path.exists(path):
    return []
  return utils.read_jsonl(path)
