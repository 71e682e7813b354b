"""Domain classifiers for offline metrics: architectures, training recipes, shipped weights.

A classifier trained by the project on a dataset's real training split gives
metrics that need no downloaded weights: the Fréchet Classifier Distance (FD
on its penultimate features), class coverage and confidence (see
`gan.evaluation.evaluators`), and the Stacked-MNIST mode count.

The classifiers are trained once by a maintainer and shipped inside the
package, `weights/<dataset>-<arch>.msgpack` beside `<dataset>-<arch>.json`
(its test accuracy, the weights' SHA-256, the recipe and the command that
trained it), so every machine scores samples with the same network. `load`
checks the weights against their recorded SHA-256. To train them again:

  python -m gan.evaluation.classifiers train --dataset mnist --out gan/evaluation/weights
  python -m gan.evaluation.classifiers check --dataset mnist   # accuracy on the full test split
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from gan import data as data_lib
from gan import platform, utils
from gan.evaluation import sharded
from gan.utils import ConfigError


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
  """How a classifier is trained; recorded beside its shipped weights."""

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


# The architecture a dataset's metrics use unless a config names another.
DEFAULT_ARCH = {"mnist": "mnist_cnn", "cifar10": "cifar_resnet20"}
# The shipped weights' record also holds their accuracy on this many test images, which
# the tests recompute (the whole split would take them too long on a CPU).
CHECK_EXAMPLES = 1000


class ClassifierNotShippedError(ConfigError):
  """No shipped weights for this dataset and architecture."""


@dataclasses.dataclass
class Classifier:
  """A trained classifier: `apply(images uint8 NHWC) -> (logits, features)` and its record."""

  module: nn.Module
  variables: Any
  info: dict[str, Any]

  def __post_init__(self):
    module, variables = self.module, self.variables

    # The (small) variables stay compile-time constants, as before: passed as arguments,
    # XLA folds differently and the features change in the last bits.
    def apply(_: Any, images: jax.Array) -> dict[str, jax.Array]:
      logits, features = module.apply(variables, data_lib.to_float(images), train=False)
      return {"logits": logits, "features": features}

    self._extract = sharded.ShardedFeatures(apply, {})

  def __call__(
      self, images: np.ndarray, batch_size: int = 500, progress: str | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features for uint8 images (N, H, W, C), in batches.

    Each batch is split over the local devices. With `progress`, a bar of that
    title shows if it takes more than a few seconds.
    """
    out = self._extract(images, batch_size, progress)
    return out["logits"], out["features"]


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
    resume_file: str | None = None,
) -> Classifier:
  """Trains `arch` on `train_split` with its recipe; records its accuracy on `test_split`.

  `epochs` overrides the recipe (for tests); the command line always uses the
  recipe. With `resume_file` the state after each epoch is kept in that file,
  and a training that was killed resumes from its last whole epoch with the
  same result as one that was not (the key of every step depends on its epoch
  and index only). A file kept for other data or another recipe, seed or
  length is refused. The caller removes it once the weights are saved.
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
  # What the kept state must have been trained with to be continued here.
  what = {"arch": arch, "seed": seed, "epochs": epochs, "train_data": train_split.digest()}
  what["recipe"] = json.dumps(_recipe_record(recipe), sort_keys=True)
  kept = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}
  kept |= {"epoch": 0, "seconds": 0.0, "what": what}
  if resume_file and os.path.exists(resume_file):
    refuse = f"{resume_file} is not a resumable state of this training; remove it"
    try:
      with open(resume_file, "rb") as f:
        kept = serialization.from_bytes(kept, f.read())
    except Exception as e:  # another format or layout: a file of other code
      raise ValueError(f"{refuse} ({type(e).__name__}: {e})") from e
    if {k: kept["what"].get(k) for k in what} != what:
      raise ValueError(f"{refuse}: it was kept for {kept['what']}")
    params, batch_stats, opt_state = kept["params"], kept["batch_stats"], kept["opt_state"]
    log(f"classifier {dataset}-{arch}: resuming after epoch {int(kept['epoch'])} ({resume_file})")
  start = time.perf_counter() - float(kept["seconds"])
  for epoch in range(int(kept["epoch"]), epochs):
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
    if resume_file:
      kept |= {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}
      kept |= {"epoch": epoch + 1, "seconds": time.perf_counter() - start}
      os.makedirs(os.path.dirname(os.path.abspath(resume_file)), exist_ok=True)
      with utils.replacing(resume_file, "wb") as f:
        f.write(serialization.to_bytes(kept))
    log(f"classifier {dataset}-{arch}: epoch {epoch + 1}/{epochs} loss {float(loss):.4f}")
  seconds = time.perf_counter() - start
  classifier = Classifier(module, {"params": params, "batch_stats": batch_stats}, {})
  logits, _ = classifier(test_split.image)
  correct = np.argmax(logits, axis=1) == test_split.label
  accuracy = float(np.mean(correct))
  classifier.info = {
      "dataset": dataset,
      "arch": arch,
      "train_split": _without_path(train_split.source),
      "train_data": train_split.digest(),
      "num_train": int(len(x_train)),
      "test_split": _without_path(test_split.source),
      "num_test": int(len(correct)),
      "test_accuracy": accuracy,
      "check_examples": min(CHECK_EXAMPLES, len(correct)),
      "check_accuracy": float(np.mean(correct[:CHECK_EXAMPLES])),
      "recipe": _recipe_record(recipe) | {"epochs": epochs},
      "seed": seed,
      "train_seconds": round(seconds, 1),
      "jax_version": jax.__version__,
  }
  log(f"classifier {dataset}-{arch}: test accuracy {accuracy:.4f} ({seconds:.0f} s)")
  return classifier


def _recipe_record(recipe: Recipe) -> dict[str, Any]:
  return {k: v for k, v in dataclasses.asdict(recipe).items() if k != "module"} | {
      "module": recipe.module.__name__
  }


def _without_path(source: str) -> str:
  """ "tfds mnist:train from /data/dir" -> "tfds mnist:train": the record is the same on every
  machine."""
  return source.split(" from ")[0]


def train_on(
    dataset: str,
    arch: str,
    data_dir: str | None = None,
    seed: int = 0,
    resume_file: str | None = None,
) -> Classifier:
  """Trains on `dataset`'s prepared TFDS train split and tests on its test split."""
  train_split = data_lib.load(dataset, "train", data_dir)
  if not train_split.source.startswith("tfds "):  # the offline MNIST sample
    raise data_lib.DatasetNotFoundError(
        f"{dataset}: no prepared TFDS data ({train_split.source}); set TFDS_DATA_DIR"
    )
  test_split = data_lib.load(dataset, "test", data_dir)
  return train(arch, train_split, test_split, dataset, seed, resume_file=resume_file)


def weights_name(dataset: str, arch: str) -> str:
  return f"{dataset}-{arch}"


def shipped_directory() -> str:
  """The package's `weights/` folder."""
  return str(importlib.resources.files("gan.evaluation").joinpath("weights"))


def save(classifier: Classifier, directory: str, command: str) -> str:
  """Writes `<dataset>-<arch>.msgpack` and its record `.json` (with `command`) in `directory`."""
  blob = serialization.to_bytes(classifier.variables)
  info = classifier.info | {
      "weights_sha256": hashlib.sha256(blob).hexdigest(),
      "weights_bytes": len(blob),
      "command": command,
  }
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(directory, weights_name(info["dataset"], info["arch"]))
  with utils.replacing(f"{stem}.msgpack", "wb") as f:
    f.write(blob)
  with utils.replacing(f"{stem}.json") as f:  # last: a record only beside its weights
    json.dump(info, f, indent=2, sort_keys=True)
    f.write("\n")
  classifier.info = info
  return stem


def load(dataset: str, arch: str | None = None, directory: str | None = None) -> Classifier:
  """The shipped classifier for `dataset` (`arch`: its default), checked against its SHA-256.

  `directory` defaults to the package's `weights/`.

  Raises:
    ClassifierNotShippedError: there are no weights for `dataset` and `arch`.
    ValueError: the weights do not match their recorded SHA-256.
  """
  arch = arch or DEFAULT_ARCH.get(dataset, "")
  stem = os.path.join(directory or shipped_directory(), weights_name(dataset, arch))
  try:
    with open(f"{stem}.json") as f:
      info = json.load(f)
    with open(f"{stem}.msgpack", "rb") as f:
      blob = f.read()
  except FileNotFoundError:
    shipped = sorted(
        name[: -len(".json")]
        for name in os.listdir(directory or shipped_directory())
        if name.endswith(".json")
    )
    raise ClassifierNotShippedError(
        f"no {arch or 'default'} classifier for {dataset!r} in {os.path.dirname(stem)} "
        f"(there: {', '.join(shipped) or 'none'}); train it with `python -m "
        f"gan.evaluation.classifiers train --dataset {dataset} --arch {arch or 'ARCH'} --out "
        "gan/evaluation/weights`"
    ) from None
  if hashlib.sha256(blob).hexdigest() != info["weights_sha256"]:
    raise ValueError(f"classifier weights {stem}.msgpack do not match their recorded SHA-256")
  module = RECIPES[arch].module()
  shape = (28, 28, 1) if dataset == "mnist" else (32, 32, 3)
  like = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))
  return Classifier(module, serialization.from_bytes(like, blob), info)


def accuracy(classifier: Classifier, split: data_lib.Split, num: int | None = None) -> float:
  """Top-1 accuracy on the first `num` (default: all) examples of `split`."""
  logits, _ = classifier(split.image[:num])
  return float(np.mean(np.argmax(logits, axis=1) == split.label[:num]))


def main(argv: list[str] | None = None) -> None:
  import argparse  # noqa: PLC0415

  parser = argparse.ArgumentParser(description="Train or check the shipped domain classifiers.")
  commands = parser.add_subparsers(dest="command", required=True)
  train_parser = commands.add_parser("train", help="train one with its recipe and write it")
  check_parser = commands.add_parser("check", help="test accuracy of the shipped weights")
  for p in (train_parser, check_parser):
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULT_ARCH))
    p.add_argument("--arch", default=None, choices=sorted(RECIPES))
    p.add_argument("--data_dir", default=None)
  train_parser.add_argument("--out", required=True, help="directory for the weights and record")
  train_parser.add_argument("--seed", type=int, default=0)
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(argv)
  arch = args.arch or DEFAULT_ARCH[args.dataset]
  platform.configure_xla()  # before the first computation initialises the backend
  if args.command == "train":
    command = shlex.join(["python", "-m", "gan.evaluation.classifiers", *argv])
    # The state after each epoch, kept until the weights are saved: a killed training resumes.
    name = f"{weights_name(args.dataset, arch)}-seed{args.seed}.msgpack"
    resume_file = os.path.join(utils.cache_root(), "classifier_training", name)
    try:
      classifier = train_on(args.dataset, arch, args.data_dir, args.seed, resume_file)
    except (data_lib.DatasetNotFoundError, ValueError) as e:
      utils.fail(str(e))
    stem = save(classifier, args.out, command)
    if os.path.exists(resume_file):
      os.remove(resume_file)
    print(json.dumps(classifier.info, indent=2, sort_keys=True))
    print(f"wrote {stem}.msgpack and {stem}.json")
    return
  try:
    classifier = load(args.dataset, arch)
  except ConfigError as e:
    utils.fail(str(e))
  test = data_lib.load(args.dataset, "test", args.data_dir)
  start = time.perf_counter()
  measured = {"test_accuracy": accuracy(classifier, test)}
  measured["check_accuracy"] = accuracy(classifier, test, classifier.info["check_examples"])
  for key, value in measured.items():
    print(f"{key}: {value:.4f} (recorded {classifier.info[key]:.4f})")
  print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  main()
