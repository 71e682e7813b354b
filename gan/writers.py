"""What a run writes to its workdir for people: metrics.jsonl, TensorBoard, sample grids.

Layout of a workdir:

  config.json            the run's full config
  metrics.jsonl          one JSON object per log step: {"step", "d/loss", ..., "wall_time"};
                         a process's first record also has "start_time" (when its writer
                         opened), so a resumed run's pauses can be told from its work
  tensorboard/           the same scalars as TensorBoard events
  samples/step_XXXXXX.png  fixed-noise grid from the EMA generator (2D data: scatter plot;
                         class-conditional G: one column per class)
  evals.jsonl            one record per evaluation: metrics with their protocol stamps
                         (and details, e.g. the test error's confusions)
  eval.json              the final (or `gan.evaluate`'s) evaluation
  checkpoints/           Orbax checkpoints (see gan.checkpoint)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image

from gan import utils


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels, rounding to nearest: the one quantisation of the project.

  Used for the PNG grids, the .npz files of `gan.sample` and the images the
  evaluators score, so a number can be reproduced from the written samples.
  """
  pixels = (np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5
  return np.clip(np.floor(pixels), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
  """Tiles images (N, H, W, C) in [-1, 1] into one uint8 (rows*H, cols*W, C) array, 1px gaps."""
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  pixels = to_uint8(images)
  grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = pixels[
        i
    ]
  return grid


def save_image_grid(images: np.ndarray, path: str, columns: int | None = None) -> str:
  grid = image_grid(images, columns)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path


def save_points_plot(points: np.ndarray, means: np.ndarray, path: str) -> str:
  """Scatter plot of generated 2D points (blue) over the mixture's means (red)."""
  from matplotlib.figure import Figure  # noqa: PLC0415  (only needed for 2D data)

  fig = Figure(figsize=(4, 4), dpi=100)  # not pyplot: see `gan.report._figure`
  ax = fig.subplots()
  ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color="tab:blue")
  ax.scatter(means[:, 0], means[:, 1], s=12, marker="x", color="tab:red")
  lim = float(np.abs(means).max()) * 1.4
  ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, bbox_inches="tight")
  return path


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch whenever it is installed (only to accept torch tensors), which
  slows the start of every training process on a machine that has torch (measured in
  benchmarks/README.md); we write Python floats.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
      import tensorboardX  # noqa: F401, PLC0415  (slow import)
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter  # noqa: PLC0415

  return SummaryWriter


class MetricWriter:
  """Appends scalar metrics to metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.path, "a")  # noqa: SIM115  (kept open for the run)
    self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))
    self._start_time: float | None = round(time.time(), 3)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """One record: the step, the scalars and `wall_time` (Unix seconds, as TensorBoard keeps)."""
    record = {"step": step, **{k: float(v) for k, v in scalars.items()}}
    times = {"wall_time": round(time.time(), 3)}
    if self._start_time is not None:
      times["start_time"], self._start_time = self._start_time, None
    self._jsonl.write(json.dumps(record | times) + "\n")
    self._jsonl.flush()
    for name, value in record.items():
      if name != "step":
        self._tb.add_scalar(name, value, step)

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()


class NullWriter:
  """A MetricWriter that writes nothing (processes other than process 0)."""

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def close(self) -> None:
    pass


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """All records of metrics.jsonl, in the order written."""
  return utils.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
