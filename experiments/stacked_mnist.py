"""Stacked MNIST: 1,000 modes from three stacked digits (Metz et al. 2017; PacGAN protocol).

  python -m gan.main --config experiments/stacked_mnist.py --workdir runs/stacked_mnist

The MNIST DCGAN of `experiments/mnist.py` with a 3-channel generator; each
training image stacks three random MNIST training digits as its R, G and B
channels (`gan.data`, "stacked_mnist"). The evaluator classifies each channel
of 26,000 EMA samples with the project's MNIST classifier (trained and cached
on first use) and reports `modes` (distinct digit triples, of 1,000) and `kl`
(KL of the generated triple histogram to the uniform one). PacGAN reports
1,000 modes and KL 0.06-0.07 for PacGAN2-4, and 99 modes / KL 3.4 for its
DCGAN baseline.

Measured (2-core CPU VM shared with other jobs, jax 0.10.2): 12,500 steps in
2 h 15 min of training (10,000 steps in 1 h 47 min, then resumed to 12,500 on
one core in 28 min); 1,000/1,000 modes and KL 0.092 at step 12,500 (target
KL <= 0.1). Along the way: 957 modes / KL 0.74 at 2,500, 996 / 0.29 at 5,000,
1,000 / 0.17 at 7,500, 1,000 / 0.123 at 10,000. A perfect sampler scores
KL ~0.02 with 26,000 samples.
"""

from __future__ import annotations

import ml_collections

from experiments import mnist
from gan.evaluation import evaluators


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant="smoke"`: a few steps with a tiny model and a small evaluation, for tests."""
  config = mnist.get_config("smoke" if variant == "smoke" else "")
  config.dataset = "stacked_mnist"
  config.model.g.channels = 3
  config.num_steps = 12_500
  config.evals = ml_collections.ConfigDict()
  config.evals.stacked_mnist = evaluators.settings("stacked_mnist", every=2500)
  config.best_checkpoint = ml_collections.ConfigDict(
      {"metric": "stacked_mnist/kl", "mode": "min", "keep": 1}
  )
  if variant == "smoke":
    config.num_steps = 20
    config.evals.stacked_mnist.every = 10
    config.evals.stacked_mnist.num_samples = 1000
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'smoke'")
  return config
