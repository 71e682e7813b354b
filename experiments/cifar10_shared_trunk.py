"""Triple-GAN on CIFAR-10 with 5,000 labels (500 per class), C and D sharing a ResNet trunk.

Practitioners report 72.6% test accuracy on CIFAR-10 with 10% of the labels
from a classifier and a discriminator that share their first layers; the
target here is to beat it. The networks (`gan.models.shared_trunk`): a
five-block ResNet (SNGAN's discriminator blocks, width 128, no normalisation)
whose first four blocks are shared; C's head is the fifth block, global mean
pooling, dropout 0.5 and a 10-way linear layer, D's head its own fifth block,
global mean pooling and a real/fake logit for the image-label pair (a
projection head: D judges pairs, as Triple-GAN's D(x, y) must). G is the
Triple-GAN CIFAR-10 generator (`gan.models.cifar_semi`).

D pools by the mean, not by SNGAN's sum: without spectral norm a sum over the
8x8 positions made D's logits and its gradient on the shared trunk so large
that C's gradient drowned in Adam's normalisation and C stayed at chance, even
with D's gradient on the trunk scaled down (`semi.trunk_d_weight`). With mean
pooling C learns under the full gradient (docs/semi_supervised.md).

How the shared parameters are trained (`config.semi.shared_trunk`,
`gan.semi.triple_gan`): the trunk lives in C's state, D's state holds its
head; D's passes run on C's current trunk; the trunk's gradient is the sum of
its gradients from L_D (taken in D's update) and L_C, applied by C's
optimizer once per step. So there is one copy of the trunk and one optimizer
state for it, C's EMA covers it (the reported classifier), and D's optimizer
touches only D's head.

The rest is Triple-GAN's CIFAR-10 recipe (`experiments/cifar10_triple_gan.py`:
alpha 1/2, C's adversarial term x 0.01, R_P with alpha_P 0.1, C's EMA 0.99)
with these choices of ours, made for this network, not taken from a paper:
no ZCA; C's training passes see images shifted by up to 4 pixels (DiffAugment's
"translation", zeros shifted in), the Pi-model consistency term between two
such passes with weight 10 (Laine & Aila's 100 x labelled / total images)
ramped up over 80 epochs; 300 epochs (Laine & Aila's length) of 500 steps at
batch 100; Adam 3e-4 for all three players (beta1 0.9 for C, 0.5 for G and
D), annealed x0.99 per epoch from epoch 150; R_P from epoch 100. The health
monitor is off: its diversity probe runs D on D's state alone, which here
lacks the trunk (non-finite updates are still dropped by the step).

Target: test accuracy >= 72.6% (test error <= 27.4%) on the 10,000-image
test split, of C's EMA at the end of the run.

Train (the full run; for a GPU, `pip install -e .[cuda12]`):

  python -m gan.main --config experiments/cifar10_shared_trunk.py --workdir runs/shared_trunk

On a CPU: `cpu` is a background run sized for one core, NOT the full recipe:
width 32, C's learning rate 1e-3, 2,000 steps (4 epochs), the ramps counting
100-step "epochs" (consistency weight 0 for 100 steps, ramped up to 10 by step
500), R_P from step 1,000, no annealing. Measured results: docs/semi_supervised.md.
`smoke` runs in a few seconds (tests):

  taskset -c 0 nohup python -m gan.main --config experiments/cifar10_shared_trunk.py:cpu \\
      --workdir runs/shared_trunk_cpu &
  python -m gan.main --config experiments/cifar10_shared_trunk.py:smoke --workdir /tmp/st

Two changes to try against the recipe above, each a variant that combines with
the others (`cpu,flip`): `flip` adds horizontal flips to C's translations (the
standard CIFAR-10 augmentation, `gan.augment`), `norm` normalises the shared
trunk (layer normalisation after each of its blocks, `gan.models.shared_trunk`).
"""

from __future__ import annotations

import ml_collections

from experiments import base, cifar10_triple_gan
from gan.evaluation import evaluators

VARIANTS = ("cpu", "smoke", "flip", "norm")
STEPS_PER_EPOCH = cifar10_triple_gan.STEPS_PER_EPOCH


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" (the full run) or a mix of VARIANTS."""
  parts = base.parse_variant(variant, VARIANTS)
  config = cifar10_triple_gan.get_config()  # the method's CIFAR-10 recipe, on other networks
  config.model.discriminator = config.model.classifier = "shared_trunk"
  config.model.d = ml_collections.ConfigDict({"width": 128, "num_classes": 10, "pool": "mean"})
  config.model.c = ml_collections.ConfigDict({"width": 128, "dropout_rate": 0.5})

  config.num_steps = 300 * STEPS_PER_EPOCH
  anneal = {"decay": "exponential", "decay_rate": 0.99, "decay_every": STEPS_PER_EPOCH}
  anneal["decay_start"] = 150 * STEPS_PER_EPOCH
  for player, b1 in (("g", 0.5), ("d", 0.5), ("c", 0.9)):
    config.optim[player] = ml_collections.ConfigDict({"lr": 3e-4, "b1": b1, "b2": 0.999, **anneal})

  semi = config.semi
  semi.labels_per_class = 500
  semi.shared_trunk = True
  semi.zca = False
  semi.classifier_augment = "translation"
  semi.consistency_weight = 10.0
  semi.consistency_rampup_epochs = 80
  semi.pseudo_start_step = 100 * STEPS_PER_EPOCH
  config.health.enabled = False

  if "cpu" in parts:
    config.model.g.width = 32
    config.model.d.width = config.model.c.width = 32
    config.num_steps = 2000
    config.optim.c.lr = 1e-3  # a short run: C at 3e-4 had barely left chance by step 100
    semi.steps_per_epoch = 100  # the ramps' unit here, not an epoch of the data
    semi.consistency_rampup_epochs = 5
    semi.pseudo_start_step = 1000
    config.log_every = 50
    config.evals.classifier.every = 250
    config.checkpoint_every = config.sample_every = 250
  if "flip" in parts:
    semi.classifier_augment = "translation,flip"
  if "norm" in parts:
    config.model.c.norm = config.model.d.norm = "layer"
  if "smoke" in parts:
    config.model.g.width = 8
    config.model.d.width = config.model.c.width = 8
    semi.labels_per_class = 2
    semi.init_batch = 16
    semi.steps_per_epoch = 2
    semi.consistency_rampup_epochs = 2
    semi.pseudo_start_step = 2
    config.batch_size = 16
    config.num_steps = 4
    config.log_every = 2
    config.sample_every = config.checkpoint_every = 2
    config.num_samples = 20
    config.evals.classifier = evaluators.settings("test_error", every=2, split="test[:500]")
  return config
