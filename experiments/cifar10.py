"""SNGAN ResNet on CIFAR-10 (Miyato et al. 2018): hinge loss, spectral norm in D, n_critic 5.

Target (Miyato et al. 2018, "Spectral Normalization for Generative Adversarial
Networks", ICLR, Table 2, "(ours) SN-GANs, Eq.(17)" under ResNet): Inception
Score 8.22 +- .05, FID 21.7 +- .21 (mean +- std over training seeds). Their
protocol (Appendix B.1): IS from 5,000 generated images, 10 times; FID between
"10000 and 5000 samples" of the true and generated distributions. The paper
does not say which CIFAR-10 split the 10,000 real images came from (the
authors' code reads precomputed statistics, `cifar-10-fid.npz`).

The recipe: the ResNet G (width 256) and D (width 128, spectral norm on every
weight) of the paper's Table 4 (`gan.models.sngan`), z ~ N(0, I) of 128
dimensions, the hinge loss (Eq. 16/17), 5 D updates per G update, Adam 2e-4
with (beta1, beta2) = (0, 0.9) for both players (Appendix B.2), batch 64, both
learning rates decayed linearly to 0 over 50,000 generator updates (D's over its
250,000 updates), as in the authors' CIFAR-10 config
(pfnet-research/sngan_projection, configs/sn_cifar10_unconditional.yml:
iteration 50000, iteration_decay_start 0; the paper's Sec. 4.1 says 100K updates
"unless otherwise noted"). Their updater feeds G's update 128 fakes
(`n_gen_samples`); here both players see batches of 64. Added to the paper's
recipe: an EMA of G's weights with decay 0.9999 (Yazici et al. 2019, "The
Unusual Effectiveness of Averaging in GAN Training", ICLR; the rate BigGAN
uses, Brock et al. 2019), with the warm-up of `gan.step.ema_decay_at`; samples
and evaluations use it.

Evaluation: every 2,500 steps the FCD (and KID, precision/recall, class
coverage) of 10,000 EMA samples against the 10,000-image test split in the
features of the project's CIFAR-10 ResNet-20 (`gan.evaluation.classifiers`);
the best checkpoint by FCD is kept. Every 10,000 steps FID by the standard
protocol: 50,000 EMA samples against all 50,000 training images, in the FID
InceptionV3 (the TF graph, `gan.evaluation.inception`). Its weights have no
classification head, so IS is not computed. With 50,000 instead of 5,000 samples
FID is lower for the same generator (its bias falls with the sample count), so
our FID is not the paper's 5k/10k number; eval.json's protocol stamp names the
split and counts. The FID evaluator is `optional`: without the converted
Inception weights (`python -m gan.evaluation.convert_inception` says how to
make them) training goes on with a one-line warning, and
`python -m gan.evaluate --workdir W` scores the run once they exist. On this
machine's offline data the train split is a JPEG re-encode
(../shared/tensorflow_datasets/README.md): FID against it is not comparable
with published numbers (use split="test", num_reference=10_000 there).

Train (GPU; `pip install -e .[cuda12]`):

  python -m gan.main --config experiments/cifar10.py --workdir runs/cifar10
  python -m gan.main --config experiments/cifar10.py:bf16 --workdir runs/cifar10_bf16

`bf16` computes in bfloat16 with float32 parameters and optimizer state
(`config.model.dtype`, see `gan.models.conditioning`). Variants combine with
commas (`smoke,bf16`).

On a CPU: `smoke` (seconds; tests) and `cpu30`, a run sized to about half an hour
on one CPU core from the measured step costs (benchmarks/README.md):

  python -m gan.main --config experiments/cifar10.py:smoke --workdir /tmp/cifar10_smoke
  taskset -c 0 python -m gan.main --config experiments/cifar10.py:cpu30 --workdir runs/cifar10_cpu30

cpu30 keeps the recipe (hinge, n_critic 5, Adam (0, 0.9), linear decay, EMA,
batch 64) with G and D 32 channels wide and 900 generator steps. Every 150
steps: sample grids, the FID of 2,000 samples against the 10,000 test images
(the best checkpoint is kept by it) and the FCD of 10,000 samples in the
project's CIFAR-10 ResNet-20; at the end the FID of 5,000 samples against the test
images (the papers' counts). On a CPU the FID evaluations, and the test
images' Inception statistics computed before the first step of a machine's
first run, cost more than the training; measured times: docs/results.md.
"""

from __future__ import annotations

import ml_collections

from experiments import base
from gan.evaluation import evaluators

VARIANTS = ("smoke", "cpu30", "bf16")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or a comma-separated mix of VARIANTS."""
  parts = base.parse_variant(variant, VARIANTS)
  config = base.config("cifar10")

  config.model.generator = "sngan_resnet32"
  config.model.discriminator = "sngan_resnet32"  # spectral norm on by default
  config.model.z_dim = 128
  config.model.g = ml_collections.ConfigDict({"width": 256})
  config.model.d = ml_collections.ConfigDict({"width": 128})
  config.model.dtype = "float32"  # "bfloat16": mixed precision

  config.loss = "hinge"
  config.n_critic = 5
  adam = {"lr": 2e-4, "b1": 0.0, "b2": 0.9, "decay": "linear"}
  config.optim.g = ml_collections.ConfigDict(adam)
  config.optim.d = ml_collections.ConfigDict(adam)
  config.ema_decay = 0.9999

  config.batch_size = 64  # global, split over all devices
  config.num_steps = 50_000  # generator updates

  config.log_every = 100
  config.sample_every = 1000
  config.checkpoint_every = 5000

  config.evals.cifar_resnet20 = evaluators.settings(
      "fcd", arch="cifar_resnet20", every=2500, num_samples=10_000, split="test"
  )
  config.evals.fid = evaluators.settings(
      "inception",
      every=10_000,
      num_samples=50_000,
      split="train",
      num_reference=50_000,
      optional=True,
  )
  config.best_checkpoint = ml_collections.ConfigDict(
      {"metric": "cifar_resnet20/fcd", "mode": "min", "keep": 1}
  )

  if "cpu30" in parts:
    config.model.g.width = config.model.d.width = 32
    config.num_steps = 900
    config.log_every = 25
    config.sample_every = 150
    config.checkpoint_every = 150
    config.evals.cifar_resnet20.every = 150
    # FID against the 10,000 lossless test images: 2,000 EMA samples every 150 steps (the
    # curve; FID's bias is larger at 2,000 samples, so these read high), and 5,000 at the end
    # (the papers' count, Miyato et al. 2018, Appendix B.1).
    fid = {"split": "test", "num_reference": 10_000, "optional": True}
    config.evals.fid = evaluators.settings("inception", every=900, num_samples=5_000, **fid)
    config.evals.fid_2k = evaluators.settings("inception", every=150, num_samples=2_000, **fid)
    config.best_checkpoint.metric = "fid_2k/fid"
  if "smoke" in parts:
    config.model.g.width = config.model.d.width = 8
    config.batch_size = 16
    config.num_steps = 4
    config.log_every = 2
    config.sample_every = 2
    config.checkpoint_every = 2
    config.num_samples = 16
    config.evals = ml_collections.ConfigDict()
    config.best_checkpoint.metric = ""
  if "bf16" in parts:
    config.model.dtype = "bfloat16"
  return config
