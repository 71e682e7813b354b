"""Small helpers shared by the loop and the entry points: cadence, input checks, errors, cache."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from typing import IO, Any, NoReturn

import numpy as np

from gan import faults


class ConfigError(ValueError):
  """A bad setting or input that the command line reports in one line."""


def fail(message: str, status: int = 2, whole: bool = False) -> NoReturn:
  """Reports bad input the way command-line tools do: on stderr, exit status 2 (or `status`).

  One line (the first and last of a long message), unless `whole`: messages
  that are instructions (which file to fetch and where) are printed entire.
  """
  lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
  summary = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
  print(f"error: {str(message).strip() if whole else summary}", file=sys.stderr)
  sys.exit(status)


def describe_os_error(e: OSError) -> str:
  """An OSError in one line, the file first: "/run/eval.json: Read-only file system"."""
  if e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"
  return str(e)


def read_jsonl(path: str) -> list[dict]:
  """The records of a .jsonl file a run appends to, without the lines that are not JSON.

  A writer killed mid-line leaves a partial line (the last one, or, once a resumed
  run appends, one in the middle); a reader running beside a writer may see one.
  They are skipped with a one-line warning on stderr.
  """
  records, bad = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        bad.append(number)
  if bad:
    lines = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    print(
        f"warning: skipped {len(bad)} partial line(s) of {path} (line {lines})",
        file=sys.stderr,
    )
  return records


def cache_root() -> str:
  """Where derived files are cached: `$JAXGAN_CACHE`, or ~/.cache/jaxgan.

  Holds decoded dataset splits (`gan.data`), Inception reference statistics
  (`gan.evaluation`) and the per-epoch state of a classifier being trained
  (`gan.evaluation.classifiers`); safe to delete.
  """
  return os.path.expanduser(os.environ.get("JAXGAN_CACHE", "~/.cache/jaxgan"))


def load_npz(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
  """The arrays of a cached .npz, or None if it is absent, damaged or lacks one of `keys`.

  Also removes the folder's stale partial files (`save_npz`).
  """
  remove_stale_partials(os.path.join(glob.escape(os.path.dirname(path)), "*.tmp"))
  try:
    with np.load(path, allow_pickle=False) as f:
      if not set(keys) <= set(f.files):
        return None
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return None


def save_npz(path: str, **arrays) -> None:
  """Writes an uncompressed .npz atomically: readers (other processes) never see half a file.

  Raises OSError if it cannot; nothing is left behind then. The partial files
  (`<name>.*.tmp`) of writers that were killed are removed by the folder's next
  `save_npz` or `load_npz` once untouched for `STALE_PARTIAL_SECONDS`.
  """
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  with replacing(path, "wb") as f:
    np.savez(f, **arrays)
  remove_stale_partials(os.path.join(glob.escape(folder), "*.tmp"))


@contextlib.contextmanager
def replacing(path: str, mode: str = "w", partial: str | None = None) -> Iterator[IO]:
  """A file to write that replaces `path` in one rename when the block ends without error.

  It is written as `<partial>.<random>.tmp` (`partial` defaults to `path`; it must be on
  the same filesystem), so readers never see half a file; after an error nothing is left
  behind. A killed writer's partial stays for its folder's `remove_stale_partials`.
  """
  folder, prefix = os.path.split(partial or path)
  try:
    handle, written = tempfile.mkstemp(dir=folder, prefix=f"{prefix}.", suffix=".tmp")
  except OSError as e:  # name the file the caller writes, not its partial
    raise OSError(e.errno, e.strerror, path) from None
  try:
    os.fchmod(handle, 0o644)  # readable like a file open() makes, not mkstemp's 0600
    with os.fdopen(handle, mode) as f:
      yield f
    faults.point(f"replacing:{os.path.basename(path)}")  # written, not yet in place
    os.replace(written, path)
  finally:
    if os.path.exists(written):
      os.remove(written)


def write_json(path: str, record: Any, **dump_args: Any) -> None:
  """Writes `record` as JSON to `path` atomically (`replacing`): a kill leaves the old file
  or the new one, never an empty or half-written one."""
  with replacing(path) as f:
    json.dump(record, f, **dump_args)


# A partial file nobody has written to for this long is a killed writer's, not a live one's
# (a live writer, even of a whole dataset split, finishes in seconds).
STALE_PARTIAL_SECONDS = 3600.0


def remove_stale_partials(pattern: str) -> None:
  """Removes files or directories matching glob `pattern` untouched for STALE_PARTIAL_SECONDS."""
  now = time.time()
  for partial in glob.glob(pattern):
    try:
      if now - os.stat(partial).st_mtime <= STALE_PARTIAL_SECONDS:
        continue
      if os.path.isdir(partial):
        shutil.rmtree(partial)
      else:
        os.remove(partial)
    except OSError:  # removed by another process meanwhile
      pass


def every(step: int, n: int) -> bool:
  """True every `n` steps (`n <= 0` means never): the one cadence rule for log/sample/ckpt."""
  return n > 0 and step % n == 0


def progress_interval() -> float:
  """Seconds between progress-bar redraws: 0.5 where the bar is redrawn in place (a terminal,
  a Jupyter notebook), 30 in a log file, where every redraw is a line."""
  return 0.5 if sys.stderr.isatty() or "ipykernel" in sys.modules else 30.0


def check_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks that files can be written in it."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from e
  return workdir


def check_batch(global_batch: int, num_devices: int) -> int:
  """Per-device batch size; the global batch must split evenly over the devices."""
  if global_batch <= 0 or global_batch % num_devices:
    raise ConfigError(
        f"batch_size {global_batch} is not divisible by the {num_devices} devices; "
        f"use a multiple of {num_devices}"
    )
  return global_batch // num_devices
