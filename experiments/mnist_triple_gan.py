"""Triple-GAN (Li et al. 2017) on MNIST with 100 labels.

Three players in one compiled step (`gan.semi.triple_gan`): a CNN classifier
C(y | x) (`gan.models.triple_gan.CNNClassifier`), the Improved-GAN MLP
generator and discriminator made conditional on the one-hot label, D judging
image-label pairs. D sees labelled pairs as real and classifier-labelled
unlabelled pairs (weight alpha = 1/2) and generated pairs (1 - alpha) as fake;
C learns from the 100 labels (10 per class, a seeded balanced subset saved in
the workdir), from D through the score-function gradient, from its own
predictions on unlabelled images (entropy and class-balance terms, as in the
paper's code) and from generated pairs (the pseudo-label term R_P, weight
alpha_P = 0.1, from epoch 300, once G draws recognisable digits of the asked
class). The paper's schedule: 1,000 epochs (600,000 steps at batch 100),
Adam 1e-3 (beta1 0.5) for all three, x0.995 per epoch from epoch 300. The
test error is that of an EMA of C's parameters on the 10,000-image test
split, measured at the end (never used to choose a checkpoint).

The `paper` variant also pre-trains C alone before the game, as the code
does (`config.semi.pretrain`, `gan.semi.triple_gan.pretrain`): 30 epochs of
120 steps, each with the 100 labels and 500 unlabelled images, on the
cross-entropy plus 0.3 x entropy plus 0.3 x class balance, Adam 3e-4 (beta1
0.9) of its own. The default CPU-sized variant leaves it off: at the
full-width CNN those 3,600 steps take longer on a CPU than the rest of that run.

Not the paper's code exactly: one batch size (100) for every term (the code
uses 200 generated, 400 classifier-labelled and 1 labelled pair for D), the
score-function gradient for C's adversarial term (the code weights D's
verdict on C's argmax label by its probability), and no weight decay on C's
last layer (the code's 1e-4).

Train (CPU-sized: the first 10 epochs, R_P from epoch 5; measured results in
docs/semi_supervised.md):

  python -m gan.main --config experiments/mnist_triple_gan.py --workdir runs/triple_gan

The paper's schedule (1,000 epochs; for a GPU):

  python -m gan.main --config experiments/mnist_triple_gan.py:paper --workdir runs/triple_gan

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist_triple_gan.py:smoke --workdir /tmp/tg

Paper: 0.91% +- 0.58 test error (100 labels).
"""

from __future__ import annotations

import ml_collections

from experiments import base, mnist
from gan import semi
from gan.evaluation import evaluators

VARIANTS = ("paper", "smoke")
STEPS_PER_EPOCH = 600  # 60,000 unlabelled images / batch 100


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or a comma-separated mix of VARIANTS.

  "paper" trains for the paper's 1,000 epochs (for a GPU); "" for its first 10 epochs
  with R_P switched on halfway, a CPU-sized run that does not reach the paper's phase
  where R_P and annealing start; "smoke" for a few seconds.
  """
  parts = base.parse_variant(variant, VARIANTS)
  config = base.config("mnist")
  config.method = "triple_gan"
  config.semi = semi.defaults()
  config.semi.labels_per_class = 10

  # G(z, y) and D(x, y): the Improved-GAN MLPs (`experiments/mnist_improved_gan.py`),
  # conditional on the label, D with one real/fake logit per image-label pair.
  config.model.generator = "improved_gan"
  config.model.discriminator = "improved_gan"
  config.model.z_dim = 100
  config.model.g = ml_collections.ConfigDict({"widths": (500, 500), "label_classes": 10})
  config.model.d = ml_collections.ConfigDict(
      {
          "widths": (1000, 500, 250, 250, 250),
          "input_noise": 0.3,
          "hidden_noise": 0.5,
          "label_classes": 10,
          "num_classes": 1,
      }
  )
  config.model.classifier = "cnn28"
  config.model.c = ml_collections.ConfigDict({"widths": (32, 64, 128), "dropout_rate": 0.5})
  config.loss = "non_saturating"  # unused: the method defines its losses
  config.ema_decay = 0.999

  # The paper's schedule (its public MNIST code): 1,000 epochs of 600 steps, Adam 1e-3
  # (beta1 0.5) for all three players, annealed x0.995 per epoch from epoch 300, when the
  # pseudo-label term R_P (alpha_P 0.1) switches on; an EMA of C (rate 0.01) is scored.
  config.batch_size = 100
  config.num_steps = 1000 * STEPS_PER_EPOCH
  anneal_start = 300 * STEPS_PER_EPOCH
  adam = {
      "lr": 1e-3,
      "b1": 0.5,
      "b2": 0.999,
      "decay": "exponential",
      "decay_rate": 0.995,
      "decay_every": STEPS_PER_EPOCH,
      "decay_start": anneal_start,
  }
  for player in ("g", "d", "c"):
    config.optim[player] = ml_collections.ConfigDict(adam)
  config.semi.alpha = 0.5
  config.semi.alpha_p = 0.1
  config.semi.pseudo_start_step = anneal_start
  config.semi.entropy_weight = 0.3  # the paper's code: C's entropy and balance terms
  config.semi.balance_weight = 1e-3
  config.semi.classifier_ema_decay = 0.99
  # The code's pre-training of C: 30 epochs of 120 steps (500 unlabelled images each).
  config.semi.pretrain.steps = 30 * (60_000 // config.semi.pretrain.unlabelled_batch)

  config.log_every = 100
  config.sample_every = 6000
  config.checkpoint_every = 3000
  config.evals.classifier = evaluators.settings("test_error", every=3000)
  # No checkpoint is chosen by test error (that would tune on the test split): the
  # reported error is the final EMA classifier's.
  config.best_checkpoint = ml_collections.ConfigDict({"metric": "", "mode": "min", "keep": 1})
  # The MNIST DCGAN's sweep section; unused (`gan.sweep` trains plain GANs only).
  config.sweep = mnist.sweep()

  if "paper" not in parts:  # CPU-sized: 10 epochs, R_P from epoch 5, no annealing
    config.semi.pretrain.steps = 0
    config.num_steps = 10 * STEPS_PER_EPOCH
    config.semi.pseudo_start_step = 5 * STEPS_PER_EPOCH
    config.evals.classifier.every = 500
    config.checkpoint_every = 500
    config.sample_every = 1000
  if "smoke" in parts:
    config.model.g.widths = (32, 32)
    config.model.d.widths = (64, 32, 32)
    config.model.c.widths = (8, 8, 8)
    config.semi.labels_per_class = 2
    config.semi.init_batch = 100
    config.semi.pretrain.steps = 0
    config.semi.pseudo_start_step = 10  # every term runs in the smoke test
    config.batch_size = 16
    config.num_steps = 20
    config.log_every = 5
    config.sample_every = 10
    config.checkpoint_every = 10
    config.num_samples = 16
    config.evals.classifier.every = 10
  return config
