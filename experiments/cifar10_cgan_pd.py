"""Class-conditional SNGAN ResNet on CIFAR-10: conditional batch norm in G, projection D.

Target (Miyato & Koyama 2018, "cGANs with Projection Discriminator", ICLR,
Table 1, CIFAR-10, "projection"): Inception Score 8.62, FID 17.5 (their
concat-discriminator and AC-GAN baselines: FID 19.2 and 19.7). We could not
check which real split and sample counts that table's FID used; compare with
care (see `experiments/cifar10.py` for our protocol and its FID bias).

The recipe is the authors' CIFAR-10 config (pfnet-research/sngan_projection,
configs/sn_cifar10.yml): the SNGAN ResNet G (width 256) with conditional
batch norm on the class in every residual block (de Vries et al. 2017;
Dumoulin et al. 2017; the last batch norm stays unconditional, as in their
code) and the SN ResNet D (width 128) with the projection term
<embed(y), phi(x)> (Miyato & Koyama 2018, Eq. 3; `gan.models.conditioning`),
hinge loss, 5 D updates per G update, Adam 2e-4 with (0, 0.9), batch 64, 50,000
generator updates with both rates decayed linearly to 0. Real images are
judged with their dataset labels; fakes are made from, and judged with, labels
drawn uniformly. Added, as in `experiments/cifar10.py`: the 0.9999 EMA of G.
Evaluators and the best-by-FCD checkpoint are those of `experiments/cifar10.py`;
they sample G without labels, which draws class i mod 10 for sample i, so every
class is scored equally often. Intra-class FID (the paper's ImageNet measure) is
not implemented.

Sample grids have one column per class (10 x 10 here).

Train (GPU):

  python -m gan.main --config experiments/cifar10_cgan_pd.py --workdir runs/cifar10_cgan_pd

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/cifar10_cgan_pd.py:smoke --workdir /tmp/cgan_smoke
"""

from __future__ import annotations

import ml_collections

from experiments import base, cifar10

VARIANTS = ("smoke", "bf16")  # as in experiments/cifar10.py
NUM_CLASSES = 10


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or a comma-separated mix of VARIANTS."""
  parts = base.parse_variant(variant, VARIANTS)
  config = cifar10.get_config(variant)
  config.model.g.num_classes = NUM_CLASSES  # conditional batch norm
  config.model.d.num_classes = NUM_CLASSES  # projection (model.d.projection defaults to True)
  config.num_samples = 2 * NUM_CLASSES if "smoke" in parts else 10 * NUM_CLASSES
  return config
