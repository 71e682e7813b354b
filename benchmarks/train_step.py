"""Throughput of the compiled train step of an experiment on the local devices.

  python benchmarks/train_step.py                 # MNIST DCGAN, batch 64 and 256
  python benchmarks/train_step.py --batch 128     # one batch size
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/train_step.py
  python benchmarks/train_step.py --config cifar10 --rounds 2   # SNGAN ResNet, batch 64

Prints one JSON line per batch size: batch, images_per_s, ms_per_step,
compile_s, devices, peak_rss_mb (and the per-round times). The step is the
real one (`gan.step`, pmapped, state donated) on uint8 data of the dataset's
shape held on the devices, with the experiment's full-size networks:

  mnist    experiments/mnist.py: one D update on a real batch and G(z1), then
           one G update with fresh z2 through the updated D, dropout on.
  cifar10  experiments/cifar10.py: the SNGAN ResNet (G 256, D 128 channels,
           spectral norm), n_critic = 5 D updates (each on a real batch and a
           fresh fake one), then one G update.

`images_per_s` counts the generator step's batch; a CIFAR-10 step also shows
D n_critic x batch real images (`real_images_per_s`). `compile_s` is tracing
plus compilation of the step. Batch sizes are measured in interleaved rounds
and the median round is reported, so that slow drifts of a shared machine hit
every setting alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from gan import platform

platform.configure_xla()  # before JAX starts, as the training entry point does

import jax  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402  (benchmarks/timing.py)

from experiments import cifar10, mnist  # noqa: E402
from gan import methods, models  # noqa: E402
from gan import state as state_lib  # noqa: E402
from gan import step as step_lib  # noqa: E402
from gan.parallel import replicate  # noqa: E402

# Experiment -> (config function, example shape, training examples).
CONFIGS = {
    "mnist": (mnist.get_config, (28, 28, 1), 60_000),
    "cifar10": (cifar10.get_config, (32, 32, 3), 50_000),
}


class Setting:
  """One compiled step at one global batch size, with its state on the devices."""

  def __init__(
      self,
      batch: int,
      data,
      conv_chunk: int,
      health: bool = True,
      experiment: str = "mnist",
      dtype: str = "float32",
  ):
    get_config, shape, num_examples = CONFIGS[experiment]
    config = get_config()
    config.batch_size = batch
    config.health.enabled = config.health.guard_nonfinite = health
    self.config = config
    if experiment == "mnist":
      config.model.g.conv_chunk = config.model.d.conv_chunk = conv_chunk
    config.model.dtype = dtype
    devices = jax.local_devices()
    G, D = models.build(config.model, axis_name=step_lib.AXIS)
    state = state_lib.create(config, G, D, shape, num_examples)
    step = step_lib.pmap_step(
        step_lib.make_train_step(methods.get(config).step_config(config), G, D)
    )
    self.batch, self.devices, self.health = batch, len(devices), health
    self.G, self.D = G, D
    self.state, self.data = replicate(state, devices), data
    start = time.perf_counter()
    self.step = step.lower(self.state, self.data).compile()
    self.compile_s = time.perf_counter() - start
    self.round_ms: list[float] = []

  def run(self, steps: int) -> float:
    """Runs `steps` steps and returns the mean ms per step (synchronised at both ends)."""
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.data)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, action="append", help="global batch (repeatable)")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
  parser.add_argument("--seconds", type=float, default=3.0, help="target seconds per round")
  parser.add_argument(
      "--conv_chunk", type=int, default=64, help="MNIST: per-device conv batch slice (0: whole)"
  )
  parser.add_argument("--config", choices=sorted(CONFIGS), default="mnist", help="experiment")
  parser.add_argument(
      "--dtype", choices=("float32", "bfloat16"), default="float32", help="config.model.dtype"
  )
  args = parser.parse_args()
  batches = args.batch or ([64, 256] if args.config == "mnist" else [64])

  _, shape, num_examples = CONFIGS[args.config]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, (num_examples,), dtype=np.int32)
  data = replicate({"image": images, "label": labels}, jax.local_devices())
  settings = [
      Setting(batch, data, args.conv_chunk, experiment=args.config, dtype=args.dtype)
      for batch in batches
  ]
  timing.interleaved_rounds(settings, args.rounds, args.seconds)
  for s in settings:
    ms = statistics.median(s.round_ms)
    print(
        json.dumps(
            {
                "config": args.config,
                "dtype": args.dtype,
                "batch": s.batch,
                "n_critic": s.config.n_critic,
                "images_per_s": round(s.batch / ms * 1e3, 1),
                "real_images_per_s": round(s.batch * s.config.n_critic / ms * 1e3, 1),
                "ms_per_step": round(ms, 2),
                "compile_s": round(s.compile_s, 2),
                "devices": s.devices,
                "conv_chunk": args.conv_chunk if args.config == "mnist" else None,
                "peak_rss_mb": round(platform.peak_rss_mb(), 1),
                "round_ms": [round(x, 1) for x in s.round_ms],
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
  main()
