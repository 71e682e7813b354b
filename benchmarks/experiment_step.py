"""Steps per second of an experiment's compiled train step, on its real data, any method.

  python benchmarks/experiment_step.py experiments/mnist_improved_gan.py
  taskset -c 0 python benchmarks/experiment_step.py experiments/mnist_triple_gan.py
  python benchmarks/experiment_step.py experiments/mnist_improved_gan.py \\
      --variant "" --variant "health.guard_nonfinite=False"     # A/B, interleaved
  python benchmarks/experiment_step.py experiments/cifar10_shared_trunk.py:cpu --rounds 2

Unlike `train_step.py` (GAN steps on random uint8 data) this builds the run
exactly as `python -m gan.main` does (`gan.build.run`: the experiment's config,
its dataset from TFDS, its method: GAN, Improved-GAN or Triple-GAN, the
labelled subset) and times `Run.train_step` the way the training loop calls it,
with the backend's bound on steps in flight (two on the CPU). Logging,
evaluation, checkpoints and sample grids are not timed: the number is the
step's, the ceiling for a run's steps/s. Each `--variant` is a comma-separated
list of config overrides (`key=value`, the value a Python literal or else a
string; "" for none); the variants are timed in interleaved rounds
(`timing.py`) and the median round is reported, one JSON line each. `--flops`
adds XLA's count of the compiled step's floating-point operations
(`cost_analysis()`, all devices together): the basis of a time estimate for
another machine (FLOPs / its sustained rate).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import shutil
import statistics
import tempfile
import time

from gan import platform

platform.configure_xla()  # before JAX starts, as the training entry point does

import jax  # noqa: E402
import ml_collections  # noqa: E402
import timing  # noqa: E402  (benchmarks/timing.py)

from gan import build  # noqa: E402


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`experiments/NAME.py[:variant]` (or `NAME[:variant]`) -> the experiment's config."""
  path, _, variant = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return importlib.import_module(f"experiments.{name}").get_config(variant)


def apply_overrides(config: ml_collections.ConfigDict, overrides: str) -> None:
  """Sets each existing `a.b.c=value` of a comma-separated list (values: Python literals)."""
  for item in filter(None, (part.strip() for part in overrides.split(","))):
    key, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:  # as gan.main's --config.KEY: a misspelt key must not be added
      raise SystemExit(f"experiment_step.py: the config has no key {key!r}")
    node[leaf] = value


class Setting:
  """One experiment config's run, its state on the devices and its compiled step."""

  def __init__(self, spec: str, overrides: str):
    config = load_config(spec)
    apply_overrides(config, overrides)
    self.spec, self.overrides, self.batch = spec, overrides, config.batch_size
    self.workdir = tempfile.mkdtemp(prefix="experiment_step_")
    self.run_ = build.run(config, self.workdir)
    self.devices = len(self.run_.layout.devices)
    self.state = self.run_.layout.put(self.run_.state)  # the loop's layout (config.parallel)
    start = time.perf_counter()
    self.state, metrics = self.run_.train_step(self.state, self.run_.data)
    jax.block_until_ready(metrics)
    self.compile_s = time.perf_counter() - start  # tracing, compilation and one step
    self.round_ms: list[float] = []

  def flops(self) -> float:
    """XLA's count of one compiled step's floating-point operations."""
    compiled = self.run_.train_step.lower(self.state, self.run_.data).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # one entry per computation in some jax versions
      return float(sum(a.get("flops", 0.0) for a in analysis))
    return float(analysis.get("flops", 0.0))

  def run(self, steps: int) -> float:
    """Runs `steps` steps as the training loop does and returns the mean ms per step."""
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    # The loop's bound on steps in flight, for this backend (gan.platform.choices).
    queue = platform.StepQueue(platform.choices(self.run_.layout.backend).steps_in_flight)
    for _ in range(steps):
      self.state, metrics = self.run_.train_step(self.state, self.run_.data)
      queue.dispatched(metrics)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("config", help="experiments/NAME.py[:variant]")
  parser.add_argument(
      "--variant", action="append", help="comma-separated key=value overrides (repeatable)"
  )
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
  parser.add_argument("--seconds", type=float, default=10.0, help="target seconds per round")
  parser.add_argument("--flops", action="store_true", help="also report XLA's FLOPs per step")
  args = parser.parse_args()
  settings = [Setting(args.config, overrides) for overrides in args.variant or [""]]
  timing.interleaved_rounds(settings, args.rounds, args.seconds)
  for s in settings:
    ms = statistics.median(s.round_ms)
    record = {
        "config": s.spec,
        "overrides": s.overrides,
        "batch": s.batch,
        "steps_per_s": round(1e3 / ms, 2),
        "ms_per_step": round(ms, 2),
        "compile_s": round(s.compile_s, 2),
        "devices": s.devices,
        "peak_rss_mb": round(platform.peak_rss_mb(), 1),
        "round_ms": [round(x, 1) for x in s.round_ms],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if args.flops:
      record["gflop_per_step"] = round(s.flops() / 1e9, 3)
    print(json.dumps(record), flush=True)
    shutil.rmtree(s.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
