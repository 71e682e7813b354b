"""Labelled subsets for semi-supervised runs: a balanced, seeded choice, saved in the workdir.

`choose(labels, per_class, seed)` picks `per_class` examples of every class
from a training split (the rest of the split is used unlabelled); the choice
is a function of the seed only, so two runs with one seed see the same labels
and runs with different seeds (the multi-seed runner) see different ones.
`load_or_choose` writes the choice to `workdir/labelled.json` (indices and
their labels, with the seed and the split) on the first run and reads it back
on resume, refusing to continue if the config or the data no longer match:
the labels a result was trained with can always be audited. The test split is
never used for choosing.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from gan import utils
from gan.utils import ConfigError

FILENAME = "labelled.json"


def choose(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of each class, chosen at random from `seed`."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ConfigError(f"class {c} has {len(members)} examples; {per_class} labels requested")
    chosen.append(rng.choice(members, size=per_class, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int32)


def load_or_choose(
    workdir: str, labels: np.ndarray, per_class: int, seed: int, source: str, write: bool = True
) -> np.ndarray:
  """The run's labelled indices: read from `workdir/labelled.json`, or chosen and written there.

  With `write=False` (processes other than the first) a missing file is not written.
  """
  path = os.path.join(workdir, FILENAME)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    indices = np.asarray(saved["indices"], np.int32)
    if (saved["per_class"], saved["seed"]) != (per_class, seed):
      raise ConfigError(
          f"{path} holds {saved['per_class']} labels per class from seed {saved['seed']}; the "
          f"config asks for {per_class} from seed {seed}. Use a new workdir for a new subset."
      )
    if indices.max(initial=-1) >= len(labels) or not np.array_equal(
        labels[indices], saved["labels"]
    ):
      raise ConfigError(f"{path} does not match the training split {source!r}")
    return indices
  indices = choose(labels, per_class, seed)
  record = {
      "seed": seed,
      "per_class": per_class,
      "num_labelled": len(indices),
      "split": source,
      "indices": indices.tolist(),
      "labels": labels[indices].tolist(),
  }
  if write:
    os.makedirs(workdir, exist_ok=True)
    utils.write_json(path, record)  # another process never reads half a file
  return indices


def describe(workdir: str) -> dict[str, Any]:
  """The run's labelled subset in brief (eval.json's "labels"), from `workdir/labelled.json`."""
  with open(os.path.join(workdir, FILENAME)) as f:
    saved = json.load(f)
  return {k: saved[k] for k in ("seed", "per_class", "num_labelled")} | {"file": FILENAME}
