"""Command line: `python -m gan.sample --workdir W --num N --out FILE.npz [--checkpoint ...]`.

Writes N samples of a run's generator (EMA by default) to an .npz, so anyone
can score them with their own tools: array `x` holds uint8 images NHWC (the
same quantisation as the PNG grids and the evaluators) or float32 points
(N, 2) for the 2D mixtures. A class-conditional generator (cGAN, Triple-GAN)
also writes `y`, the int32 class of each sample: sample i is of class i mod K,
or every sample of class `--label`. Latents come from PRNGKey(--seed), so the
same command writes the same file."""

from __future__ import annotations

import sys

from gan import platform

platform.configure_xla()  # before JAX initialises its backend

from absl import app, flags, logging  # noqa: E402

from gan import utils  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_NUM = flags.DEFINE_integer("num", 10_000, "Number of samples.")
_OUT = flags.DEFINE_string("out", None, "Output .npz file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
_RAW = flags.DEFINE_bool("raw", False, "Sample the raw generator instead of its EMA.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the latents.")
_LABEL = flags.DEFINE_integer(
    "label", None, "Conditional generators: sample only this class (default: all, in turn)."
)
flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    utils.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _NUM.value <= 0:
    utils.fail(f"--num must be positive, not {_NUM.value}")
  try:
    from gan import runs  # noqa: PLC0415  (after flags, so --help stays fast)

    arrays = runs.write_samples(
        _WORKDIR.value,
        _NUM.value,
        _OUT.value,
        _CHECKPOINT.value,
        _RAW.value,
        _SEED.value,
        _LABEL.value,
    )
  except utils.ConfigError as e:
    utils.fail(str(e))
  except OSError as e:  # a read-only or missing directory
    utils.fail(utils.describe_os_error(e))
  x = arrays["x"]
  y = f", y {arrays['y'].dtype} {tuple(arrays['y'].shape)}" if "y" in arrays else ""
  print(f"wrote {_OUT.value}: x {x.dtype} {tuple(x.shape)}{y}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
