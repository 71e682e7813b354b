"""Behaviour fingerprints: the smoke variant of every experiment, hashed, to compare two versions.

  python -m benchmarks.fingerprint --out before.json            # every experiment, 1 and 2 devices
  python -m benchmarks.fingerprint --compare before.json after.json

Each case trains through the command line (`gan.main`, or `gan.sweep` for
the 2-member toy sweep) in a fresh workdir and a fresh process with the
given number of simulated CPU devices, then hashes what the run leaves
behind: every array of the final checkpoint (parameters, EMAs, optimizer
moments, batch statistics, keys, data order), the training metrics (all but
the `perf/` timings) and the evaluation records. Two versions of the code
that behave the same give the same hashes; a refactor that must keep
behaviour is checked with `--compare`.

Set TFDS_DATA_DIR to the prepared data (MNIST and CIFAR-10) for the
TFDS-backed experiments; without it MNIST falls back to its bundled sample
and the CIFAR-10 cases fail.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile

EXPERIMENTS = (
    "mnist",
    "mnist_improved_gan",
    "mnist_triple_gan",
    "stacked_mnist",
    "toy2d",
    "cifar10",
    "cifar10_dcgan",
    "cifar10_cgan_pd",
    "cifar10_triple_gan",
    "cifar10_shared_trunk",
)
SWEEP = ("toy2d", ["--config.sweep.seed=(0,)", "--config.sweep.members=2"])


def _digest_checkpoint(directory: str) -> str:
  """SHA-256 over every array of the newest checkpoint's state under `directory`, by path.""" ""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415

  steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit())
  path = os.path.join(directory, str(steps[-1]))
  digest = hashlib.sha256()
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(path, "state"))
  for key, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.ascontiguousarray(np.asarray(leaf))
    digest.update(jax.tree_util.keystr(key).encode() + str(value.dtype).encode() + value.tobytes())
  return f"step {steps[-1]}: {digest.hexdigest()[:16]}"


_CLOCK = ("wall_time", "start_time", "time")  # when a record was written, not what it says


def _digest_records(path: str) -> str | None:
  """SHA-256 of a JSON-lines file's records without their timings (`perf/...`, clock times)."""
  if not os.path.exists(path):
    return None
  records = []
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      records.append(
          {k: v for k, v in record.items() if k not in _CLOCK and not k.startswith("perf/")}
      )
  return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def _digest_json(path: str) -> str | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return hashlib.sha256(json.dumps(json.load(f), sort_keys=True).encode()).hexdigest()[:16]


def digest_run(workdir: str) -> dict[str, str | None]:
  """The fingerprint of one run directory."""
  return {
      "checkpoint": _digest_checkpoint(os.path.join(workdir, "checkpoints")),
      "metrics": _digest_records(os.path.join(workdir, "metrics.jsonl")),
      "evals": _digest_records(os.path.join(workdir, "evals.jsonl")),
      "eval.json": _digest_json(os.path.join(workdir, "eval.json")),
  }


def run_case(name: str, devices: int, sweep_flags: list[str] | None = None) -> dict:
  """Trains `experiments/<name>.py:smoke` on `devices` simulated devices; its fingerprint.

  The sweep case (`sweep_flags`): one seed, two learning rates, so two members traced
  in one program.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  workdir = tempfile.mkdtemp(prefix=f"fp_{name}_{devices}_")
  module = "gan.sweep" if sweep_flags is not None else "gan.main"
  command = [sys.executable, "-m", module, f"--config=experiments/{name}.py:smoke"]
  command += [f"--workdir={workdir}", *(sweep_flags or [])]
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
  if sweep_flags is None:
    return digest_run(workdir)
  members = sorted(glob.glob(os.path.join(workdir, "member_*")))
  return {os.path.basename(m): digest_run(m) for m in members}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="write the fingerprints to this JSON file")
  parser.add_argument("--devices", default="1,2", help="comma-separated device counts")
  parser.add_argument("--only", default="", help="comma-separated experiments (default: all)")
  parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
  args = parser.parse_args()
  if args.compare:
    with open(args.compare[0]) as f, open(args.compare[1]) as g:
      before, after = json.load(f), json.load(g)
    same = True
    for case in sorted(set(before) | set(after)):
      verdict = "same" if before.get(case) == after.get(case) else "DIFFERENT"
      same &= verdict == "same"
      print(f"{case:40s} {verdict}")
    sys.exit(0 if same else 1)
  names = [n for n in args.only.split(",") if n] or list(EXPERIMENTS)
  results = {}
  for devices in [int(d) for d in args.devices.split(",")]:
    for name in names:
      results[f"{name}/{devices}dev"] = run_case(name, devices)
      print(f"{name}/{devices}dev", json.dumps(results[f"{name}/{devices}dev"]), flush=True)
    if not args.only or SWEEP[0] in names:
      results[f"sweep2/{devices}dev"] = run_case(SWEEP[0], devices, SWEEP[1])
      print(f"sweep2/{devices}dev", json.dumps(results[f"sweep2/{devices}dev"]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  main()
