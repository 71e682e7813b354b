"""Triple-GAN (Li et al. 2017) on CIFAR-10 with 4,000 labels (400 per class).

The paper's CIFAR-10 setup, read from the authors' public code
(zhenxuan00/triple-gan, x2y_yz2x_xy2p_ssl_cifar10.py; `gan.models.cifar_semi`
lists the networks): C is the 13-layer "conv-large" CNN of Laine & Aila's
Pi-model (ZCA-whitened input, Gaussian noise 0.15, LeakyReLU 0.1, dropout
0.5, weight norm with mean-only batch norm, data-dependent initialisation);
G(z, y) a conditional DCGAN-like generator (one-hot labels concatenated to z
and to every feature map, batch norm, 5x5 deconvolutions, weight-normalised
tanh output); D(x, y) a weight-normalised convolutional net with dropout 0.2
and the label concatenated to every feature map. From the code:

  C's loss         R_L + 0.01 x 1/2 x adversarial (`adversarial_scale` 0.01 with
                   alpha 1/2) + Pi-model consistency, weight 100 x rampup over
                   the first 80 epochs (0 in the first epoch; `gan.ramps`)
                   + R_P (alpha_P 0.1) from epoch 200 (`epoch_cla_g`)
  D's loss         alpha = 1/2 between classifier-labelled and generated pairs
  optimisers       Adam: G and D 3e-4 (beta1 0.5), annealed x0.995 per epoch
                   from epoch 300; C 3e-3 (beta1 0.9, ramped down to 0.5 over
                   epochs 250-300, the code's `rampdown`, which is Laine &
                   Aila's written for their 300 epochs), annealed x0.99 per
                   epoch from epoch 300
  schedule         1,000 epochs of 500 steps (50,000 unlabelled images / 100)
  C's EMA          rate 0.01 (decay 0.99): the classifier whose test error is
                   reported, on the 10,000-image test split, at the end
  ZCA              fitted on all 50,000 training images (eps 1e-5) when the run
                   starts, kept in C's variables

Consistency weight: Laine & Aila scale their maximum weight (100) by
labelled / total images, 8 for 4,000 labels; Triple-GAN's code uses 100
unscaled, and so do we.

The default variants are the paper's method, not the paper's code: one batch
size, 100, for every term; only labelled pairs are real for D; C's
adversarial gradient is the score-function estimate; D -> C -> G with R_P on
D's generated pairs; C's EMA scored with the raw C's batch-norm means; no
NaN clearing. The `reference` variant (with `cpu` or `smoke` too) follows
the code (x2y_yz2x_xy2p_ssl_cifar10.py, "cifar10.py" below) in each:

  D's real set     40 labelled pairs and 160 unlabelled images labelled by C's
                   argmax; fake: C's 100-image batch labelled by its argmax
                   and 200 generated pairs, each half-weighted
                   (cifar10.py:342-350, :360-371, :380) (`semi.d_batches`)
  C's adversarial  0.01 x 0.5 mean(p_max softplus(-D(x_u, argmax C)))
                   (cifar10.py:165, :368-370, :382) (`semi.adversarial`)
  batch sizes      G 200; C 100 labelled + 100 unlabelled, R_P on 200
                   generated (cifar10.py:177-181) (`semi.batches`)
  update order     D, G, C (cifar10.py:508, :515, :523/:526), each function
                   with its own latents (:250), R_P on the new G's
                   (`semi.update_order = "dgc"`)
  C's EMA          over all of C's variables, the mean-only batch norms'
                   running means included (cifar10.py:411-419;
                   zca_bn.py:67) (`semi.classifier_ema_stats`)
  NaN clearing     C's Adam clears NaNs (`robust_adam`, cifar10.py:99-118,
                   :404); here NaN gradient entries are zeroed before Adam
                   (`optim.c.clear_nans`)

D's parametrisation is the code's in every variant: weight norm without
data-dependent initialisation, hidden scales fixed at 1, the output's
learned (cifar10.py:299-314, nn.py:49-95; only C is initialised from data,
:329-331, :458). Still not the code's: the code's training split is the
original CIFAR-10, ours the JPEG-derived copy of
../shared/tensorflow_datasets (README there); and C's batch-norm means follow
C's unlabelled pass (the code's, its second pass over the same images).

Targets (Li et al. 2017, Table 1, CIFAR-10 with 4,000 labels, mean +- std
over runs): Triple-GAN 16.99% +- 0.36 test error; Improved-GAN (Salimans et
al. 2016) 18.63% +- 2.32.

Train (the paper's schedule; for a GPU, `pip install -e .[cuda12]`):

  python -m gan.main --config experiments/cifar10_triple_gan.py --workdir runs/cifar10_triple_gan

On a CPU: `cpu` is a run sized for one core, NOT the paper's recipe: every
network at a quarter of its width (C 32-64-128-64-32), batch 50, 1,500 steps
(1.5 epochs), the ramps counting 250-step "epochs" (consistency weight 0 for
250 steps, then ramped up to 100 by step 750), R_P from step 750, no
annealing. Measured results and what the run shows: docs/semi_supervised.md.
`smoke` runs in seconds (tests).

  taskset -c 0 python -m gan.main --config experiments/cifar10_triple_gan.py:cpu \\
      --workdir runs/cifar10_triple_gan_cpu
  python -m gan.main --config experiments/cifar10_triple_gan.py:smoke --workdir /tmp/tg_cifar

The authors' code's method (GPU; `:cpu,reference` and `:smoke,reference` too):

  python -m gan.main --config experiments/cifar10_triple_gan.py:reference \
      --workdir runs/cifar10_triple_gan_reference
"""

from __future__ import annotations

import ml_collections

from experiments import base
from gan import semi as semi_lib
from gan.evaluation import evaluators

VARIANTS = ("cpu", "reference", "smoke")
STEPS_PER_EPOCH = 500  # 50,000 unlabelled images / batch 100


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" (the paper's schedule), "cpu" or "smoke",
  each optionally with "reference" (the authors' code's method; see the module docstring)."""
  parts = base.parse_variant(variant, VARIANTS)
  config = base.config("cifar10")
  config.method = "triple_gan"

  config.model.generator = config.model.discriminator = "triple_gan32"
  config.model.z_dim = 100
  config.model.g = ml_collections.ConfigDict({"width": 128})
  config.model.d = ml_collections.ConfigDict({"widths": (32, 64, 128), "dropout_rate": 0.2})
  config.model.classifier = "conv_large"
  config.model.c = ml_collections.ConfigDict(
      {"widths": (128, 256, 512, 256, 128), "input_noise": 0.15, "dropout_rate": 0.5}
  )
  config.loss = "non_saturating"  # unused: the method defines its losses
  config.ema_decay = 0.999

  config.batch_size = 100
  config.num_steps = 1000 * STEPS_PER_EPOCH
  # The code counts epochs from 1 (cifar10.py:461) and anneals after each epoch from
  # epoch 300 on (:544-546): update t (from 0) runs in epoch t // 500 + 1, so the first
  # lowered rate is update 300 x 500's, the staircase's first step after 299 x 500.
  anneal = {"decay": "exponential", "decay_every": STEPS_PER_EPOCH}
  anneal["decay_start"] = 299 * STEPS_PER_EPOCH
  for player in ("g", "d"):
    config.optim[player] = ml_collections.ConfigDict(
        {"lr": 3e-4, "b1": 0.5, "b2": 0.999, "decay_rate": 0.995, **anneal}
    )
  config.optim.c = ml_collections.ConfigDict(
      {"lr": 3e-3, "b1": 0.9, "b2": 0.999, "decay_rate": 0.99, **anneal}
  )
  config.optim.c.b1_rampdown = ml_collections.ConfigDict(
      {"start_epoch": 250, "epochs": 50, "steps_per_epoch": STEPS_PER_EPOCH, "final": 0.5}
  )

  config.semi = semi = semi_lib.defaults()
  semi.labels_per_class = 400
  semi.init_batch = 100  # the code initialises C from the first 100 unlabelled images
  semi.alpha = 0.5
  semi.adversarial_scale = 0.01
  semi.alpha_p = 0.1
  semi.pseudo_start_step = 199 * STEPS_PER_EPOCH  # epoch 200 (from 1) on (cifar10.py:522)
  semi.entropy_weight = semi.balance_weight = 0.0  # MNIST-only regularisers in the code
  semi.consistency_weight = 100.0
  semi.consistency_rampup_epochs = 80
  semi.steps_per_epoch = STEPS_PER_EPOCH
  semi.zca = True
  semi.zca_images = 0  # all
  semi.classifier_ema_decay = 0.99

  config.log_every = 100
  config.evals.classifier = evaluators.settings("test_error", every=10 * STEPS_PER_EPOCH)
  # No checkpoint is chosen by test error (that would tune on the test split): the
  # reported error is the final EMA classifier's.
  config.best_checkpoint = ml_collections.ConfigDict({"metric": "", "mode": "min", "keep": 1})
  config.checkpoint_every = 10 * STEPS_PER_EPOCH
  config.sample_every = 10 * STEPS_PER_EPOCH
  config.num_samples = 100  # 10 x 10: one column per class

  if "cpu" in parts:
    config.model.g.width = 32
    config.model.d.widths = (8, 16, 32)
    config.model.c.widths = (32, 64, 128, 64, 32)
    config.batch_size = 50
    config.num_steps = 1500
    semi.steps_per_epoch = 250  # the ramps' unit here, not an epoch of the data
    semi.consistency_rampup_epochs = 3
    semi.pseudo_start_step = 750
    config.log_every = 50
    config.evals.classifier.every = 250
    config.checkpoint_every = config.sample_every = 250
  if "smoke" in parts:
    config.model.g.width = 8
    config.model.d.widths = (4, 4, 4)
    config.model.c.widths = (8, 8, 8, 8, 8)
    semi.labels_per_class = 2
    semi.init_batch = 16
    semi.zca_images = 256
    semi.steps_per_epoch = 2
    semi.consistency_rampup_epochs = 2
    semi.pseudo_start_step = 2
    config.batch_size = 16
    config.num_steps = 4
    config.log_every = 2
    config.sample_every = config.checkpoint_every = 2
    config.num_samples = 20
    config.evals.classifier = evaluators.settings("test_error", every=2, split="test[:500]")
  if "reference" in parts:
    # The code's batch sizes at batch 100 (C 100 + 100, G 200, D 40 + 160 real), scaled.
    d_labelled = 2 * config.batch_size // 5
    semi.batches.update(labelled=config.batch_size, generated=2 * config.batch_size)
    semi.d_batches.update(labelled=d_labelled, unlabelled=2 * config.batch_size - d_labelled)
    semi.adversarial = "argmax"
    semi.update_order = "dgc"
    semi.classifier_ema_stats = True
    config.optim.c.clear_nans = True
  return config
