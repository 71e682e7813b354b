"""Command line: one experiment over several seeds, reported as mean +- std.

  python -m gan.seeds --config experiments/mnist_improved_gan.py --workdir W --seeds 0,1,2

Trains seed s in `W/seed_s` (`config.seed = s`: the initialisation and the
training trajectory; a semi-supervised run's labelled subset has its own
seed, `config.semi.label_seed`, the same for every s unless overridden), one
after the other, resuming any that were interrupted and skipping finished
ones; then reads each run's `eval.json` and writes `W/seeds.json`: {"metric",
"values": {seed: value}, "mean", "std" (sample std, ddof 1), "n",
"wall_time_s": {seed: seconds of its training loop}}.
`--metric` is a top-level key of eval.json ("test_error", the default) or
"<evaluator>/<metric>" (e.g. "mnist_cnn/fcd"). Config overrides
(`--config.num_steps=...`) apply to every seed.
"""

from __future__ import annotations

from gan import platform

platform.configure_xla()  # before JAX initialises its backend

import json  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from gan import main as cli  # noqa: E402  (--config, --workdir and the error handling are gan.main's)
from gan import runs, utils, writers  # noqa: E402

# gan.main defines --config and --workdir (here: the directory holding one run
# per seed); defining them again would clash whenever both modules are imported
# (gan.sweep imports gan.main, and so do the tests).
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated seeds.")
_METRIC = flags.DEFINE_string("metric", "test_error", "eval.json key, or '<evaluator>/<metric>'.")


def summarise(values: dict[int, float], metric: str) -> dict[str, Any]:
  """Mean and sample standard deviation over seeds."""
  array = np.asarray(list(values.values()), np.float64)
  return {
      "metric": metric,
      "values": {str(seed): value for seed, value in values.items()},
      "mean": float(array.mean()),
      "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
      "n": len(array),
  }


def wall_time(run_dir: str) -> float | None:
  """Seconds a run spent in its training loops (None if its records carry no wall_time).

  Each process that trained the run (the first, then every resume) counts from
  its first record's `start_time` (when its writer opened, after loading the
  data and state) to its last record, so the pauses between a stopped run and
  its resume are left out and steps redone after a resume count again. Records
  written before `start_time` existed mark a resume only by a step that does
  not advance, and count from their first record.
  """
  segments: list[list[float]] = []
  last_step = None
  for record in writers.read_metrics(run_dir):
    if "wall_time" not in record:
      continue
    resumed = last_step is not None and record["step"] <= last_step
    if not segments or "start_time" in record or resumed:
      segments.append([record.get("start_time", record["wall_time"])])
    segments[-1].append(record["wall_time"])
    last_step = record["step"]
  if not segments or sum(len(s) for s in segments) < 2:
    return None
  return round(sum(s[-1] - s[0] for s in segments), 1)


def run_seeds(config, workdir: str, seeds: list[int], metric: str) -> dict[str, Any]:
  """Trains (or resumes) every seed, then writes and returns `workdir/seeds.json`."""
  from gan import train  # noqa: PLC0415  (heavy; after flag parsing)

  values = {}
  for seed in seeds:
    run_dir = os.path.join(workdir, f"seed_{seed}")
    with config.unlocked():
      config.seed = seed
    print(f"seed {seed}: {run_dir}", flush=True)
    train.train_and_evaluate(config, run_dir)
    with open(os.path.join(run_dir, "eval.json")) as f:
      values[seed] = runs.read_metric(json.load(f), metric)
    print(f"seed {seed}: {metric} = {values[seed]:.6g}", flush=True)
  summary = summarise(values, metric)
  summary["wall_time_s"] = {
      str(seed): wall_time(os.path.join(workdir, f"seed_{seed}")) for seed in seeds
  }
  with utils.replacing(os.path.join(workdir, "seeds.json")) as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv: list[str]) -> None:
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    utils.fail(f"--seeds takes comma-separated integers, got {','.join(_SEEDS.value)!r}")

  def train_seeds(config, workdir: str) -> None:
    summary = run_seeds(config, workdir, seeds, _METRIC.value)
    print(
        f"{summary['metric']}: {summary['mean']:.6g} +- {summary['std']:.3g} "
        f"(sample std) over {summary['n']} seeds {list(summary['values'])}"
    )

  cli.run(argv, train_seeds)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
