"""Cost of the training-health signals (gan.step, gan.health) on the MNIST DCGAN step.

  python benchmarks/health_overhead.py [--batch 64] [--rounds 9]

In the step: the update-to-parameter ratios, the finiteness flag and the guard
that drops a non-finite update (`config.health.enabled` / `guard_nonfinite`),
timed in interleaved rounds against the same step with both off. At log steps
(every `config.log_every` = 100 steps in experiments/mnist.py): the diversity
probe (G and D in inference mode on 64 fixed latents and real images) and the
largest singular value of every D layer, timed per call and amortised per
step. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np
import timing
import train_step  # benchmarks/train_step.py: sets XLA flags before JAX starts

from gan import health
from gan.parallel import replicate, unreplicate


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--log_every", type=int, default=100)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  _, shape, num_examples = train_step.CONFIGS["mnist"]
  images = rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, (num_examples,), dtype=np.int32)
  data = replicate({"image": images, "label": labels}, jax.local_devices())
  on = train_step.Setting(args.batch, data, 64, health=True)
  off = train_step.Setting(args.batch, data, 64, health=False)
  timing.interleaved_rounds([off, on], args.rounds, args.seconds)
  ms_off, ms_on = statistics.median(off.round_ms), statistics.median(on.round_ms)
  paired = [b / a - 1.0 for a, b in zip(off.round_ms, on.round_ms, strict=True)]

  diversity = health.make_diversity_fn(on.G, on.D)
  g, d = unreplicate(on.state.g), unreplicate(on.state.d)
  real = jax.numpy.asarray(images[:64], jax.numpy.float32) / 127.5 - 1.0
  z = jax.random.normal(jax.random.PRNGKey(0), (64, on.config.model.z_dim))
  float(diversity(g, d, real, z))  # compile
  probe_ms = []
  for _ in range(10):
    start = time.perf_counter()
    float(diversity(g, d, real, z))
    max(health.top_singular_values(jax.device_get(d.params)).values())
    probe_ms.append((time.perf_counter() - start) * 1e3)
  probe = statistics.median(probe_ms)
  print(
      json.dumps(
          {
              "batch": args.batch,
              "devices": on.devices,
              "ms_per_step_health_off": round(ms_off, 2),
              "ms_per_step_health_on": round(ms_on, 2),
              "in_step_overhead_pct": round((ms_on / ms_off - 1.0) * 100, 2),
              "paired_round_overhead_pct": [round(x * 100, 1) for x in paired],
              "log_probe_ms": round(probe, 1),
              "log_probe_ms_per_step": round(probe / args.log_every, 3),
              "total_overhead_pct": round(((ms_on + probe / args.log_every) / ms_off - 1) * 100, 2),
          }
      ),
      flush=True,
  )


if __name__ == "__main__":
  main()
