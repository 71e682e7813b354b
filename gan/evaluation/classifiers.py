"""Domain classifiers for offline metrics: architectures, training, and the on-disk cache.

A classifier trained by the project on a dataset's real training split gives
metrics that need no downloaded weights: the Fréchet Classifier Distance (FD
on its penultimate features), class coverage and confidence (see
`gan.evaluation.evaluators`), and the Stacked-MNIST mode count.

Trained classifiers are cached under `<cache>/classifiers/<dataset>-<arch>-<recipe hash>/`
(`variables.msgpack` + `info.json` with the test accuracy, the splits, the
weights' SHA-256 and a digest of the training images and labels);
`<cache>` is `$JAXGAN_CACHE` or `~/.cache/jaxgan`. Where the dataset is
prepared, a cached classifier trained on other data (a re-prepared dataset,
the offline MNIST sample) is trained again; a copy of the same data
elsewhere, on another host, matches. One process trains a missing entry while
the others wait for it (a lock file beside the entry). Train or refresh one with

  python -m gan.evaluation.classifiers --dataset mnist --arch mnist_cnn

Each entry's `info.json` records its test accuracy and training time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from gan import data as data_lib
from gan import platform, utils


class MnistCNN(nn.Module):
  """Three conv blocks (32-64-128, batch norm, max-pool) and a 128-d penultimate layer."""

  width: int = 32
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    for i, features in enumerate((self.width, 2 * self.width, 4 * self.width)):
      x = nn.Conv(features, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(128, name="penultimate")(x))
    return nn.Dense(self.num_classes, name="logits")(features), features


class _ResidualBlock(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
    y = nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = norm()(nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y))
    if x.shape[-1] != self.features or self.strides != 1:
      x = norm()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-20 (He et al. 2016, CIFAR variant: 3 stages of 3 blocks, 16-32-64 channels)."""

  blocks_per_stage: int = 3
  width: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for stage in range(3):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = _ResidualBlock(self.width * 2**stage, strides)(x, train)
    features = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="logits")(features), features


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a cached classifier is trained; part of its cache identity."""

  module: Callable[[], nn.Module]
  epochs: int
  batch_size: int
  lr: float
  weight_decay: float
  shift: int  # random translations of up to `shift` pixels
  flip: bool  # random horizontal flips


RECIPES: dict[str, Recipe] = {
    "mnist_cnn": Recipe(
        MnistCNN, epochs=5, batch_size=128, lr=3e-3, weight_decay=1e-4, shift=2, flip=False
    ),
    "cifar_resnet20": Recipe(
        CifarResNet, epochs=15, batch_size=128, lr=3e-3, weight_decay=5e-4, shift=4, flip=True
    ),
}


@dataclasses.dataclass
class Classifier:
  """A trained classifier: `apply(images uint8 NHWC) -> (logits, features)` and its record."""

  module: nn.Module
  variables: Any
  info: dict[str, Any]

  def __post_init__(self):
    module, variables = self.module, self.variables

    @jax.jit
    def apply(images: jax.Array) -> tuple[jax.Array, jax.Array]:
      return module.apply(variables, data_lib.to_float(images), train=False)

    self._apply = apply

  def __call__(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features for uint8 images (N, H, W, C), in batches."""
    apply = lambda x: dict(zip(("logits", "features"), self._apply(x), strict=True))  # noqa: E731
    out = batched(apply, np.asarray(images), batch_size)
    return out["logits"], out["features"]


def batched(fn, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """Applies `fn` (fixed batch size: one compilation) to all images, padding the last batch."""
  out: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.pad(chunk, ((0, pad),) + ((0, 0),) * (chunk.ndim - 1)) if pad else chunk
    for k, v in fn(padded).items():
      out.setdefault(k, []).append(np.asarray(v)[: len(chunk)])
  return {k: np.concatenate(v) for k, v in out.items()}


def _augment(key: jax.Array, images: jax.Array, recipe: Recipe) -> jax.Array:
  """Random shifts (zero padding) and flips, per example."""
  n, h, w, _ = images.shape
  s = recipe.shift
  padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
  shift_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(shift_key, (n, 2), 0, 2 * s + 1)
  crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))
  images = crop(padded, offsets)
  if recipe.flip:
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)
  return images


def train(
    arch: str,
    train_split: data_lib.Split,
    test_split: data_lib.Split,
    dataset: str,
    seed: int = 0,
    epochs: int | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> Classifier:
  """Trains `arch` on `train_split` with its recipe; records its accuracy on `test_split`.

  `epochs` overrides the recipe (for tests); `load_or_train` and the command
  line always use the recipe, so cached classifiers are comparable.
  """
  recipe = RECIPES[arch]
  epochs = recipe.epochs if epochs is None else epochs
  x_train, y_train = train_split.image, train_split.label
  module = recipe.module()
  steps_per_epoch = len(x_train) // recipe.batch_size
  schedule = optax.cosine_decay_schedule(recipe.lr, epochs * steps_per_epoch)
  tx = optax.adamw(schedule, weight_decay=recipe.weight_decay)
  key = jax.random.PRNGKey(seed)
  variables = module.init(key, data_lib.to_float(jnp.asarray(x_train[:1])), train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, images, labels, key):
    images = data_lib.to_float(_augment(key, images, recipe))

    def loss_fn(p):
      (logits, _), mutated = module.apply(
          {"params": p, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, mutated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  x_device, y_device = jnp.asarray(x_train), jnp.asarray(y_train)
  start = time.perf_counter()
  for epoch in range(epochs):
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), len(x_train))
    for i in range(steps_per_epoch):
      index = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
      params, batch_stats, opt_state, loss = step(
          params,
          batch_stats,
          opt_state,
          x_device[index],
          y_device[index],
          jax.random.fold_in(key, epoch * steps_per_epoch + i + 1),
      )
    log(f"classifier {dataset}-{arch}: epoch {epoch + 1}/{epochs} loss {float(loss):.4f}")
  seconds = time.perf_counter() - start
  classifier = Classifier(module, {"params": params, "batch_stats": batch_stats}, {})
  logits, _ = classifier(test_split.image)
  accuracy = float(np.mean(np.argmax(logits, axis=1) == test_split.label))
  classifier.info = {
      "dataset": dataset,
      "arch": arch,
      "train_split": train_split.source,
      "train_data": train_split.digest(),
      "test_split": test_split.source,
      "num_train": int(len(x_train)),
      # Offline MNIST falls back to one sample for every split: no held-out test.
      "held_out_test": train_split.source != test_split.source,
      "test_accuracy": accuracy,
      "epochs": epochs,
      "seed": seed,
      "train_seconds": round(seconds, 1),
      "jax_version": jax.__version__,
  }
  log(f"classifier {dataset}-{arch}: test accuracy {accuracy:.4f} ({seconds:.0f} s)")
  return classifier


def train_on(dataset: str, arch: str, data_dir: str | None = None, seed: int = 0) -> Classifier:
  """Trains on `dataset`'s train split and tests on its test split."""
  train_split = data_lib.load(dataset, "train", data_dir)
  return train(arch, train_split, data_lib.load(dataset, "test", data_dir), dataset, seed)


def recipe_id(arch: str) -> str:
  """A short hash of the training recipe: a changed recipe gets a new cache entry."""
  recipe = RECIPES[arch]
  fields = dataclasses.asdict(recipe) | {"module": recipe.module.__name__}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def _directory(dataset: str, arch: str) -> str:
  return os.path.join(utils.cache_root(), "classifiers", f"{dataset}-{arch}-{recipe_id(arch)}")


def save(classifier: Classifier, directory: str) -> None:
  """Writes weights and info.json into a temporary directory, then renames it into place.

  Callers hold the entry's lock (`_locked`), as `load_or_train` and the command
  line do: the removal of the old entry and the rename are two steps.
  """
  blob = serialization.to_bytes(classifier.variables)
  classifier.info["weights_sha256"] = hashlib.sha256(blob).hexdigest()
  tmp = f"{directory}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, "variables.msgpack"), "wb") as f:
    f.write(blob)
  with open(os.path.join(tmp, "info.json"), "w") as f:
    _dump_info(classifier.info, f)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)


def _dump_info(info: dict[str, Any], f: IO[str]) -> None:
  json.dump(info, f, indent=2, sort_keys=True)


def _save_info(info: dict[str, Any], directory: str) -> None:
  """Replaces the entry's info.json in one rename (the caller holds the entry's lock).

  The partial file sits beside the entry, not in it, where `load_or_train`
  sweeps the partials of killed writers.
  """
  with utils.replacing(os.path.join(directory, "info.json"), partial=f"{directory}.info.json") as f:
    _dump_info(info, f)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
  """Holds an exclusive lock on cache entry `directory` (`<directory>.lock` beside it).

  Processes that find the entry missing or stale at once (test workers, the
  seeds of a sweep) then train it once: the others wait and load that copy.
  """
  try:
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    lock = open(f"{directory}.lock", "a")  # noqa: SIM115  (closed by the `with` below)
  except OSError:  # a read-only cache: nothing will be written to it, so nothing to guard
    lock = None
  if lock is None:
    yield
    return
  with lock:
    locked = True
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held: another process is training or checking the entry
      print(f"note: waiting for another process using {directory}", file=sys.stderr, flush=True)
      fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError as e:  # e.g. a cluster filesystem mounted without flock support
      print(f"warning: cannot lock {lock.name} ({e}); going on without", file=sys.stderr)
      locked = False
    try:
      yield
    finally:
      if locked:
        fcntl.flock(lock, fcntl.LOCK_UN)


def load(directory: str, arch: str) -> Classifier:
  """Loads a cached classifier; raises ValueError if the weights do not match their hash."""
  module = RECIPES[arch].module()
  with open(os.path.join(directory, "info.json")) as f:
    info = json.load(f)
  with open(os.path.join(directory, "variables.msgpack"), "rb") as f:
    blob = f.read()
  if hashlib.sha256(blob).hexdigest() != info.get("weights_sha256"):
    raise ValueError(f"classifier weights in {directory} do not match their recorded SHA-256")
  like = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *_input_shape(info)), jnp.float32))
  return Classifier(module, serialization.from_bytes(like, blob), info)


def _input_shape(info: dict[str, Any]) -> tuple[int, int, int]:
  return (28, 28, 1) if info["dataset"] == "mnist" else (32, 32, 3)


def _other_training_data(
    classifier: Classifier, directory: str, dataset: str, data_dir: str | None
) -> str | None:
  """Why the cached classifier does not fit the prepared train split; None if it does.

  Offline (the dataset not prepared, or its train split unreadable) any cached
  classifier fits: one trained on the real data stays in use. One trained on
  the offline MNIST sample is replaced once the real data is there. One cached
  before `info.json` recorded a digest of the training data (no `train_data`)
  but trained on the dataset's TFDS train split is adopted, its digest
  recorded as the current data's, so runs already scored by it stay
  comparable.
  """
  if not os.path.isdir(os.path.join(data_lib.resolve_data_dir(data_dir), dataset)):
    return None
  recorded = classifier.info.get("train_data")
  trained_on = classifier.info.get("train_split", "")
  if recorded is None and not trained_on.startswith(f"tfds {dataset}:train "):
    return f"the cached classifier was trained on {trained_on}, not the prepared data"
  try:
    current = data_lib.load(dataset, "train", data_dir).digest()
  except data_lib.DatasetNotFoundError as e:
    print(f"warning: using the cached classifier unchecked: {e}", file=sys.stderr, flush=True)
    return None
  if recorded is None:
    classifier.info["train_data"] = current
    try:
      _save_info(classifier.info, directory)
    except OSError as e:  # a read-only cache: adopted for this process only
      print(f"warning: could not record the data digest in {directory}: {e}", file=sys.stderr)
  elif recorded != current:
    return (
        f"the cached classifier was trained on other data ({trained_on}; "
        f"digest {recorded}, the train split's {current})"
    )
  return None


def load_or_train(dataset: str, arch: str, data_dir: str | None = None) -> Classifier:
  """The cached classifier for (dataset, arch), training and caching it on first use."""
  directory = _directory(dataset, arch)
  # Temporary directories and files of killed writers, once stale.
  utils.remove_stale_partials(os.path.join(glob.escape(os.path.dirname(directory)), "*.tmp*"))
  with _locked(directory):
    reason = f"no cached {arch} classifier for {dataset} in {directory}"
    if os.path.exists(os.path.join(directory, "info.json")):
      try:
        classifier = load(directory, arch)
      except (ValueError, OSError) as e:  # damaged: a bad hash, unreadable or partial files
        reason = f"the cached classifier is unusable ({e})"
      else:
        reason = _other_training_data(classifier, directory, dataset, data_dir)
        if reason is None:
          return classifier
    print(f"note: {reason}; training one (once; later runs reuse it)", file=sys.stderr, flush=True)
    classifier = train_on(dataset, arch, data_dir)
    try:
      save(classifier, directory)
    except OSError as e:  # a read-only cache: this process keeps what it trained
      print(f"warning: could not cache the classifier in {directory}: {e}", file=sys.stderr)
    return classifier


def main(argv: list[str] | None = None) -> None:
  import argparse  # noqa: PLC0415

  parser = argparse.ArgumentParser(description="Train and cache a domain classifier.")
  parser.add_argument("--dataset", default="mnist")
  parser.add_argument("--arch", default="mnist_cnn", choices=sorted(RECIPES))
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  platform.configure_xla()  # before the first computation initialises the backend
  directory = _directory(args.dataset, args.arch)
  with _locked(directory):
    classifier = train_on(args.dataset, args.arch, args.data_dir, args.seed)
    save(classifier, directory)
  print(json.dumps(classifier.info, indent=2, sort_keys=True))
  print(f"saved to {directory}")


if __name__ == "__main__":
  main()
