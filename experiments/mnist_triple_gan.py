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

The default variants are the paper's method, not the paper's code: one
batch size (100) for every term, D shown only labelled pairs as real, the
score-function gradient for C's adversarial term, D -> C -> G with R_P on D's
generated pairs, and none of the code's smaller settings below.

The `reference` variant runs the authors' code (zhenxuan00/triple-gan,
x2y_yz2x_xy2p_ssl_mnist.py, "mnist.py" below; nn.py; layers/merge.py;
components/objectives.py) item by item:

  D's real set     1 labelled pair and 400 unlabelled images labelled by C's
                   argmax (mnist.py:247-251, :275); fake: C's 100-image batch
                   labelled by its argmax and 200 generated pairs, each
                   half-weighted (:252, :262-263, :281, :294, :303)
                   (`semi.d_batches`)
  D's layers       weight norm with scale 1 and bias 0 at the start, no
                   data-dependent initialisation (the script never calls it),
                   every scale fixed, the output's too (nn.py:267-297,
                   train_scale=False; mnist.py:219-235) (`model.d.data_init`,
                   `model.d.train_output_scale`)
  C's adversarial  0.5 mean(p_max softplus(-D(x_u, argmax C))): C's top class
                   probability times D's non-saturating cost, the gradient
                   through p_max (mnist.py:262-263, :282, :292-293, :306)
                   (`semi.adversarial = "argmax"`)
  batch sizes      G 200; D 401 real, 300 fake; C 100 labelled + 100
                   unlabelled, R_P on 200 generated (mnist.py:99-103, :301)
                   (`semi.batches`, `semi.d_batches`)
  update order     D, then G, then C (mnist.py:449, :453, :459/:462); every
                   compiled function draws its own latents (:171), so G and
                   R_P see fresh samples, R_P the new G's
                   (`semi.update_order = "dgc"`)
  C's weight decay 1e-4 times the squared kernel of C's output layer
                   (mnist.py:81, :279, :296; objectives.py:48)
                   (`semi.classifier_weight_decay`)
  C's EMA          rate 0.01 over all of C's variables, the batch-norm
                   statistics included (mnist.py:342-349, :379: all params,
                   not only the trainable ones) (`semi.classifier_ema_stats`)
  C's init, BN     convolutions N(0, 0.05^2) (mnist.py:193-197); Lasagne's
                   batch norm, epsilon 1e-4 (components/shortcuts.py:17)
                   (`model.c.kernel_stddev`, `model.c.bn_epsilon`)
  G's batch norm   Lasagne's, with a learned scale (mnist.py:207, :209; the
                   Improved-GAN G has none) (`model.g.bn_scale`)
  D's labels       the one-hot label joins every layer's input, and twice the
                   second's: after the first hidden layer, before its noise,
                   and again after it (mnist.py:218-222: dis-4, dis-5, dis-6;
                   the other layers take it once) (`model.d.label_twice`)
  seeds            the model's seed is fixed (mnist.py:62, 1234) and only the
                   labelled subset's seed varies (:58, :138): here
                   `config.seed` stays 0 and `--config.semi.label_seed=S`
                   picks the subset (`python -m gan.seeds ... --seeds 0,1,2
                   --vary=label_seed` runs three subsets)

Where `reference` still differs from that code: the latents are Phi(z) of a
standard normal (exactly uniform, as the code's); the classifier's
cross-entropy is not clipped at 1e-6 (objectives.py:12); G's loss has no 1/2
(Adam does not see a constant factor); C's batch-norm statistics follow C's
unlabelled pass only (Lasagne updates them in every training pass, D's and
G's functions' included); each walk through the data keeps its own
permutation per epoch of its own length (the code re-permutes every 600
steps); C keeps one Adam state when R_P switches on (the code's
`train_batch_cla` has its own, mnist.py:330, :335); G's dense kernels start
from LeCun normal, not Glorot uniform; the averaged C keeps batch-norm
variances, not inverse standard deviations; the averages start from the
initial weights with a warm-up, not from zeros (mnist.py:342-349). The
CPU-sized schedule below also differs from the code's first epochs: R_P from
epoch 5 (the code's from epoch 300) and C not pre-trained (the code's first
trains it alone for 30 epochs). The paper's objective for C's adversarial
term stays available: `semi.adversarial = "reinforce"`.

Train (CPU-sized: the first 10 epochs, R_P from epoch 5; measured results in
docs/semi_supervised.md):

  python -m gan.main --config experiments/mnist_triple_gan.py --workdir runs/triple_gan

The paper's schedule (1,000 epochs; for a GPU), as the paper's method or as
the authors' code, on label seed S's subset:

  python -m gan.main --config experiments/mnist_triple_gan.py:paper --workdir runs/triple_gan
  python -m gan.main --config experiments/mnist_triple_gan.py:paper,reference \
      --workdir runs/triple_gan_reference --config.semi.label_seed=S

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/mnist_triple_gan.py:smoke --workdir /tmp/tg

Paper: 0.91% +- 0.58 test error (100 labels).
"""

from __future__ import annotations

import ml_collections

from experiments import base, mnist
from gan import semi
from gan.evaluation import evaluators

VARIANTS = ("paper", "reference", "smoke")
STEPS_PER_EPOCH = 600  # 60,000 unlabelled images / batch 100


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or a comma-separated mix of VARIANTS.

  "paper" trains for the paper's 1,000 epochs (for a GPU); "" for its first 10 epochs
  with R_P switched on halfway, a CPU-sized run that does not reach the paper's phase
  where R_P and annealing start; "smoke" for a few seconds. "reference" (with any of
  them) trains the authors' code's method instead of the paper's.
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
  # The code counts epochs from 1 (mnist.py:417): update t (from 0) runs in epoch
  # t // 600 + 1. R_P is on from epoch 300 (:458), i.e. from update 299 x 600, and the rate
  # is annealed after each epoch from 300 on (:474-475), first for update 300 x 600: the
  # staircase's first step after its start at 299 x 600.
  config.batch_size = 100
  config.num_steps = 1000 * STEPS_PER_EPOCH
  anneal_start = 299 * STEPS_PER_EPOCH
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
  if "reference" in parts:
    reference(config)
  return config


def reference(config: ml_collections.ConfigDict) -> None:
  """The authors' code's settings (the module docstring), from the config's sizes.

  With batch 100 and 100 labels: C 100 labelled, G 200, D 1 labelled + 400
  classifier-labelled real pairs, as the code's batch-size rules give.
  """
  semi = config.semi
  num_labelled = semi.labels_per_class * semi.num_classes
  semi.batches.labelled = min(100, num_labelled)
  semi.batches.generated = 2 * config.batch_size
  semi.d_batches.labelled = max(num_labelled // 100, 1)
  semi.d_batches.unlabelled = 4 * config.batch_size
  semi.adversarial = "argmax"
  semi.update_order = "dgc"
  semi.classifier_weight_decay = 1e-4
  semi.pretrain.weight_decay = 1e-4  # the code's pre-training loss has it too
  semi.classifier_ema_stats = True
  config.model.d.update(data_init=False, train_output_scale=False, label_twice=True)
  config.model.g.bn_scale = True
  config.model.c.update(kernel_stddev=0.05, bn_epsilon=1e-4)
