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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    resume_stopped: bool = False,
    allow_config_change: bool = False,
) -> state_lib.GANState:
  """Trains until `config.num_steps` generator updates; resumes from `workdir` if possible.

  The health monitor (`gan.health`, settings in `config.health`) watches every
  log step and evaluation; its events go to `events.jsonl` and may roll the run
  back to an earlier checkpoint with lower learning rates, or stop it (then
  `gan.loop.RunStoppedError` is raised, and a rerun goes on only with
  `resume_stopped`). A resume with a config that differs in more than its
  length, cadences and evaluation is refused unless `allow_config_change`.
  SIGTERM or SIGINT save the current step and raise `gan.loop.RunInterruptedError`.

  Returns the final state (one copy, on the host).
  """
  platform.prepare(config)  # config.deterministic, before the first computation
  run = build.run(
      config, workdir, resume_stopped=resume_stopped, allow_config_change=allow_config_change
  )
  if run.primary:
    runs.write_config(config, run.workdir)
  return loop.train(run)
