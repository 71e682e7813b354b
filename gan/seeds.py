"""Command line: one experiment over several seeds, reported as median and mean +- std.

  python -m gan.seeds --config experiments/mnist_improved_gan.py --workdir W --seeds 0,1,2
  python -m gan.seeds --config experiments/mnist_triple_gan.py:reference --workdir W \
      --seeds 0,1,2 --vary=label_seed

`--vary=seed` (the default) trains seed s in `W/seed_s` with `config.seed = s`:
the initialisation and the training trajectory, on one labelled subset
(a semi-supervised run's `config.semi.label_seed`, the same for every s
unless overridden). `--vary=label_seed` trains `W/label_seed_s` with
`config.semi.label_seed = s` and `config.seed` as configured: other labelled
subsets, one model seed, as the semi-supervised papers' code varies them.
The runs go one after the other, resuming any that were interrupted and
skipping finished ones; then each run's `eval.json` is read and
`W/seeds.json` written: {"metric", "varied" (the config key), "values":
{seed: value}, "median", "mean", "std" (sample std, ddof 1), "n",
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
_VARY = flags.DEFINE_enum(
    "vary",
    "seed",
    ["seed", "label_seed"],
    "What the seeds set: config.seed (the training trajectory) or config.semi.label_seed "
    "(the labelled subset of a semi-supervised run).",
)
# Where each kind of seed lives in the config; seed s of kind k trains in W/k_s.
VARIED = {"seed": "seed", "label_seed": "semi.label_seed"}


def summarise(values: dict[int, float], metric: str) -> dict[str, Any]:
  """Median, mean and sample standard deviation over seeds."""
  array = np.asarray(list(values.values()), np.float64)
  return {
      "metric": metric,
      "values": {str(seed): value for seed, value in values.items()},
      "median": float(np.median(array)),
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


def run_seeds(
    config, workdir: str, seeds: list[int], metric: str, vary: str = "seed"
) -> dict[str, Any]:
  """Trains (or resumes) every seed, then writes and returns `workdir/seeds.json`.

  `vary` is a key of `VARIED`: which seed of the config each s sets.
  """
  from gan import train  # noqa: PLC0415  (heavy; after flag parsing)

  if vary not in VARIED:
    raise utils.ConfigError(f"vary must be one of {sorted(VARIED)}, got {vary!r}")
  if vary == "label_seed" and "semi" not in config:
    raise utils.ConfigError("--vary=label_seed needs a semi-supervised config (config.semi)")
  run_dirs = {seed: os.path.join(workdir, f"{vary}_{seed}") for seed in seeds}
  values = {}
  for seed in seeds:
    with config.unlocked():
      if vary == "label_seed":
        config.semi.label_seed = seed
      else:
        config.seed = seed
    print(f"{vary} {seed}: {run_dirs[seed]}", flush=True)
    train.train_and_evaluate(config, run_dirs[seed])
    with open(os.path.join(run_dirs[seed], "eval.json")) as f:
      values[seed] = runs.read_metric(json.load(f), metric)
    print(f"{vary} {seed}: {metric} = {values[seed]:.6g}", flush=True)
  summary = {"varied": VARIED[vary], **summarise(values, metric)}
  summary["wall_time_s"] = {str(seed): wall_time(run_dirs[seed]) for seed in seeds}
  with utils.replacing(os.path.join(workdir, "seeds.json")) as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv: list[str]) -> None:
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    utils.fail(f"--seeds takes comma-separated integers, got {','.join(_SEEDS.value)!r}")

  def train_seeds(config, workdir: str) -> None:
    summary = run_seeds(config, workdir, seeds, _METRIC.value, _VARY.value)
    print(
        f"{summary['metric']}: median {summary['median']:.6g}, mean {summary['mean']:.6g} "
        f"+- {summary['std']:.3g} (sample std) over {summary['n']} values of "
        f"config.{summary['varied']} {list(summary['values'])}"
    )

  cli.run(argv, train_seeds)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
