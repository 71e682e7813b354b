"""Stacked MNIST: 1,000 modes from three stacked digits (Metz et al. 2017; PacGAN protocol).

  python -m gan.main --config experiments/stacked_mnist.py --workdir runs/stacked_mnist

The MNIST DCGAN of `experiments/mnist.py` with a 3-channel generator; each
training image stacks three random MNIST training digits as its R, G and B
channels (`gan.data`, "stacked_mnist"). The evaluator classifies each channel
of 26,000 EMA samples with the project's MNIST classifier (shipped with the
package) and reports `modes` (distinct digit triples, of 1,000) and `kl`
(KL of the generated triple histogram to the uniform one). PacGAN reports
1,000 modes and KL 0.06-0.07 for PacGAN2-4, and 99 modes / KL 3.4 for its
DCGAN baseline.

Target: all 1,000 modes and KL <= 0.1 at step 12,500. Measured results:
docs/results.md.

Small and fast variant for tests (a few steps, a small evaluation):

  python -m gan.main --config experiments/stacked_mnist.py:smoke --workdir /tmp/stacked
"""

from __future__ import annotations

import ml_collections

from experiments import base, mnist
from gan.evaluation import evaluators

VARIANTS = ("smoke",)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Returns the experiment config; `variant` is "" or "smoke"."""
  parts = base.parse_variant(variant, VARIANTS)
  config = mnist.get_config(variant)
  config.dataset = "stacked_mnist"
  config.model.g.channels = 3
  config.num_steps = 12_500
  config.evals = ml_collections.ConfigDict()
  config.evals.stacked_mnist = evaluators.settings("stacked_mnist", every=2500)
  config.best_checkpoint = ml_collections.ConfigDict(
      {"metric": "stacked_mnist/kl", "mode": "min", "keep": 1}
  )
  if "smoke" in parts:
    config.num_steps = 20
    config.evals.stacked_mnist.every = 10
    config.evals.stacked_mnist.num_samples = 1000
  return config
