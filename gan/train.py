"""`train_and_evaluate(config, workdir)`: the one public entry to training.

The command line (`gan.main`), notebooks and tests call it alike. It builds
the run (`gan.build`: data on the devices, networks, the initial or resumed
state, evaluators, the mapped step), records the config in the workdir and
hands the run to the training loop (`gan.loop`), whose hooks write metrics,
fixed-noise sample grids from the EMA generator, evaluations and
checkpoints, and act on the health monitor's events.
"""

from __future__ import annotations

import ml_collections

from gan import build, loop, platform, runs
from gan import state as state_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.GANState:
  """Trains until `config.num_steps` generator updates; resumes from `workdir` if possible.

  The health monitor (`gan.health`, settings in `config.health`) watches every
  log step and evaluation; its events go to `events.jsonl` and may roll the run
  back to an earlier checkpoint with lower learning rates, or stop it.

  Returns the final state (one copy, on the host).
  """
  platform.prepare(config)  # config.deterministic, before the first computation
  run = build.run(config, workdir)
  if run.primary:
    runs.write_config(config, run.workdir)
  return loop.train(run)
