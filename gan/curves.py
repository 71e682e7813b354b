"""Learning curves of one metric over several runs, against step and training time.

  python -m gan.curves classifier/test_error runs/ig/seed_1 runs/ig/seed_2=seed-2 \
      --out docs/figures/ig_stall.png

Reads each run's metrics.jsonl (a run may still be training) and draws the
metric against the generator step (left) and against training hours (right),
one line per run (`WORKDIR=LABEL` names a line; the default is the folder's
name). Prints a Markdown table: per run the last step, the metric there, its
lowest (or highest, `--mode max`) value and where, and the training hours.

Training hours count the time each process spent from its start
(`start_time`, written in a process's first record) to its records, summed
over the processes of a resumed run, so the pause between a kill and the
resume is not counted but the steps a killed process had done after its last
checkpoint are (that time was spent). Where a rollback rewrote steps, the last
record of a step wins, as in `gan.report`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from gan import report, writers


def training_hours(records: list[dict[str, float]]) -> dict[int, float]:
  """Per step, the hours its run had trained when the step's (last) record was written."""
  hours: dict[int, float] = {}
  base = elapsed = 0.0
  start = None
  for record in records:
    if "start_time" in record:  # a process's first record: a new stretch of training
      base, start = elapsed, float(record["start_time"])
    if start is None or "wall_time" not in record:
      continue
    elapsed = base + (float(record["wall_time"]) - start) / 3600
    hours[int(record["step"])] = elapsed
  return hours


def curve(workdir: str, metric: str) -> dict[str, np.ndarray]:
  """`steps`, `values` and `hours` of `metric` in a run (empty arrays if it has none)."""
  records = writers.read_metrics(workdir)
  steps, values = report.series(records).get(metric, (np.zeros(0, int), np.zeros(0)))
  hours = training_hours(records)
  return {"steps": steps, "values": values, "hours": np.array([hours[int(s)] for s in steps])}


def table(curves: dict[str, dict[str, np.ndarray]], metric: str, mode: str = "min") -> str:
  """A Markdown table of each run's last and best value of `metric`."""
  pick = np.argmin if mode == "min" else np.argmax
  lines = [
      f"| run | last step | {metric} at the last step | {mode} (at step) | training hours |",
      "| --- | --- | --- | --- | --- |",
  ]
  for label, c in curves.items():
    if not len(c["steps"]):
      lines.append(f"| {label} | no {metric} yet | | | |")
      continue
    best = int(pick(c["values"]))
    lines.append(
        f"| {label} | {int(c['steps'][-1]):,} | {c['values'][-1]:.4g} | "
        f"{c['values'][best]:.4g} ({int(c['steps'][best]):,}) | {c['hours'][-1]:.2f} |"
    )
  return "\n".join(lines)


def plot(curves: dict[str, dict[str, np.ndarray]], metric: str, path: str, log: bool = False):
  """Writes the two panels (against step, against training hours) to `path`."""
  from matplotlib.figure import Figure  # noqa: PLC0415  (not pyplot: see gan.report._figure)

  fig = Figure(figsize=(10, 3.6))
  by_step, by_time = fig.subplots(1, 2)
  for label, c in curves.items():
    marker = "o" if len(c["steps"]) < 40 else None
    by_step.plot(c["steps"], c["values"], label=label, lw=1, marker=marker, ms=3)
    by_time.plot(c["hours"], c["values"], label=label, lw=1, marker=marker, ms=3)
  for ax, xlabel in ((by_step, "generator step"), (by_time, "training hours")):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if log:
      ax.set_yscale("log")
  by_step.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("metric", help="a metrics.jsonl key, e.g. classifier/test_error")
  parser.add_argument("runs", nargs="+", help="WORKDIR or WORKDIR=LABEL")
  parser.add_argument("--out", help="write the figure here (PNG)")
  parser.add_argument("--mode", choices=("min", "max"), default="min")
  parser.add_argument("--log", action="store_true", help="log scale for the metric")
  args = parser.parse_args(argv)
  curves = {}
  for run in args.runs:
    workdir, _, label = run.partition("=")
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      sys.exit(f"error: no metrics.jsonl in {workdir}")
    curves[label or os.path.basename(os.path.normpath(workdir))] = curve(workdir, args.metric)
  print(table(curves, args.metric, args.mode))
  if args.out:
    plot(curves, args.metric, args.out, args.log)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
