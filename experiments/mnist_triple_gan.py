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
full-width CNN those 3,600 steps took 1.6 s each on one core here (beside
another job), about 1.6 h.

Not the paper's code exactly: one batch size (100) for every term (the code
uses 200 generated, 400 classifier-labelled and 1 labelled pair for D), the
score-function gradient for C's adversarial term (the code weights D's
verdict on C's argmax label by its probability), and no weight decay on C's
last layer (the code's 1e-4).

Train (CPU-sized: the first 10 epochs, R_P from epoch 5; 75 min on one core of the
2-core CPU; 3.97% +- 0.09 test error over seeds 0-2, see the README):

  python -m gan.main --config experiments/mnist_triple_gan.py --workdir runs/triple_gan

The paper's schedule (1,000 epochs; for a GPU):

  python -m gan.main --config experiments/mnist_triple_gan.py:paper --workdir runs/triple_gan

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist_triple_gan.py:smoke --workdir /tmp/tg

Paper: 0.91% +- 0.58 test error (100 labels).
"""

from __future__ import annotations

import ml_collections

from experiments import mnist_improved_gan


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config.

  Variants: "paper" (the paper's 1,000 epochs: days on a CPU, hours on a GPU),
  "" (its first 10 epochs with R_P switched on halfway: a CPU-sized run that
  does not reach the paper's phase where R_P and annealing start) and "smoke"
  (a few seconds).
  """
  if variant not in ("", "paper", "smoke"):
    raise ValueError(f"unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  config = mnist_improved_gan.get_config("smoke" if variant == "smoke" else "")
  config.method = "triple_gan"
  config.model.g.label_classes = 10  # G(z, y) and D(x, y): the Improved-GAN MLPs, conditional
  config.model.d.label_classes = 10
  config.model.d.num_classes = 1  # one real/fake logit per image-label pair
  config.model.classifier = "cnn28"
  config.model.c = ml_collections.ConfigDict({"widths": (32, 64, 128), "dropout_rate": 0.5})

  # The paper's schedule (its public MNIST code): 1,000 epochs of 600 steps, Adam 1e-3
  # (beta1 0.5) for all three players, annealed x0.995 per epoch from epoch 300, when the
  # pseudo-label term R_P (alpha_P 0.1) switches on; an EMA of C (rate 0.01) is scored.
  steps_per_epoch = 600  # 60,000 unlabelled images / batch 100
  config.num_steps = 1000 * steps_per_epoch
  anneal_start = 300 * steps_per_epoch
  adam = {
      "lr": 1e-3,
      "b1": 0.5,
      "b2": 0.999,
      "decay": "exponential",
      "decay_rate": 0.995,
      "decay_every": steps_per_epoch,
      "decay_start": anneal_start,
  }
  for player in ("g", "d", "c"):
    config.optim[player] = ml_collections.ConfigDict(adam)
  config.health.discriminator_wins.action = "log"  # G plays the usual game here
  config.semi.alpha = 0.5
  config.semi.alpha_p = 0.1
  config.semi.pseudo_start_step = anneal_start
  config.semi.entropy_weight = 0.3  # the paper's code: C's entropy and balance terms
  config.semi.balance_weight = 1e-3
  config.semi.classifier_ema_decay = 0.99
  config.evals.classifier.every = 3000
  config.checkpoint_every = 3000
  config.sample_every = 6000

  # The code's pre-training of C: 30 epochs of 120 steps (500 unlabelled images each).
  config.semi.pretrain.steps = 30 * (60_000 // config.semi.pretrain.unlabelled_batch)

  if variant == "":  # CPU-sized: 10 epochs, R_P from epoch 5, no annealing
    config.semi.pretrain.steps = 0
    config.num_steps = 10 * steps_per_epoch
    config.semi.pseudo_start_step = 5 * steps_per_epoch
    config.evals.classifier.every = 500
    config.checkpoint_every = 500
    config.sample_every = 1000
  if variant == "smoke":
    config.model.c.widths = (8, 8, 8)
    config.num_steps = 20
    config.semi.pseudo_start_step = 10  # every term runs in the smoke test
    config.semi.pretrain.steps = 0
    config.evals.classifier.every = 10
    config.checkpoint_every = 10
    config.sample_every = 10
  return config
