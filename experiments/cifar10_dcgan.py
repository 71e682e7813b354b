"""SNGAN "standard CNN" on CIFAR-10 (Miyato et al. 2018) with the hinge loss, n_critic 1.

Target (Miyato et al. 2018, "Spectral Normalization for Generative Adversarial
Networks", ICLR, Table 2, "(ours) SN-GANs, Eq.(17)" under Standard CNN):
Inception Score 7.58 +- .12, FID 25.5 on CIFAR-10. Protocol as for
`experiments/cifar10.py` (IS from 5,000 samples, FID from 10,000 real and
5,000 generated samples, real split not stated).

The recipe: the paper's Table 3 networks (`gan.models.sngan`, width 64: G
512-256-128-64 channels with batch norm, D seven convolutions 64..512 with
LeakyReLU 0.1 and spectral norm), z ~ N(0, I) of 128 dimensions, the hinge
loss (Eq. 16/17), Adam 2e-4 with (beta1, beta2) = (0.5, 0.999) and one D
update per G update: setting C of the paper's Table 1 (Radford et al.'s DCGAN
setting). The paper reports each method at its best setting without naming the
one behind this row; C is the setting its Appendix C.1 trains the CIFAR-10
standard CNN with (spectral norms in its Figure 9), and the authors' library
runs the SN standard CNN with it (pfnet-research/chainer-gan-lib, example.sh:
`--algorithm stdgan --architecture sndcgan --n_dis 1 --adam_beta1 0.5
--adam_beta2 0.999`, alpha 0.0002 and batch 64 by default). 100,000
generator updates ("for all experiments, unless otherwise noted", Sec. 4.1),
constant learning rates. Added, as in `experiments/cifar10.py`: the 0.9999 EMA
of G that samples and evaluations use. Evaluators (FCD every 5,000 steps, the
optional 50k-vs-train FID every 20,000) and the best-by-FCD checkpoint are
those of `experiments/cifar10.py`.

Train (GPU):

  python -m gan.main --config experiments/cifar10_dcgan.py --workdir runs/cifar10_dcgan

Small and fast variant for tests and CPU demos:

  python -m gan.main --config experiments/cifar10_dcgan.py:smoke --workdir /tmp/dcgan_smoke
"""

from __future__ import annotations

import ml_collections

from experiments import base, cifar10

VARIANTS = ("smoke", "bf16")  # as in experiments/cifar10.py


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or a comma-separated mix of VARIANTS."""
  parts = base.parse_variant(variant, VARIANTS)
  config = cifar10.get_config(variant)
  config.model.generator = config.model.discriminator = "sngan_cnn32"
  config.model.g.width = config.model.d.width = 8 if "smoke" in parts else 64
  config.n_critic = 1
  adam = {"lr": 2e-4, "b1": 0.5, "b2": 0.999, "decay": "none"}
  config.optim.g = ml_collections.ConfigDict(adam)
  config.optim.d = ml_collections.ConfigDict(adam)
  if "smoke" not in parts:
    config.num_steps = 100_000
    config.evals.cifar_resnet20.every = 5000
    config.evals.fid.every = 20_000
  return config
