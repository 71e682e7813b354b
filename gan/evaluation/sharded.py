"""Feature extraction over every local device, with statistics reduced once per run.

The evaluators push their images through a feature network (the FID
Inception, the project's classifiers) with `ShardedFeatures`, which splits
each batch over this process's devices: the variables are copied to each
device once and the images sharded along the batch (per-example networks
need no communication). Generated samples are streamed, so a 50,000-sample
FID holds one chunk of images and a d x d matrix, never all the features:

  extract = sharded.ShardedFeatures(fn, variables)     # fn(variables, images) -> pytree
  stats = sharded.share_stats(extract, make_chunk, num, chunk_size, "pool3", batch_size, keep=k)

`share_stats` has each process make and extract only its share of the chunks
(`process_share`), then `reduce_stats` sums the float64 moments of all shares
in process order and gathers the kept rows (for KID and precision/recall), so
every process holds the same statistics: those of the first `keep` samples
and of all `num`, whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from gan import utils
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

  def __call__(self, images: np.ndarray, batch_size: int, progress: str | None = None) -> Any:
    """Features of all `images`, in batches of one size (one compilation), the last one padded.

    With `progress`, a bar of that title shows if it takes more than a few seconds.
    """
    apply = lambda x: self._apply(self.variables, jax.device_put(x, self._images))  # noqa: E731
    return batched(apply, images, self.batch_size(batch_size), progress)


def batched(fn, images: np.ndarray, batch_size: int, progress: str | None = None) -> Any:
  """`fn` (fixed batch size: one compilation) on all `images`, the last batch padded.

  `fn` returns a pytree of arrays with the batch first; so does this, over all images.
  With `progress`, a bar of that title shows if it takes more than a few seconds.
  """
  images = np.asarray(images)
  if not len(images):
    raise ValueError("no images to extract features from")
  out = []
  with _bar(len(images), progress) as bar:
    for start in range(0, len(images), batch_size):
      chunk = images[start : start + batch_size]
      pad = batch_size - len(chunk)
      if pad:
        chunk = np.pad(chunk, ((0, pad),) + ((0, 0),) * (chunk.ndim - 1))
      features = fn(chunk)
      out.append(jax.tree.map(lambda x, n=batch_size - pad: np.asarray(x)[:n], features))
      bar.update(batch_size - pad)
  return jax.tree.map(lambda *parts: np.concatenate(parts), *out)


def _bar(total: int, title: str | None) -> tqdm:
  """A bar of images, shown after 3 s if it has a title (a line every 30 s in a log file)."""
  return tqdm(
      total=total,
      desc=title,
      unit=" images",
      disable=title is None,
      delay=3.0,
      mininterval=utils.progress_interval(),
  )


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


def share_stats(
    extract: ShardedFeatures,
    make_chunk: Callable[[int, int], np.ndarray],
    num: int,
    chunk_size: int,
    key: str | None,
    batch_size: int,
    keep: int = 0,
    index: int | None = None,
    count: int | None = None,
    gather: Callable[[np.ndarray], list[np.ndarray]] | None = None,
    progress: str | None = None,
) -> metrics.FeatureStats:
  """Statistics of the features of `num` images, made by `make_chunk(start, size)`.

  The images are cut into chunks of `chunk_size` at the same places whatever the
  number of processes; process `index` of `count` (default: this one of all) makes
  and extracts its share of the chunks, and the shares are reduced over the processes
  (`reduce_stats`, with `gather`), so each process holds the statistics of all `num`.
  With `progress`, process 0 shows a bar of that title (and of its share, with several
  processes) if it takes more than a few seconds.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  starts = list(range(0, num, chunk_size))
  mine = [starts[i] for i in process_share(len(starts), index, count)]
  sizes = [min(chunk_size, num - start) for start in mine]
  if index != 0 or progress is None:
    title = None
  else:
    title = f"{progress}, process 0's share" if count > 1 else progress
  with _bar(sum(sizes), title) as bar:

    def chunks():
      for start, size in zip(mine, sizes, strict=True):
        yield make_chunk(start, size)
        bar.update(size)  # counted once the previous chunk's features are in

    stats = feature_stats(extract, chunks(), key, batch_size, keep)
  return reduce_stats(stats, gather)


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
  """`stats` with every process's moments summed into it and the kept rows gathered.

  The kept rows become the first `stats.keep` of all processes' kept rows in
  process order: with contiguous shares (`process_share`), the same rows as one
  process would keep. Identity with one process. `gather` collects a float64
  array from every process in process order (default: JAX's multi-process
  all-gather); tests pass their own.
  """
  if gather is None:
    if jax.process_count() == 1:
      return stats
    gather = _allgather_float64
  # FeatureStats' moments, replaced in place by their sums (it has no merge of its own).
  # First, in one gather, each process's count, feature size and number of kept rows: a
  # process whose share is empty has no moments yet, and all must gather equal shapes.
  mine = stats.features
  dim = 0 if stats._sum is None else len(stats._sum)
  heads = gather(np.asarray([stats.count, dim, len(mine)], np.float64))
  dim = int(max(h[1] for h in heads))
  if stats._sum is None:
    stats._sum, stats._outer = np.zeros(dim), np.zeros((dim, dim))
  stats._sum = sum_in_order(gather(stats._sum))
  stats._outer = sum_in_order(gather(stats._outer))
  stats.count = int(sum_in_order([h[:1] for h in heads])[0])
  if stats.keep:
    # Every process sends `keep` rows, its own then zeros. (The rows of process 0 alone
    # often suffice; the others still need them, so all send.)
    padded = np.zeros((stats.keep, dim), np.float64)
    if len(mine):
      padded[: len(mine)] = mine
    rows = [r[: int(h[2])] for r, h in zip(gather(padded), heads, strict=True)]
    kept = np.concatenate(rows)[: stats.keep].astype(np.float32)  # float32 -> 64 -> 32: exact
    stats._kept, stats._num_kept = [kept], len(kept)
  return stats
