"""Command line: `python -m gan.main --config experiments/X.py[:variant] --workdir DIR`.

Only parses flags and calls `gan.train.train_and_evaluate`. `gan.sweep` uses the
same flags and error handling (`run`) for a population of runs. Config values are
overridden with `--config.key=value`; the config is locked, so a mistyped key
is an error. Bad input (unknown key, wrong type, a setting out of its range
(`gan.validate`), missing config file or a syntax error in it, batch not
divisible by the device count, unwritable workdir, missing dataset, a workdir
whose checkpoint another config made) is reported in one line on stderr with
exit status 2, not a traceback.

Multi-process: the same command in every process, plus `--coordinator
HOST:PORT --num_processes N --process_id I` (or a cluster launcher's
environment, e.g. SLURM's srun); `python -m gan.launch` starts N local ones.
"""

from __future__ import annotations

from gan import platform

platform.configure_xla()  # before JAX initialises its backend

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gan import data, distributed, utils  # noqa: E402

FLAGS = flags.FLAGS
STOPPED = 3  # the exit status of a run the health monitor stopped
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. experiments/mnist.py or experiments/mnist.py:smoke",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])
_RESUME_STOPPED = flags.DEFINE_bool(
    "resume_stopped",
    False,
    "Go on with a run the health monitor stopped, from its newest checkpoint before the trouble.",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a run although the config differs from its saved one in more than its length, "
    "cadences and evaluation.",
)
# Multi-process runs (see gan/distributed.py and the README's "Multi-host training").
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0's coordination service (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "auto: multi-process when the flags above or a cluster launcher's environment (SLURM srun, "
    "Open MPI, JAX_COORDINATOR_ADDRESS) say so; on: always (e.g. Cloud TPU pod slices); "
    "off: never.",
)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    utils.fail(str(e))
  except SyntaxError as e:  # in the config file, which is Python
    utils.fail(f"config file {e.filename}, line {e.lineno}: {e.msg}")
  except (AttributeError, KeyError) as e:  # ml_collections' unknown key in --config.x=...
    # The key, quoted, maybe followed by a line 'Did you mean "x" instead of "y"?'.
    detail = e  # e.g. AttributeError(KeyError("'num_stpes'\nDid you mean ...?"))
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]
    lines = str(detail).splitlines() or [""]
    hint = f"; {lines[1].strip()}" if len(lines) > 1 else ""
    key = lines[0].strip("'\"")
    utils.fail(f"unknown config key '{key}' (the config is locked; check the name{hint})")
  return []


def main(argv: list[str]) -> None:
  from gan import train  # noqa: PLC0415  (after flags, so --help stays fast)

  run(argv, train.train_and_evaluate)


def run(argv: list[str], train_fn: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """Checks the flags, starts the processes' coordination and calls `train_fn(config, workdir)`,
  reporting bad input in one line."""
  if len(argv) > 1:
    utils.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs a dozen INFO lines per checkpoint.
  try:
    config = _CONFIG.value
    config.get("seed")  # a config file that failed to load raises here
  except OSError as e:
    utils.fail(str(e))
  try:
    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value
    )
  except ValueError as e:
    utils.fail(str(e))
  from gan import loop  # noqa: PLC0415
  from gan.evaluation import inception  # noqa: PLC0415  (after flags, so --help stays fast)

  logging.info("Config:\n%s", config)
  options = {
      "resume_stopped": _RESUME_STOPPED.value,
      "allow_config_change": _ALLOW_CONFIG_CHANGE.value,
  }
  try:
    train_fn(config, _WORKDIR.value, **options)
  except inception.InceptionWeightsNotFoundError as e:
    utils.fail(str(e), whole=True)
  except (utils.ConfigError, data.DatasetNotFoundError) as e:
    utils.fail(str(e))
  except loop.RunStoppedError as e:
    utils.fail(f"stopped: {e}", status=STOPPED)
  except loop.RunInterruptedError as e:
    utils.fail(f"interrupted: {e}", status=128 + e.signum)
  except KeyboardInterrupt:
    utils.fail("interrupted: a second Ctrl-C; the last checkpoint is where a rerun resumes", 130)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
