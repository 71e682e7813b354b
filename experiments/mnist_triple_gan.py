"""Triple-GAN (Li et al. 2017) on MNIST with 100 labels.

Three players in one compiled step (`gan.semi.triple_gan`): a CNN classifier
C(y | x) (`gan.models.triple_gan.CNNClassifier`), the Improved-GAN MLP
generator and discriminator made conditional on the one-hot label, D judging
image-label pairs. D sees labelled pairs as real and classifier-labelled
unlabelled pairs (weight alpha = 1/2) and generated pairs (1 - alpha) as fake;
C learns from the 100 labels (10 per class, a seeded balanced subset saved in
the workdir), from D through the score-function gradient, and from
generated pairs (the pseudo-label term R_P, weight alpha_P = 0.1, switched on
after a third of the steps, once G draws recognisable digits of the asked
class). Adam 3e-3 (beta1 0.5) for all three, batch 100. The test error is
that of an EMA of C's parameters on the 10,000-image test split, measured at
the end (never used to choose a checkpoint).

Train:

  python -m gan.main --config experiments/mnist_triple_gan.py --workdir runs/triple_gan

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist_triple_gan.py:smoke --workdir /tmp/tg

Paper: 0.91% +- 0.58 test error (100 labels).
"""

from __future__ import annotations

import ml_collections

from experiments import mnist_improved_gan


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; variant "smoke" is the few-second version."""
  config = mnist_improved_gan.get_config(variant)  # data, labels, cadences, evaluator
  config.method = "triple_gan"
  config.model.g.label_classes = 10  # G(z, y) and D(x, y): the Improved-GAN MLPs, conditional
  config.model.d.label_classes = 10
  config.model.d.num_classes = 1  # one real/fake logit per image-label pair
  config.model.classifier = "cnn28"
  config.model.c = ml_collections.ConfigDict({"widths": (32, 64, 128), "dropout_rate": 0.5})
  config.optim.c = ml_collections.ConfigDict({"lr": 3e-3, "b1": 0.5, "b2": 0.999, "decay": "none"})
  config.semi.alpha = 0.5
  config.semi.alpha_p = 0.1
  config.semi.pseudo_start_step = config.num_steps // 3
  if variant == "smoke":
    config.model.c.widths = (8, 8, 8)
  return config
