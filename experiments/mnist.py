"""DCGAN on MNIST (the TensorFlow DCGAN tutorial model), non-saturating loss.

Train:

  python -m gan.main --config experiments/mnist.py --workdir runs/mnist

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist.py:smoke --workdir /tmp/smoke

What to expect (measured 2026-11-24 on the 2-core CPU development machine,
jax 0.10.2, full 60,000-image MNIST via TFDS_DATA_DIR, one device): the 5,000
steps take 24 minutes wall clock (about 3.3 steps/s, ~225 images/s; peak RSS
1.78 GB with TensorFlow then still in the training process, ~1.2 GB since the
TFDS reader runs in a child process). The EMA sample grid shows blurry stroke
blobs at step 500 (~2.5 min), mostly recognisable digits by step 1,500
(~8 min), and at step 5,000 clean digits of all ten classes with a few
malformed strokes. D's loss stays between 1.21 and 1.49 (median 1.32;
2 ln 2 = 1.39 is the equilibrium) and its accuracies on real and fake batches
between 0.22 and 0.92 (medians 0.63 and 0.61): neither player wins.

Scored by `python -m gan.evaluate --workdir runs/mnist` (step 5,000, EMA
generator, 10,000 samples against the 10,000-image test split, features of
the project's MNIST classifier, 99.42% test accuracy): FCD 38.9, KID 51 +- 10,
precision 0.54, recall 0.85, density 0.36, coverage 0.46, 10/10 classes with
class-histogram KL 0.013, mean confidence 0.88. For scale, 10,000 real
training images score FCD 0.68, precision 0.87, recall 0.89, coverage 0.95.

MLP members for population sweeps (`:mlp`, see the comments below):

  python -m gan.sweep --config experiments/mnist.py:mlp --workdir runs/mnist_mlp_sweep

A single `:mlp` run reaches FCD 160.6 +- 5.7 at step 5,000 (5 seeds, ~47 s of
training each on one core; an untrained G scores 2,066 with 1 class), so its
sweep target is FCD <= 180, not the DCGAN's 50. The sweep (8 members, 16 min
on one shared core) succeeded for 4 of 8: the learning-rate-5e-4 members
(FCD 157-175), not the 2e-4 ones (271-280); all 8 healthy, 10/10 classes.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from gan import health
from gan.evaluation import evaluators

BROKEN = ("broken_d_wins", "broken_collapse", "broken_diverge", "broken_spike")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config.

  `variant` is a comma-separated list: "smoke" (the few-second version),
  "mlp" (MLP players instead of the DCGAN, the population sweep's members)
  and/or one of BROKEN (runs broken on purpose for the health monitor), e.g.
  "smoke,broken_collapse".
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = "mnist"
  config.train_split = "train"
  config.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or TFDS's default.

  config.model = ml_collections.ConfigDict()
  config.model.generator = "dcgan28"
  config.model.discriminator = "dcgan28"
  config.model.z_dim = 100
  # conv_chunk: convolutions run on slices of at most this many examples per
  # device (faster on CPU at large batches, same results; None: whole batch).
  config.model.g = ml_collections.ConfigDict({"width": 64, "conv_chunk": 64})
  config.model.d = ml_collections.ConfigDict({"width": 64, "dropout_rate": 0.3, "conv_chunk": 64})

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
  # How the step is mapped over the devices: "auto" (shard_map in one process, pmap across
  # processes), "pmap" or "shard_map" (`gan.train`).
  config.parallel = "auto"
  config.num_samples = 64  # fixed-noise grid, 8 x 8

  # FCD, KID, precision/recall, class coverage on the features of the project's
  # MNIST classifier (trained once, 20 min on one shared CPU core here, then cached).
  config.evals = ml_collections.ConfigDict()
  config.evals.mnist_cnn = evaluators.settings("classifier", arch="mnist_cnn", every=1000)
  # Keep the best checkpoint by FCD besides the latest ones.
  config.best_checkpoint = ml_collections.ConfigDict(
      {"metric": "mnist_cnn/fcd", "mode": "min", "keep": 1}
  )

  # Training health (gan.health): thresholds, windows (in log records) and actions.
  config.health = health.defaults()
  # "When to stop": stop once FCD has not improved for 3 evaluations (the best is kept).
  config.health.plateau.patience = 3

  # Population sweep (`python -m gan.sweep`; `:mlp` for members small enough to train 8 at
  # once on a CPU): 4 seeds x 2 learning rates (both players). A member succeeds if it is
  # healthy and its final FCD is at most the threshold: the recipe's healthy range, mean +
  # 3 std over 5 seeds (DCGAN: 37.4 + 3 x 4.1 = 49.7 -> 50; the MLP sets its own below).
  config.sweep = ml_collections.ConfigDict(
      {
          "mode": "grid",
          "members": 8,
          "seed": (0, 1, 2, 3),
          "params": {"optim/g/lr,optim/d/lr": (2e-4, 5e-4)},
          "target": {"metric": "mnist_cnn/fcd", "mode": "min", "threshold": 50.0},
      }
  )

  parts = [p for p in variant.split(",") if p]
  for part in parts:
    if part not in ("smoke", "mlp", *BROKEN):
      raise ValueError(
          f"unknown variant {part!r}; use '', 'smoke', 'mlp', one of {BROKEN}, or a mix"
      )
  if "mlp" in parts:
    # Two hidden layers of 256 in each player, z of 64, LeakyReLU(0.2) in both and dropout
    # 0.3 in D, as in the classic fully connected MNIST GANs, but small enough that 8
    # members train side by side on a CPU (gan.sweep). Seed 0, FCD at step 5,000: without
    # D's dropout and with ReLU in G, lr 2e-4 collapsed to 1 class at step 1,000 (FCD 381
    # at the end); dropout gave 288, LeakyReLU in G then 276, and lr 5e-4 169 (206
    # without the two). Width 512 (2x the step time) gave 214 at 2e-4 and is not used.
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
    # --metric mnist_cnn/fcd`): FCD 160.6 +- 5.7, mean + 3 std = 177.8, rounded up to 180.
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
  # Broken on purpose, to show that the health monitor names the failure. The failures
  # show within 1,000 steps, so these runs stop there (the spike one runs in full).
  if not set(parts).isdisjoint({"broken_d_wins", "broken_collapse", "broken_diverge"}):
    config.num_steps = min(config.num_steps, 1000)
  if "broken_d_wins" in parts:
    # D's learning rate 25x too high, and the minimax ("saturating") generator loss
    # log(1 - D(G(z))), whose gradient vanishes once D rejects every sample (Goodfellow
    # et al. 2014, Sec. 3): D wins and G stops learning.
    config.optim.d.lr = 5e-3
    config.loss = "minimax"
  if "broken_collapse" in parts:  # G ignores z: every sample is the same image
    config.model.g.z_scale = 0.0
  if "broken_diverge" in parts:  # learning rates that blow the run up
    config.optim.g.lr = config.optim.d.lr = 10.0
  if "broken_spike" in parts:
    # A healthy run hit by a transient fault: at step 3,300 (3/5 through; 33 with smoke)
    # both learning rates jump 1,000x. `divergence` should roll it back to the step-3,000
    # checkpoint with halved learning rates, after which it trains on to a healthy end.
    config.inject_fault = ml_collections.ConfigDict(
        {"step": config.num_steps * 33 // 50, "lr_factor": 1e3}
    )
  return config
