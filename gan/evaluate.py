"""Command line: `python -m gan.evaluate --workdir W [--checkpoint best|latest|STEP]`.

Scores a checkpoint of a run with the evaluators of its config (or, for runs
whose config declares none, the default evaluators of its dataset; with
--inception also FID, KID and precision/recall on FID-Inception features)
and writes
`W/eval.json`: {"step", "checkpoint", <eval name>: {<metric>: value,
"protocol": {...}[, "details": {...}]}}. Errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import json
import os
import sys

from gan import platform

platform.configure_xla()  # before JAX initialises its backend

from absl import app, flags, logging  # noqa: E402

from gan import data, utils  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
_RAW = flags.DEFINE_bool("raw", False, "Score the raw generator instead of its EMA.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Override every evaluator's sample count.")
_INCEPTION = flags.DEFINE_bool(
    "inception", False, "Also compute FID/KID/PR with the FID InceptionV3 (needs its weights)."
)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    utils.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _NUM_SAMPLES.value is not None and _NUM_SAMPLES.value <= 0:
    utils.fail(f"--num_samples must be positive, not {_NUM_SAMPLES.value}")
  try:
    from gan import runs  # noqa: PLC0415  (after flags, so --help stays fast)
    from gan.evaluation import inception  # noqa: PLC0415

    record = runs.evaluate(
        _WORKDIR.value, _CHECKPOINT.value, _RAW.value, _NUM_SAMPLES.value, _INCEPTION.value
    )
  except inception.InceptionWeightsNotFoundError as e:
    utils.fail(str(e), whole=True)
  except (utils.ConfigError, data.DatasetNotFoundError) as e:
    utils.fail(str(e))
  except OSError as e:  # a read-only or missing directory
    utils.fail(utils.describe_os_error(e))
  print(json.dumps(record, indent=2))
  print(f"wrote {os.path.join(_WORKDIR.value, 'eval.json')}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
