"""Mode-collapse benchmarks on 2D Gaussian mixtures (VEEGAN geometry, PacGAN protocol).

  python -m gan.main --config experiments/toy2d.py:ring8 --workdir runs/ring8
  python -m gan.main --config experiments/toy2d.py:grid25 --workdir runs/grid25

ring8: 8 Gaussians on a circle of radius 2; grid25: 25 on {-4,-2,0,2,4}^2;
both with std 0.02 (`gan.toy2d`). The run ends by scoring 2,500 samples of
the EMA generator and writes `eval.json` with `modes`, `high_quality_fraction`
(within 3 std of the nearest mean; a perfect sampler scores 98.9%) and
`reverse_kl`. Samples are scatter plots in `samples/`.

Results (5 seeds each; the README's results table has every number):
ring8 8/8 modes on every seed, high-quality fraction mean 0.981 (every seed
>= 0.973); grid25 25/25 modes on every seed, mean 0.971 (every seed >=
0.968); 50,000 steps, 3.4-4.3 min per run on one core.

How the recipe was found (exploration on one core, grid25 seed 0 at 20,000
steps unless noted): the learning rate mattered most (1e-4: 7 modes, hq
0.003; 1e-3: 0.60; 2e-3: 0.92; 5e-3: 0.88); R1 0.01 instead of 0.1 lost modes
(15/25); Adam b1=0 gave 0.87, z_dim 64 gave 0.86; more steps kept improving
precision (0.94, 0.96, 0.97 at 20k, 25k, 35k). Width 256 at batch 512 cost
30-50 ms per step here, too slow for the 10-minute budget, so G and D are
128 wide at batch 256 (~4 ms per step).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from gan import toy2d
from gan.evaluation import evaluators


def get_config(variant: str = "ring8") -> ml_collections.ConfigDict:
  """`variant`: "ring8", "grid25", or "smoke" (a few-second ring8 run for tests)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "grid25" if variant == "grid25" else "ring8"
  config.train_split = "train"
  config.data_dir = config_dict.placeholder(str)

  config.model = ml_collections.ConfigDict()
  config.model.generator = "mlp"
  config.model.discriminator = "mlp"
  config.model.z_dim = 16
  config.model.g = ml_collections.ConfigDict({"width": 128, "depth": 3, "activation": "relu"})
  config.model.d = ml_collections.ConfigDict(
      {"width": 128, "depth": 3, "activation": "lrelu", "pack": 1}
  )

  config.loss = "non_saturating"
  config.label_smoothing = 0.0
  config.r1_gamma = 0.1
  config.n_critic = 1
  config.optim = ml_collections.ConfigDict()
  config.optim.g = ml_collections.ConfigDict(
      {"lr": 2e-3, "b1": 0.5, "b2": 0.999, "decay": "linear"}
  )
  config.optim.d = ml_collections.ConfigDict(
      {"lr": 2e-3, "b1": 0.5, "b2": 0.999, "decay": "linear"}
  )
  config.ema_decay = 0.999

  config.batch_size = 256
  config.num_steps = 50_000

  config.log_every = 1000
  config.sample_every = 5000
  config.checkpoint_every = 5000
  config.keep_checkpoints = 1
  # How the step is mapped over the devices: "auto" (shard_map in one process, pmap across
  # processes), "pmap" or "shard_map" (`gan.train`).
  config.parallel = "auto"
  config.num_samples = 2500  # points in the scatter plots

  config.evals = ml_collections.ConfigDict()
  config.evals.toy2d = evaluators.settings("toy2d", every=5000)
  config.best_checkpoint = ml_collections.ConfigDict(
      {"metric": "toy2d/high_quality_fraction", "mode": "max", "keep": 1}
  )

  # Population sweep (`python -m gan.sweep`): 4 seeds x 2 learning rates (both players),
  # 8 members trained together; a member succeeds if it is healthy and captures every mode.
  config.sweep = ml_collections.ConfigDict(
      {
          "mode": "grid",
          "members": 8,
          "seed": (0, 1, 2, 3),
          "params": {"optim/g/lr,optim/d/lr": (1e-3, 2e-3)},
          "target": {
              "metric": "toy2d/modes",
              "mode": "max",
              "threshold": toy2d.get(config.dataset).num_modes,
          },
      }
  )

  if variant == "smoke":
    config.model.g.width = 32
    config.model.d.width = 32
    config.batch_size = 64
    config.num_steps = 40
    config.log_every = 10
    config.sample_every = 20
    config.checkpoint_every = 20
    config.evals.toy2d.every = 20
    config.evals.toy2d.num_samples = 500
  elif variant not in ("ring8", "grid25"):
    raise ValueError(f"unknown variant {variant!r}; use 'ring8', 'grid25' or 'smoke'")
  return config
