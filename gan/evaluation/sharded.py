"""Feature extraction over every local device, with statistics reduced once per run.

For evaluators that push many images through a feature network (Inception
for FID, the project's classifiers):

  extract = sharded.ShardedFeatures(fn, variables)       # fn(variables, images) -> pytree
  share = sharded.process_share(num_samples)             # this process's samples
  stats = sharded.feature_stats(extract, chunks, "pool3", batch_size, keep=pr_samples)
  stats = sharded.reduce_stats(stats)                    # the same moments in every process

`ShardedFeatures` splits each batch over this process's devices (the
variables are copied to each device once, the images sharded along the
batch; per-example networks need no communication). `feature_stats` streams
chunks of images (an iterator: generated or read on demand) into float64 running
moments (`metrics.FeatureStats`), so a 50,000-sample FID holds one chunk of
images and a d x d matrix, never all the features. `reduce_stats` sums the
moments of every process's share, bit-exactly and in process order, so each
process extracts only its share and all of them hold the same statistics; rows
kept for KID and precision/recall stay those of the process's own share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gan.evaluation import metrics

AXIS = "batch"


class ShardedFeatures:
  """`fn(variables, images)` on batches split over the local devices; returns NumPy arrays."""

  def __init__(
      self,
      fn: Callable[[Any, jax.Array], Any],
      variables: Any,
      devices: list[jax.Device] | None = None,
  ):
    self.devices = list(devices or jax.local_devices())
    mesh = Mesh(np.asarray(self.devices), (AXIS,))
    self.variables = jax.device_put(variables, NamedSharding(mesh, P()))
    self._images = NamedSharding(mesh, P(AXIS))
    self._apply = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS)))

  def batch_size(self, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the device count (every device gets a share)."""
    n = len(self.devices)
    return -(-batch_size // n) * n

  def __call__(self, images: np.ndarray, batch_size: int) -> Any:
    """Features of all `images`, in batches of one size (one compilation), the last one padded."""
    batch_size = self.batch_size(batch_size)
    images = np.asarray(images)
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start : start + batch_size]
      pad = batch_size - len(chunk)
      if pad:
        chunk = np.pad(chunk, ((0, pad),) + ((0, 0),) * (chunk.ndim - 1))
      features = self._apply(self.variables, jax.device_put(chunk, self._images))
      out.append(jax.tree.map(lambda x, n=batch_size - pad: np.asarray(x)[:n], features))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)


def feature_stats(
    extract: ShardedFeatures,
    chunks: Iterable[np.ndarray],
    key: str | None,
    batch_size: int,
    keep: int = 0,
) -> metrics.FeatureStats:
  """Running moments of the `key` output (the whole output if None) over chunks of images."""
  stats = metrics.FeatureStats(keep=keep)
  for images in chunks:
    features = extract(images, batch_size)
    stats.update(features if key is None else features[key])
  return stats


def process_share(num: int, index: int | None = None, count: int | None = None) -> range:
  """The samples (of `num`) that process `index` of `count` evaluates: contiguous, near equal."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return range(num * index // count, num * (index + 1) // count)


def sum_in_order(parts: list[np.ndarray]) -> np.ndarray:
  """Sum of float64 arrays in list order (the same bits wherever it is computed)."""
  total = np.zeros_like(parts[0], np.float64)
  for part in parts:
    total += part
  return total


def _allgather_float64(x: np.ndarray) -> list[np.ndarray]:
  """Every process's `x` (float64, same shape everywhere), bit-exact, in process order."""
  from jax.experimental import multihost_utils  # noqa: PLC0415

  # JAX arrays are at most 32-bit here: the float64 bits travel as pairs of uint32.
  words = np.ascontiguousarray(x, np.float64).view(np.uint32)
  everyone = np.asarray(multihost_utils.process_allgather(words))
  return [np.ascontiguousarray(w).view(np.float64).reshape(x.shape) for w in everyone]


def reduce_stats(
    stats: metrics.FeatureStats,
    gather: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> metrics.FeatureStats:
  """`stats` with the moments of every process's summed into it (identity with one process).

  `gather` collects an array from every process in process order (default:
  JAX's multi-process all-gather); tests pass their own.
  """
  if gather is None:
    if jax.process_count() == 1:
      return stats
    gather = _allgather_float64
  # FeatureStats' moments, replaced in place by their sums (it has no merge of its own).
  count = sum_in_order(gather(np.asarray([stats.count], np.float64)))
  stats._sum = sum_in_order(gather(stats._sum))
  stats._outer = sum_in_order(gather(stats._outer))
  stats.count = int(count[0])
  return stats
