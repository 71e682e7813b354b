"""Command line: a population sweep, `python -m gan.sweep --config experiments/X.py --workdir W`.

Trains the K members of `config.sweep` together (`gan.population`: one
compiled program per group of members, the train step vmapped over them and
pmapped over the devices as a single run's step is), each member a complete run in
`W/member_k/`, then ranks them in `W/sweep.json` and `W/sweep.png`. Flags as
`gan.main`'s: `--config.sweep.seed="(0,1)" --config.sweep.members=4` overrides
the config (a grid's member count is checked against its size, so change both).

The sweep section of the config:

  config.sweep = ml_collections.ConfigDict({
      "mode": "grid",             # or "random"
      "members": 8,               # grid: optional, checked against the grid's size
      "seed": (0, 1, 2, 3),       # grid: one axis; random: one seed per member
                                  #   (default: config.seed + k)
      "params": {                 # config key -> values, "/" for "." (ConfigDict keys
          "optim/g/lr,optim/d/lr": (1e-3, 2e-3),  # hold no dots); comma-separated keys
          "loss": ("non_saturating", "hinge"),    # take one value together (one axis)
      },
      "random_seed": 0,           # random: seeds the draws
      "target": {"metric": "toy2d/modes", "mode": "max", "threshold": 8},
  })

Grid: every combination of the seeds and the params' values (seeds vary
slowest, then the params in sorted key order). Random: member k has seed k of
`seed` and draws each param independently: a value list is a set of choices,
{"min": a, "max": b, "log": True} a (log-)uniform range. Which params are
traced in one program and which split the population into groups:
`gan.population`.

Each member's directory is a plain run's (config.json, metrics.jsonl,
samples/, checkpoints/, evals.jsonl, eval.json, events.jsonl, health.json),
written by the same code as a single run's (`gan.loop.RunLoop`), so
`gan.evaluate`, `gan.sample` and `gan.report` work on it. Every member has its
own health monitor; a member that is rolled back goes on from its restored
checkpoint inside the population (members may then be at different steps),
and one that stops is no longer written (it keeps its place in the program).
`perf/steps_per_s` is the population's: each member's training steps per
second. Run the same command again to resume: every member resumes from its
latest checkpoint, finished members are left as they are.

W/sweep.json: {"target", "tiebreak", "success_rate", "successes",
"num_members", "ranking": [member indices, best first], "members": [{"member",
"workdir", "group", "hyperparameters" (seed and swept values), "step",
"final_metrics" (the last training log record), "eval" (eval.json's metrics
as <evaluator>/<metric>), "health": {"verdict": healthy | recovered |
unhealthy, "summary": gan.report's verdict, "events": [detector@step ->
action, "cleared" for an episode's end]}, "target_value", "tiebreak_value",
"target_reached", "success", "rank"}]}. A member succeeds if it is healthy
or recovered (no unresolved failure, `gan.report.verdict`) and its final
evaluation reaches the target; the success rate is the share of members that
do. Without a target, members are ranked by `config.best_checkpoint.metric`
and succeed if healthy. Members are ranked successes first, then by the
target metric; ties (every ring8 member finding all 8 modes) are broken by
`config.best_checkpoint.metric` when it is another metric ("tiebreak":
{"metric", "mode"}, else null).
W/sweep.png: the members' target metric, best first, coloured by outcome and
labelled with the target and tie-break values.
"""

from __future__ import annotations

from gan import platform

platform.configure_xla()  # before JAX initialises its backend

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402

from gan import (  # noqa: E402
    build,
    health,
    loop,
    parallel,
    population,
    report,
    runs,
    utils,
    validate,
    writers,  # noqa: E402
)
from gan import main as cli  # noqa: E402  (its flags and error handling are the sweep's)
from gan import state as state_lib  # noqa: E402
from gan import step as step_lib  # noqa: E402
from gan.utils import ConfigError, check_workdir  # noqa: E402


class _Group:
  """Members that share one compiled program, and their stacked state on the devices."""

  def __init__(
      self, members: list[build.Run], specs: list[population.Member], traced: tuple[str, ...]
  ):
    lead = members[0]
    self.devices = lead.layout.devices
    step = population.make_population_step(lead.config, lead.method, lead.nets, traced)
    self.step_fn = step_lib.pmap_step(step)
    pop = population.create(specs, [run.state for run in members])
    self.hparams = pop.hparams
    self.p_pop = parallel.replicate(pop, self.devices)
    self.p_metrics = None
    self.queue = platform.StepQueue(platform.choices(lead.layout.backend).steps_in_flight)
    self.diversity_fn = jax.vmap(lead.diversity)
    self.probe_real = np.stack([np.asarray(run.probe_real) for run in members])
    self.probe_z = np.stack([np.asarray(run.probe_z) for run in members])
    self._host: state_lib.GANState | None = None  # this step's state, fetched when needed
    self._metrics: dict[str, np.ndarray] | None = None
    self._diversity: np.ndarray | None = None
    self._changed = False  # a member's state was replaced on the host

  def step(self, data) -> None:
    if self._changed:
      pop = population.Population(self._host, self.hparams)
      self.p_pop = parallel.replicate(pop, self.devices)
      self._changed = False
    self.p_pop, self.p_metrics = self.step_fn(self.p_pop, data)
    self.queue.dispatched(self.p_metrics)
    self._host = self._metrics = self._diversity = None

  def fetch_metrics(self) -> None:
    if self._metrics is None:
      self._metrics = jax.device_get(parallel.unreplicate(self.p_metrics))

  def slot(self, position: int) -> _GroupSlot:
    return _GroupSlot(self, position)


class _GroupSlot:
  """One member's place in its group's stacked state: the loop's `Slot` for a sweep member."""

  def __init__(self, group: _Group, position: int):
    self.group, self.position = group, position

  def metrics(self) -> dict[str, float]:
    self.group.fetch_metrics()
    return {k: float(v[self.position]) for k, v in self.group._metrics.items()}

  def state(self) -> state_lib.GANState:
    group = self.group
    if group._host is None:
      group._host = jax.device_get(parallel.unreplicate(group.p_pop.state))
    return population.take(group._host, self.position)

  def set_state(self, state: state_lib.GANState) -> None:
    group = self.group
    self.state()
    leaves = [np.array(x) for x in jax.tree.leaves(group._host)]
    for leaf, new in zip(leaves, jax.tree.leaves(state), strict=True):
      leaf[self.position] = new
    group._host = jax.tree.unflatten(jax.tree.structure(group._host), leaves)
    group._changed = True

  def diversity(self) -> float:
    group = self.group
    if group._diversity is None:
      state = parallel.unreplicate(group.p_pop.state)
      group._diversity = np.asarray(
          group.diversity_fn(state.g, state.d, group.probe_real, group.probe_z)
      )
    return float(group._diversity[self.position])


class _Member:
  """One member: its run, its hooks (the same `gan.loop.RunLoop` a single run has), its slot."""

  def __init__(self, spec: population.Member, run: build.Run, bar):
    self.spec, self.run = spec, run
    self.hooks = loop.RunLoop(run, bar, prefix=f"member {spec.index}: ")
    self.step = int(run.state.step)
    self.done = self.step >= run.config.num_steps
    self.final = run.state if self.done else None
    self.group: _Group | None = None
    self.slot: _GroupSlot | None = None


def member_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, f"member_{index}")


def train_population(
    config: ml_collections.ConfigDict, workdir: str, **options: bool
) -> list[state_lib.GANState]:
  """Trains (or resumes) every member of `config.sweep`; writes W/sweep.json and W/sweep.png.

  `options` are `gan.build.run`'s resume_stopped and allow_config_change, for every
  member. A member the health monitor stops is done (sweep.json says so); SIGTERM or
  SIGINT save every member's current step and raise `gan.loop.RunInterruptedError`.
  Returns the members' final states, on the host, in member order.
  """
  platform.prepare(config)  # config.deterministic, before the first computation
  if jax.process_count() > 1:
    raise ConfigError("population sweeps run in one process (its devices are the population's)")
  validate.check(config)
  specs = population.expand(config)
  for spec in specs:  # every member's settings, before the first member loads any data
    try:
      validate.check(spec.config)
    except ConfigError as e:
      raise ConfigError(f"member {spec.index} {spec.hyperparameters}: {e}") from None
  workdir = check_workdir(workdir)
  member_runs: list[build.Run] = []
  try:
    with loop.Interrupts() as interrupts:
      return _train_population(config, workdir, specs, member_runs, interrupts, options)
  finally:
    for run in member_runs:
      run.close()


def _train_population(config, workdir, specs, member_runs, interrupts, options):
  for spec in specs:
    shared = member_runs[0] if member_runs else None  # the data and evaluators are loaded once
    directory = member_dir(workdir, spec.index)
    # The population's step is pmapped (over the devices, members vmapped): pmap's layout.
    member_runs.append(build.run(spec.config, directory, shared=shared, parallel="pmap", **options))
    runs.write_config(spec.config, member_runs[-1].workdir)
  start = min(int(run.state.step) for run in member_runs)
  bar = loop.progress_bar(config.num_steps, start, f"sweep of {len(specs)}")
  members = [_Member(spec, run, bar) for spec, run in zip(specs, member_runs, strict=True)]
  traced = population.traced_keys(specs)
  groups: dict[tuple, list[_Member]] = {}
  for member in members:
    if not member.done:  # finished members (on resume) are not trained again
      groups.setdefault(population.group_key(member.spec), []).append(member)
  for group_members in groups.values():
    group = _Group([m.run for m in group_members], [m.spec for m in group_members], traced)
    for position, member in enumerate(group_members):
      member.group, member.slot = group, group.slot(position)
      del member.run.state  # the population holds it from here on
  data = member_runs[0].data
  iteration, last_iteration, last_time = 0, 0, time.perf_counter()
  while active := [m for m in members if not m.done]:
    for member in active:
      member.hooks.before_step(member.step + 1, member.slot)
    for group_members in groups.values():
      group_members[0].group.step(data)
    iteration += 1
    for member in active:
      member.step += 1
    logging_members = [m for m in active if m.hooks.log_due(m.step)]
    for member in logging_members:
      member.group.fetch_metrics()  # waits for the step: the rate below is training's
    steps_per_s = 0.0
    if logging_members:
      now = time.perf_counter()
      steps_per_s = (iteration - last_iteration) / (now - last_time)
      last_iteration, last_time = iteration, now
    evaluated = False
    for member in active:
      outcome = member.hooks.after_step(member.step, member.slot, steps_per_s)
      evaluated |= outcome.evaluated
      member.step = outcome.step
      if outcome.done:
        member.done, member.final = True, member.slot.state()
    if evaluated:  # evaluation is not training throughput
      last_iteration, last_time = iteration, time.perf_counter()
    bar.update(min((m.step for m in members if not m.done), default=config.num_steps) - bar.n)
    if interrupts.signum is not None:
      for member in members:
        if not member.done:
          member.hooks.save_now(member.step, member.slot)
        member.hooks.close()
      bar.close()
      raise loop.RunInterruptedError(interrupts.signum, iteration, workdir)
  bar.close()
  for member in members:
    member.hooks.close()
  summary = summarise(config, workdir, specs)
  print(
      f"sweep: {summary['successes']}/{summary['num_members']} members succeeded "
      f"(success rate {summary['success_rate']:.2f}); {os.path.join(workdir, 'sweep.json')}",
      flush=True,
  )
  return [member.final for member in members]


def _target(config: ml_collections.ConfigDict) -> dict[str, Any]:
  target = dict(config.sweep.get("target") or {})
  if not target.get("metric"):
    best = config.get("best_checkpoint") or {}
    target = {"metric": best.get("metric") or None, "mode": best.get("mode", "min")}
  if target.get("mode", "max") not in ("min", "max"):
    raise ConfigError(f"sweep.target.mode must be 'min' or 'max', not {target['mode']!r}")
  return {"metric": target["metric"], "mode": target.get("mode", "max")} | (
      {"threshold": target["threshold"]} if target.get("threshold") is not None else {}
  )


def _tiebreak(config: ml_collections.ConfigDict, target: dict[str, Any]) -> dict[str, Any] | None:
  """The metric that orders members the target leaves tied: the best checkpoint's, if another."""
  best = config.get("best_checkpoint") or {}
  if not best.get("metric") or best["metric"] == target["metric"]:
    return None
  return {"metric": best["metric"], "mode": best.get("mode", "min")}


def _read(evaluation: dict[str, Any], metric: str | None) -> float | None:
  """`metric` of a member's final evaluation, or None if it has none."""
  if not metric or not evaluation:
    return None
  try:
    return runs.read_metric(evaluation, metric)
  except ConfigError:
    return None


def _entry(
    spec: population.Member,
    group: int,
    run_dir: str,
    target: dict[str, Any],
    tiebreak: dict[str, Any] | None,
) -> dict[str, Any]:
  """One member's line of sweep.json (everything read from its run directory)."""
  evaluation = {}
  if os.path.exists(os.path.join(run_dir, "eval.json")):
    with open(os.path.join(run_dir, "eval.json")) as f:
      evaluation = json.load(f)
  flat = {
      f"{name}/{key}": value
      for name, result in evaluation.items()
      if isinstance(result, dict)
      for key, value in result.items()
      if key not in ("protocol", "details")
  }
  records = writers.read_metrics(run_dir) if os.path.exists(f"{run_dir}/metrics.jsonl") else []
  training = [r for r in records if "d/loss" in r]
  verdict = report.verdict(report.load(run_dir))
  value = _read(evaluation, target["metric"])
  reached = value is not None and (
      "threshold" not in target
      or (value >= target["threshold"] if target["mode"] == "max" else value <= target["threshold"])
  )
  healthy = not verdict.startswith("Unhealthy")
  return {
      "member": spec.index,
      "workdir": os.path.basename(run_dir),
      "group": group,
      "hyperparameters": spec.hyperparameters,
      "step": int(training[-1]["step"]) if training else 0,
      "final_metrics": {k: v for k, v in (training or [{}])[-1].items() if "/" in k},
      "eval": flat,
      "health": {
          "verdict": verdict.split()[0].rstrip(":").lower(),  # healthy, recovered, unhealthy
          "summary": verdict,
          "events": [
              f"{e['detector']}@{e['step']} -> {e['action']}" for e in health.read_events(run_dir)
          ],
      },
      "target_value": value,
      "tiebreak_value": _read(evaluation, tiebreak["metric"]) if tiebreak else None,
      "target_reached": bool(reached) if target["metric"] else None,
      "success": healthy and (bool(reached) if target["metric"] else True),
  }


def summarise(
    config: ml_collections.ConfigDict, workdir: str, specs: list[population.Member]
) -> dict[str, Any]:
  """Ranks the members from their run directories; writes and returns W/sweep.json (+ plot)."""
  target = _target(config)
  tiebreak = _tiebreak(config, target)
  groups: dict[tuple, int] = {}
  entries = [
      _entry(
          spec,
          groups.setdefault(population.group_key(spec), len(groups)),
          member_dir(workdir, spec.index),
          target,
          tiebreak,
      )
      for spec in specs
  ]

  def key(value: float | None, mode: str) -> tuple[bool, float]:  # best first, missing last
    return value is None, (-value if mode == "max" else value) if value is not None else 0.0

  def order(entry):  # successes first, then by the target metric, then by the tie-break
    return (
        not entry["success"],
        *key(entry["target_value"], target["mode"]),
        *key(entry["tiebreak_value"], tiebreak["mode"] if tiebreak else "max"),
    )

  ranking = [e["member"] for e in sorted(entries, key=order)]
  for entry in entries:
    entry["rank"] = ranking.index(entry["member"]) + 1
  successes = sum(e["success"] for e in entries)
  summary = {
      "target": target,
      "tiebreak": tiebreak,
      "success_rate": successes / len(entries),
      "successes": successes,
      "num_members": len(entries),
      "ranking": ranking,
      "members": entries,
  }
  utils.write_json(os.path.join(workdir, "sweep.json"), summary, indent=2)
  plot(summary, os.path.join(workdir, "sweep.png"))
  return summary


def _label(entry: dict[str, Any]) -> str:
  values = ", ".join(
      f"{k.removeprefix('optim.')} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
      for k, v in entry["hyperparameters"].items()
  )
  return f"member {entry['member']}: {values}"


def plot(summary: dict[str, Any], path: str) -> str:
  """The ranking: each member's target metric (best at the top), coloured by outcome."""
  from matplotlib.figure import Figure  # noqa: PLC0415  (not pyplot: see gan.report._figure)

  target = summary["target"]
  by_member = {e["member"]: e for e in summary["members"]}
  ranked = [by_member[k] for k in summary["ranking"]][::-1]
  values = [e["target_value"] if e["target_value"] is not None else np.nan for e in ranked]
  colours = [
      "tab:green" if e["success"] else "tab:red" if e["health"]["verdict"] == "unhealthy" else "0.6"
      for e in ranked
  ]
  tiebreak = summary.get("tiebreak")
  fig = Figure(figsize=(7, 0.35 * len(ranked) + 1.4), dpi=100)
  ax = fig.subplots()
  bars = np.nan_to_num(values)
  ax.barh(range(len(ranked)), bars, color=colours)
  ax.set_yticks(range(len(ranked)), [_label(e) for e in ranked], fontsize=8)
  for y, (entry, width) in enumerate(zip(ranked, bars, strict=True)):
    text = "none" if entry["target_value"] is None else f"{entry['target_value']:.4g}"
    if tiebreak and entry["tiebreak_value"] is not None:
      text += f", {tiebreak['metric'].split('/')[-1]} {entry['tiebreak_value']:.4g}"
    ax.text(width, y, f" {text}", va="center", fontsize=7)
  ax.set_xlim(0, 1.4 * max([*bars, target.get("threshold", 0), 1e-12]))
  if "threshold" in target:
    ax.axvline(target["threshold"], color="k", linestyle="--", linewidth=1)
  ax.set_xlabel(target["metric"] or "no target metric")
  ties = f"\nties ranked by {tiebreak['metric']} ({tiebreak['mode']})" if tiebreak else ""
  ax.set_title(
      f"success rate {summary['successes']}/{summary['num_members']} "
      f"(green: healthy and on target; grey: missed the target; red: unhealthy){ties}",
      fontsize=9,
  )
  fig.savefig(path, bbox_inches="tight")
  return path


def main(argv: list[str]) -> None:
  cli.run(argv, train_population)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
