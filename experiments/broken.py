"""Runs broken on purpose, to show that the health monitor (`gan.health`) names each failure.

Variants of `experiments/mnist.py`, mixed with its others:

  python -m gan.main --config experiments/mnist.py:broken_collapse --workdir runs/collapse
  python -m gan.main --config experiments/mnist.py:smoke,broken_spike --workdir /tmp/spike

Each should end with the matching detector's event in `events.jsonl` (docs/health.md).
"""

from __future__ import annotations

from collections.abc import Set

import ml_collections

VARIANTS = ("broken_d_wins", "broken_collapse", "broken_diverge", "broken_spike")


def apply(config: ml_collections.ConfigDict, parts: Set[str]) -> None:
  """Breaks `config` in place as each of the `parts` that is one of VARIANTS asks."""
  # The first three failures show within 1,000 steps, so those runs stop there (the spike
  # one runs in full).
  if not parts.isdisjoint({"broken_d_wins", "broken_collapse", "broken_diverge"}):
    config.num_steps = min(config.num_steps, 1000)
  if "broken_d_wins" in parts:
    # D's learning rate 25x too high, and the minimax ("saturating") generator loss
    # log(1 - D(G(z))), whose gradient vanishes once D rejects every sample (Goodfellow
    # et al. 2014, Sec. 3): D wins and G stops learning.
    config.optim.d.lr = 5e-3
    config.loss = "minimax"
  if "broken_collapse" in parts:  # G ignores z: every sample is the same image
    config.model.g.z_scale = 0.0
  if "broken_diverge" in parts:  # learning rates that blow the run up
    config.optim.g.lr = config.optim.d.lr = 10.0
  if "broken_spike" in parts:
    # A healthy run hit by a transient fault: at step 3,300 (3/5 through; 33 with smoke)
    # both learning rates jump 1,000x. `divergence` should roll it back to the step-3,000
    # checkpoint with halved learning rates, after which it trains on to a healthy end.
    config.inject_fault = ml_collections.ConfigDict(
        {"step": config.num_steps * 33 // 50, "lr_factor": 1e3}
    )
