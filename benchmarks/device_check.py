"""One command for a GPU owner: what this machine's devices do with jaxgan, in one JSON file.

  python -m benchmarks.device_check                      # sized for the backend; device_check.json
  python -m benchmarks.device_check --out report.json --quickstart_s 300
  python -m benchmarks.device_check --cpu-small          # the CPU form (as in .ci/run)

In order, printing as it goes:
  device         backend, device kind and count, jax/jaxlib, XLA_FLAGS, the
                 per-backend choices (`gan.platform.choices`)
  device_tests   tests/test_devices.py's accelerator tests (skipped without one)
  mnist_dcgan    the MNIST DCGAN step at batch 64, 256 and 1024
  cifar10_sngan  the CIFAR-10 SNGAN ResNet step at batch 64, n_critic 5
  sweep          8 vmapped sweep members against 8 runs one after another
                 (`benchmarks/sweep.py`, MNIST-MLP)
  quickstart     the MNIST quickstart (experiments/mnist.py) trained for
                 `--quickstart_s` seconds (120), its sample grid written

Each step is reported as images/s, ms/step, compile seconds and peak device
memory (the device's own peak in use, where the backend reports it; settings
run smallest first, so each peak is its setting's) beside the process's peak
RSS. Steps run on random uint8 data of the dataset's shape, all local devices.

On a CPU (or with `--cpu-small`) everything is sized to finish in a minute or
two: the smoke widths, batches 16 and 64, the toy 2D sweep, a 15-second
quickstart. The JSON says which sizing it used. The exit status is 1 if the
device tests failed (after the JSON is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from gan import platform

platform.configure_xla()  # before JAX starts, as the training entry points do

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, BENCHMARKS)  # sweep.py and train_step.py import their siblings by name

import jax  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
import sweep as sweep_bench  # noqa: E402  (benchmarks/sweep.py)
import train_step  # noqa: E402  (benchmarks/train_step.py)

from experiments import cifar10, mnist  # noqa: E402
from gan import methods, models, train  # noqa: E402
from gan import state as state_lib  # noqa: E402
from gan import step as step_lib  # noqa: E402
from gan.parallel import replicate  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizing:
  name: str
  variant: str  # the experiments' variant: "" full size, "smoke" tiny widths
  mnist_batches: tuple[int, ...]
  cifar_batch: int
  sweep: str  # benchmarks/sweep.py experiment
  seconds: float  # timing per step setting
  quickstart_s: float


FULL = Sizing("full", "", (64, 256, 1024), 64, "mnist_mlp", 10.0, 120.0)
CPU_SMALL = Sizing("cpu-small", "smoke", (16, 64), 16, "toy2d", 1.0, 15.0)


def device_info() -> dict:
  devices = jax.local_devices()
  return {
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "local_devices": len(devices),
      "devices": [str(d) for d in devices],
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "choices": dataclasses.asdict(platform.current()),
  }


def peak_device_mb() -> float | None:
  """The first local device's peak memory in use so far (None where it is not reported)."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return round(stats["peak_bytes_in_use"] / 2**20, 1)


def device_tests() -> dict:
  """tests/test_devices.py's accelerator tests, in a pytest process of their own."""
  if importlib.util.find_spec("pytest") is None:
    return {"returncode": 0, "summary": "not run: no pytest (pip install -e '.[cuda12,dev]')"}
  command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
  command += ["tests/test_devices.py", "-k", "on_accelerator"]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
  lines = done.stdout.strip().splitlines()
  return {
      "command": " ".join(command[1:]),
      "returncode": done.returncode,
      "summary": lines[-1] if lines else done.stderr[-500:],
      "skipped": sorted({line.split(": ", 1)[-1] for line in lines if "SKIPPED" in line}),
      "seconds": round(time.perf_counter() - start, 1),
  }


class Step(train_step.Setting):
  """One experiment's compiled step at one batch size (timed by train_step.Setting's `run`)."""

  def __init__(self, config, shape: tuple[int, ...], data, num_examples: int):
    self.config, self.batch = config, config.batch_size
    devices = jax.local_devices()
    G, D = models.build(config.model, axis_name=step_lib.AXIS)
    state = state_lib.create(config, G, D, shape, num_examples)
    step = step_lib.pmap_step(
        step_lib.make_train_step(methods.get(config).step_config(config), G, D)
    )
    self.state, self.data = replicate(state, devices), data
    start = time.perf_counter()
    self.step = step.lower(self.state, self.data).compile()
    self.compile_s = time.perf_counter() - start
    self.round_ms: list[float] = []

  def measure(self, seconds: float) -> dict:
    self.run(2)  # warm-up
    steps = max(3, int(seconds * 1e3 / self.run(3)))
    ms = statistics.median([self.run(steps) for _ in range(3)])
    return {
        "batch": self.batch,
        "n_critic": self.config.n_critic,
        "images_per_s": round(self.batch / ms * 1e3, 1),
        "ms_per_step": round(ms, 2),
        "compile_s": round(self.compile_s, 2),
        "peak_device_mb": peak_device_mb(),
        "peak_rss_mb": round(platform.peak_rss_mb(), 1),
    }


def _random_data(shape: tuple[int, ...], num: int):
  rng = np.random.default_rng(0)
  arrays = {
      "image": rng.integers(0, 256, (num, *shape), dtype=np.uint8),
      "label": rng.integers(0, 10, (num,), dtype=np.int32),
  }
  return replicate(arrays, jax.local_devices())


def step_timings(get_config, variant: str, batches, shape, num, seconds, **overrides) -> list:
  data = _random_data(shape, num)
  results = []
  for batch in batches:
    config = get_config(variant)
    config.batch_size = batch
    for key, value in overrides.items():
      config[key] = value
    results.append(Step(config, shape, data, num).measure(seconds))
    print(f"  {results[-1]}", flush=True)
  return results


def sweep_timing(sizing: Sizing) -> dict:
  rounds, seconds = (3, sizing.seconds) if sizing is FULL else (1, sizing.seconds)
  (result,) = sweep_bench.measure(sizing.sweep, rounds, seconds)
  return {k: v for k, v in result.items() if not k.startswith("round_ms")}


def _train(config, workdir: str, num_steps: int) -> tuple[float, dict]:
  """Trains (or resumes) `config` in `workdir` to `num_steps`: (seconds, last metrics record)."""
  config.num_steps = num_steps
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return seconds, json.loads(f.readlines()[-1])


def quickstart(sizing: Sizing, workdir: str, ms_per_step: float) -> dict:
  """The MNIST quickstart trained for about `sizing.quickstart_s` seconds, then its grid.

  A first part of the run (about a tenth of the budget at the step's measured
  `ms_per_step`) measures the loop's own rate, hooks included, and the time to
  build and compile; the run then resumes to the step count that fills the budget.
  """
  config = mnist.get_config(sizing.variant)
  first = max(20, int(sizing.quickstart_s * 1e2 / ms_per_step) // 2 * 2)
  config.log_every = first // 2  # the second record's rate is training's, without compilation
  config.sample_every = config.checkpoint_every = 10**9  # the last step's only
  config.evals = type(config.evals)()  # the training, not the evaluators' first-use setup
  config.best_checkpoint.metric = ""
  first_s, record = _train(config, workdir, first)
  rate = record["perf/steps_per_s"]
  setup_s = max(0.0, first_s - first / rate)  # building, compiling, writing
  steps = first + max(0, int(rate * (sizing.quickstart_s - first_s - setup_s)))
  rest_s, record = _train(config, workdir, steps) if steps > first else (0.0, record)
  return {
      "variant": sizing.variant or "(full)",
      "steps": steps,
      "seconds": round(first_s + rest_s, 1),
      "setup_s": round(setup_s, 1),
      "loop_steps_per_s": round(record["perf/steps_per_s"], 2),
      "d_loss": round(float(record["d/loss"]), 4),
      "g_loss": round(float(record["g/loss"]), 4),
      "sample_grid": os.path.join(workdir, "samples", f"step_{steps:06d}.png"),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="device_check.json", help="the JSON report")
  parser.add_argument("--workdir", default=None, help="the quickstart's run (default: a temp dir)")
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--cpu-small", action="store_true", help="CPU sizing on any backend")
  size.add_argument("--full", action="store_true", help="full sizing on any backend")
  parser.add_argument("--quickstart_s", type=float, help="quickstart training seconds")
  parser.add_argument("--skip_tests", action="store_true", help="do not run the device tests")
  args = parser.parse_args()
  start = time.perf_counter()
  on_cpu = jax.default_backend() == "cpu"
  sizing = CPU_SMALL if args.cpu_small or (on_cpu and not args.full) else FULL
  if args.quickstart_s:
    sizing = dataclasses.replace(sizing, quickstart_s=args.quickstart_s)
  report: dict = {"sizing": dataclasses.asdict(sizing), "device": device_info()}
  print(f"device: {json.dumps(report['device'])}\nsizing: {sizing.name}", flush=True)

  if not args.skip_tests:
    report["device_tests"] = device_tests()
    print(f"device tests: {report['device_tests']['summary']}", flush=True)
  print("MNIST DCGAN step:", flush=True)
  report["mnist_dcgan"] = step_timings(
      mnist.get_config, sizing.variant, sizing.mnist_batches, (28, 28, 1), 60_000, sizing.seconds
  )
  print("CIFAR-10 SNGAN step (n_critic 5):", flush=True)
  report["cifar10_sngan"] = step_timings(
      cifar10.get_config,
      sizing.variant,
      (sizing.cifar_batch,),
      (32, 32, 3),
      50_000,
      sizing.seconds,
      n_critic=5,
  )
  print(f"sweep ({sizing.sweep}, 8 members vmapped vs 8 sequential runs):", flush=True)
  report["sweep"] = sweep_timing(sizing)
  print(f"  {report['sweep']}", flush=True)
  workdir = args.workdir or tempfile.mkdtemp(prefix="device_check_")
  print(f"quickstart ({sizing.quickstart_s:.0f} s) in {workdir}:", flush=True)
  batch = mnist.get_config(sizing.variant).batch_size
  (timed,) = [r for r in report["mnist_dcgan"] if r["batch"] == batch]
  report["quickstart"] = quickstart(sizing, workdir, timed["ms_per_step"])
  print(f"  {report['quickstart']}", flush=True)
  report["runtime_s"] = round(time.perf_counter() - start, 1)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out} ({report['runtime_s']} s)", flush=True)
  if report.get("device_tests", {}).get("returncode", 0):
    sys.exit("the device tests failed: see device_tests in the JSON")


if __name__ == "__main__":
  main()
