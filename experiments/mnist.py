"""DCGAN on MNIST (the TensorFlow DCGAN tutorial model), non-saturating loss.

Train:

  python -m gan.main --config experiments/mnist.py --workdir runs/mnist

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist.py:smoke --workdir /tmp/smoke

Expected result (measured, see README "Results"): RESULT_PLACEHOLDER
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant="smoke"` is the few-second version."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = "mnist"
  config.train_split = "train"
  config.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or TFDS's default.

  config.model = ml_collections.ConfigDict()
  config.model.generator = "dcgan28"
  config.model.discriminator = "dcgan28"
  config.model.z_dim = 100
  config.model.g = ml_collections.ConfigDict({"width": 64})
  config.model.d = ml_collections.ConfigDict({"width": 64, "dropout_rate": 0.3})

  config.loss = "non_saturating"
  config.label_smoothing = 0.0
  config.n_critic = 1
  config.optim = ml_collections.ConfigDict()
  config.optim.g = ml_collections.ConfigDict({"lr": 2e-4, "b1": 0.5, "b2": 0.999, "decay": "none"})
  config.optim.d = ml_collections.ConfigDict({"lr": 2e-4, "b1": 0.5, "b2": 0.999, "decay": "none"})
  config.ema_decay = 0.999

  config.batch_size = 64  # global, split over all devices
  config.num_steps = 5000  # generator updates

  config.log_every = 100
  config.sample_every = 500
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.num_samples = 64  # fixed-noise grid, 8 x 8

  if variant == "smoke":
    config.model.g.width = 8
    config.model.d.width = 8
    config.batch_size = 16
    config.num_steps = 20
    config.log_every = 5
    config.sample_every = 10
    config.checkpoint_every = 10
    config.num_samples = 16
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'smoke'")
  return config
