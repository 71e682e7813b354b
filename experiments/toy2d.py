"""Mode-collapse benchmarks on 2D Gaussian mixtures (VEEGAN geometry, PacGAN protocol).

  python -m gan.main --config experiments/toy2d.py:ring8 --workdir runs/ring8
  python -m gan.main --config experiments/toy2d.py:grid25 --workdir runs/grid25
  python -m gan.sweep --config experiments/toy2d.py:ring8 --workdir runs/ring8_sweep

ring8: 8 Gaussians on a circle of radius 2; grid25: 25 on {-4,-2,0,2,4}^2;
both with std 0.02 (`gan.toy2d`). The run ends by scoring 2,500 samples of
the EMA generator and writes `eval.json` with `modes`, `high_quality_fraction`
(within 3 std of the nearest mean; a perfect sampler scores 98.9%) and
`reverse_kl`. Samples are scatter plots in `samples/`.

Target: every mode (8/8, 25/25) on every seed, with a high-quality fraction
near a perfect sampler's. Measured results (5 seeds each) and how the recipe
was found: docs/results.md. `smoke` is a few-second ring8 run (tests); it
mixes with grid25 (`grid25,smoke`).
"""

from __future__ import annotations

import ml_collections

from experiments import base
from gan import toy2d
from gan.evaluation import evaluators
from gan.utils import ConfigError

VARIANTS = ("ring8", "grid25", "smoke")


def get_config(variant: str = "ring8") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is a comma-separated mix of VARIANTS.

  ring8 (the default) and grid25 name the mixture; smoke makes the run tiny.
  """
  parts = base.parse_variant(variant, VARIANTS)
  if {"ring8", "grid25"} <= parts:
    raise ConfigError(f"variant {variant!r} names two mixtures; use ring8 or grid25")
  # No `config.health`: the run uses `gan.health.defaults()`.
  config = base.config("grid25" if "grid25" in parts else "ring8", health=False)

  config.model.generator = "mlp"
  config.model.discriminator = "mlp"
  config.model.z_dim = 16
  config.model.g = ml_collections.ConfigDict({"width": 128, "depth": 3, "activation": "relu"})
  config.model.d = ml_collections.ConfigDict(
      {"width": 128, "depth": 3, "activation": "lrelu", "pack": 1}
  )

  # The learning rate mattered most, and a weaker R1 penalty lost modes; G and D are 128
  # wide at batch 256 because twice both was too slow for a run of minutes on one core.
  config.loss = "non_saturating"
  config.r1_gamma = 0.1
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
  config.num_samples = 2500  # points in the scatter plots

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

  if "smoke" in parts:
    config.model.g.width = 32
    config.model.d.width = 32
    config.batch_size = 64
    config.num_steps = 40
    config.log_every = 10
    config.sample_every = 20
    config.checkpoint_every = 20
    config.evals.toy2d.every = 20
    config.evals.toy2d.num_samples = 500
  return config
