"""DCGAN on MNIST (the TensorFlow DCGAN tutorial model), non-saturating loss.

Train, then score the final EMA generator (FCD and friends against the test split,
in the features of the project's MNIST classifier):

  python -m gan.main --config experiments/mnist.py --workdir runs/mnist
  python -m gan.evaluate --workdir runs/mnist

Target: at step 5,000 clean digits of all ten classes, neither player winning
(D's loss near the equilibrium 2 ln 2), and FCD at most 50 (the sweep's threshold
below). Measured results: docs/results.md.

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist.py:smoke --workdir /tmp/smoke

`mlp`: MLP players small enough to train 8 population-sweep members side by side
on a CPU; target FCD at most 180 at step 5,000:

  python -m gan.sweep --config experiments/mnist.py:mlp --workdir runs/mnist_mlp_sweep

Runs broken on purpose for the health monitor (`broken_d_wins`,
`broken_collapse`, `broken_diverge`, `broken_spike`) are in `experiments/broken.py`.
Variants combine with commas, e.g. `smoke,broken_collapse`.
"""

from __future__ import annotations

import ml_collections

from experiments import base, broken
from gan.evaluation import evaluators

VARIANTS = ("smoke", "mlp", *broken.VARIANTS)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or a comma-separated mix of VARIANTS."""
  parts = base.parse_variant(variant, VARIANTS)
  config = base.config("mnist")

  config.model.generator = "dcgan28"
  config.model.discriminator = "dcgan28"
  config.model.z_dim = 100
  # conv_chunk: convolutions run on slices of at most this many examples per device
  # (faster on XLA:CPU at large batches, same results; 0: whole batch). Only on the CPU
  # backend: accelerators take the whole batch (gan.platform.choices).
  config.model.g = ml_collections.ConfigDict({"width": 64, "conv_chunk": 64})
  config.model.d = ml_collections.ConfigDict({"width": 64, "dropout_rate": 0.3, "conv_chunk": 64})

  config.loss = "non_saturating"
  config.optim.g = ml_collections.ConfigDict({"lr": 2e-4, "b1": 0.5, "b2": 0.999, "decay": "none"})
  config.optim.d = ml_collections.ConfigDict({"lr": 2e-4, "b1": 0.5, "b2": 0.999, "decay": "none"})
  config.ema_decay = 0.999

  config.batch_size = 64  # global, split over all devices
  config.num_steps = 5000  # generator updates

  config.log_every = 100
  config.sample_every = 500
  config.checkpoint_every = 1000

  # FCD, KID, precision/recall, class coverage on the features of the project's
  # MNIST classifier (shipped with the package).
  config.evals.mnist_cnn = evaluators.settings("fcd", arch="mnist_cnn", every=1000)
  # Keep the best checkpoint by FCD besides the latest ones.
  config.best_checkpoint = ml_collections.ConfigDict(
      {"metric": "mnist_cnn/fcd", "mode": "min", "keep": 1}
  )
  # "When to stop": stop once FCD has not improved for 3 evaluations (the best is kept).
  config.health.plateau.patience = 3
  config.sweep = sweep()

  if "mlp" in parts:
    # Two hidden layers of 256 in each player, z of 64, LeakyReLU(0.2) in both and dropout
    # 0.3 in D, as in the classic fully connected MNIST GANs, but small enough that 8
    # members train side by side on a CPU (gan.sweep). D's dropout, LeakyReLU in G and the
    # higher learning rate each lowered the final FCD on seed 0 (without the first two, lr
    # 2e-4 collapsed to one class); width 512 doubles the step time and is not used.
    # The classic recipes train for 100+ epochs; 5,000 steps are 5.
    config.model.generator = config.model.discriminator = "mlp"
    config.model.z_dim = 64
    config.model.g = ml_collections.ConfigDict(
        {"width": 256, "depth": 2, "activation": "lrelu", "image_shape": (28, 28, 1)}
    )
    config.model.d = ml_collections.ConfigDict(
        {"width": 256, "depth": 2, "activation": "lrelu", "dropout_rate": 0.3}
    )
    config.optim.g.lr = config.optim.d.lr = 5e-4
    # The MLP's own healthy range at 5,000 steps, on seeds outside the sweep's grid
    # (`python -m gan.seeds --config experiments/mnist.py:mlp --seeds 10,11,12,13,14
    # --metric mnist_cnn/fcd`): mean + 3 std of the FCD, rounded up.
    config.sweep.target.threshold = 180.0
  if "smoke" in parts:
    config.model.g.width = 8
    config.model.d.width = 8
    config.batch_size = 16
    config.num_steps = 20
    config.log_every = 5
    config.sample_every = 10
    config.checkpoint_every = 10
    config.num_samples = 16
    config.evals = ml_collections.ConfigDict()
    config.best_checkpoint.metric = ""
  broken.apply(config, parts)
  return config


def sweep() -> ml_collections.ConfigDict:
  """The population sweep (`python -m gan.sweep`): 4 seeds x 2 learning rates (both players).

  A member succeeds if it is healthy and its final FCD is at most the threshold: the
  recipe's healthy range, mean + 3 std over 5 seeds, rounded up (docs/sweeps.md).
  """
  return ml_collections.ConfigDict(
      {
          "mode": "grid",
          "members": 8,
          "seed": (0, 1, 2, 3),
          "params": {"optim/g/lr,optim/d/lr": (2e-4, 5e-4)},
          "target": {"metric": "mnist_cnn/fcd", "mode": "min", "threshold": 50.0},
      }
  )
