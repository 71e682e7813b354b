"""What every experiment shares: the settings no recipe tunes, and the one variant parser.

An experiment file's `get_config(variant)` starts from `config(dataset)` and sets
its recipe on top; `parse_variant` turns the `variant` argument ("", "smoke",
"smoke,bf16") into the set of names the file applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict

from gan import health as health_lib
from gan.utils import ConfigError


def parse_variant(variant: str, known: Sequence[str]) -> frozenset[str]:
  """The comma-separated parts of `variant` ("" for none), each checked to be one of `known`.

  Raises ConfigError (reported by the command line in one line) for an unknown part.
  """
  parts = [part for part in variant.split(",") if part]
  for part in parts:
    if part not in known:
      raise ConfigError(f"unknown variant {part!r}; use '' or a mix of {', '.join(known)}")
  return frozenset(parts)


def config(dataset: str, *, health: bool = True) -> ml_collections.ConfigDict:
  """The settings every experiment starts from; empty `model`, `optim` and `evals` to fill in.

  `health=False` leaves `config.health` out: the run then uses `gan.health.defaults()`.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dataset
  config.train_split = "train"
  config.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or TFDS's default.

  config.model = ml_collections.ConfigDict()
  config.label_smoothing = 0.0
  config.n_critic = 1  # D updates per G update
  config.optim = ml_collections.ConfigDict()

  config.keep_checkpoints = 3
  # How the step is mapped over the devices: "auto" (shard_map in one process, pmap across
  # processes), "pmap" or "shard_map" (`gan.train`).
  config.parallel = "auto"
  config.num_samples = 64  # fixed-noise grid, 8 x 8
  # Run-to-run identical results on a GPU (XLA's deterministic ops), at a cost in speed
  # (docs/gpu.md). XLA:CPU is deterministic already; this changes nothing there.
  config.deterministic = False

  config.evals = ml_collections.ConfigDict()
  if health:
    # Training health (gan.health): thresholds, windows (in log records) and actions.
    config.health = health_lib.defaults()
  return config
