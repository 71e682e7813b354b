"""Population training vs sequential runs: K vmapped members against K runs one after another.

  python benchmarks/sweep.py                        # toy 2D (ring8) and MNIST-MLP
  python benchmarks/sweep.py --experiment toy2d --rounds 9
  python benchmarks/sweep.py --experiment mnist_mlp --members 1 --members 2 --members 4 --members 8

For each experiment the members are those of its config's `sweep` section
(8: seeds x learning rates, `gan.population.expand`). The population's step is
`gan.sweep`'s (`gan.population.make_population_step`: gan.step's train step
vmapped over the members, learning rates traced, pmapped over the local
devices); a sequential run's step is `gan.main`'s plain step of member 0's
config (the same networks, batch and work per member). Both are timed in
interleaved rounds on the same data, and the throughput in member-steps per
second is compared: K / (ms per population step) against 1 / (ms per single
step), since K sequential runs take K times as long as one. Compile time is
reported apart: the population compiles once, K sequential runs compile K
times (each its own process).

`--members K` times a population of the first K members instead (repeat it to
time several sizes in the same interleaved rounds and see how the cost per
member grows with K). Prints one JSON line per experiment and population size:
members, ms per step of each, member steps per second of each, the throughput
ratio, compile seconds of each, and `ratio_with_compile`: the ratio for a
whole run of the experiment's `num_steps`, compile included. Data are random
(uint8 images of MNIST's size and count for MNIST; the 2D mixture is sampled
in the step), so no dataset is read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from gan import platform

platform.configure_xla()  # before JAX starts, as the training entry points do

import jax  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402  (benchmarks/timing.py)
import train_step  # noqa: E402  (benchmarks/train_step.py)

from experiments import mnist, toy2d  # noqa: E402
from gan import data as data_lib  # noqa: E402
from gan import methods, models, population  # noqa: E402
from gan import state as state_lib  # noqa: E402
from gan import step as step_lib  # noqa: E402
from gan.parallel import replicate  # noqa: E402

EXPERIMENTS = {
    "toy2d": lambda: toy2d.get_config("ring8"),
    "mnist_mlp": lambda: mnist.get_config("mlp"),
}


def _data(config) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
  """The dataset the step draws from, and the shape of one example."""
  if config.dataset == "mnist":
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8)
    return {"image": images, "label": rng.integers(0, 10, (60_000,), dtype=np.int32)}, (28, 28, 1)
  split = data_lib.load(config.dataset, config.train_split)
  return split.arrays(), data_lib.example_shape(config.dataset, split)


class Setting(train_step.Setting):
  """One compiled step (a population's or a single run's) with its state on the devices,
  timed by train_step.Setting's `run` (its own `__init__` builds the MNIST DCGAN step)."""

  def __init__(self, step, state, data):
    self.data = data
    self.state = replicate(state, jax.local_devices())
    start = time.perf_counter()
    self.step = step_lib.pmap_step(step).lower(self.state, data).compile()
    self.compile_s = time.perf_counter() - start
    self.round_ms: list[float] = []


def measure(experiment: str, rounds: int, seconds: float, sizes: list[int] | None = None):
  """One result per population size (default: all the sweep's members), timed together."""
  config = EXPERIMENTS[experiment]()
  members = population.expand(config)
  arrays, shape = _data(config)
  data = replicate(arrays, jax.local_devices())
  num_examples = len(arrays["image"])
  G, D = models.build(config.model, axis_name=step_lib.AXIS)
  states = [state_lib.create(m.config, G, D, shape, num_examples) for m in members]
  traced = population.traced_keys(members)
  method = methods.get(config)
  pop_step = population.make_population_step(
      members[0].config, method, methods.Networks(G, D), traced
  )
  pops = {
      k: Setting(pop_step, population.create(members[:k], states[:k]), data)
      for k in sizes or [len(members)]
  }
  single_step = step_lib.make_train_step(method.step_config(members[0].config), G, D)
  single = Setting(single_step, states[0], data)
  timing.interleaved_rounds([single, *pops.values()], rounds, seconds)
  ms_single = statistics.median(single.round_ms)
  steps = config.num_steps
  for k, pop in pops.items():
    ms_pop = statistics.median(pop.round_ms)
    sequential_s = k * (single.compile_s + steps * ms_single / 1e3)
    population_s = pop.compile_s + steps * ms_pop / 1e3
    yield {
        "experiment": experiment,
        "members": k,
        "traced": list(traced),
        "batch": config.batch_size,
        "devices": jax.local_device_count(),
        "ms_per_step_population": round(ms_pop, 2),
        "ms_per_step_single": round(ms_single, 2),
        "member_steps_per_s_population": round(k / ms_pop * 1e3, 1),
        "member_steps_per_s_sequential": round(1 / ms_single * 1e3, 1),
        "throughput_ratio": round(k * ms_single / ms_pop, 2),
        "compile_s_population": round(pop.compile_s, 2),
        "compile_s_sequential": round(k * single.compile_s, 2),
        "num_steps": steps,
        "ratio_with_compile": round(sequential_s / population_s, 2),
        "round_ms_population": [round(x, 2) for x in pop.round_ms],
        "round_ms_single": [round(x, 2) for x in single.round_ms],
        "peak_rss_mb": round(platform.peak_rss_mb(), 1),
    }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", choices=sorted(EXPERIMENTS), action="append")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
  parser.add_argument("--seconds", type=float, default=3.0, help="target seconds per round")
  parser.add_argument(
      "--members", type=int, action="append", help="population size (repeatable; default: all)"
  )
  args = parser.parse_args()
  for experiment in args.experiment or list(EXPERIMENTS):
    for result in measure(experiment, args.rounds, args.seconds, args.members):
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
