"""Side-by-side throughput of the JAX step and the PyTorch bar, in interleaved runs.

  python benchmarks/compare_torch.py [--runs 3] [--torch-python /path/to/python]

Alternates `train_step.py` and `torch_reference.py` processes `--runs` times
(each process measures batch 64 and 256 in interleaved rounds), then prints
one JSON line per batch size with the median images/s of each and their
ratio. `--torch-python` is an interpreter that has torch installed (torch is
not a jaxgan dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _lines(cmd: list[str]) -> list[dict]:
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--torch-python", default=sys.executable)
  args = parser.parse_args()
  rounds = ["--rounds", str(args.rounds)]
  results: dict[tuple[str, int], list[float]] = {}
  for _ in range(args.runs):
    for name, cmd in (
        ("jax", [sys.executable, os.path.join(HERE, "train_step.py"), *rounds]),
        ("torch", [args.torch_python, os.path.join(HERE, "torch_reference.py"), *rounds]),
    ):
      for line in _lines(cmd):
        results.setdefault((name, line["batch"]), []).append(line["images_per_s"])
        print(json.dumps({"run": name, **line}), file=sys.stderr, flush=True)
  for batch in sorted({b for _, b in results}):
    jax_ips = statistics.median(results[("jax", batch)])
    torch_ips = statistics.median(results[("torch", batch)])
    print(
        json.dumps(
            {
                "batch": batch,
                "jax_images_per_s": jax_ips,
                "torch_images_per_s": torch_ips,
                "ratio": round(jax_ips / torch_ips, 3),
                "jax_runs": results[("jax", batch)],
                "torch_runs": results[("torch", batch)],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
  main()
