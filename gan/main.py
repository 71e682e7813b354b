"""Command line: `python -m gan.main --config experiments/X.py[:variant] --workdir DIR`.

Only parses flags and calls `gan.train.train_and_evaluate`. Config values are
overridden with `--config.key=value`; the config is locked, so a mistyped key
is an error. Bad input (unknown key, wrong type, batch not divisible by the
device count, unwritable workdir, missing dataset) is reported in one line on
stderr with exit status 2, not a traceback.
"""

from __future__ import annotations

import sys

from gan import platform

platform.configure_xla()  # before JAX initialises its backend

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gan import data, utils  # noqa: E402

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/mnist.py or experiments/mnist.py:smoke",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from gan import train  # noqa: PLC0415  (after flags, so --help stays fast)

  logging.info("Config:\n%s", _CONFIG.value)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (utils.ConfigError, data.DatasetNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but flag errors (unknown key, wrong type) become one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """Console entry point."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
