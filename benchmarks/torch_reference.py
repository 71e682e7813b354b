"""The PyTorch bar: the same MNIST DCGAN step in PyTorch on the CPU, for side-by-side timing.

  pip install torch==2.13.0          # not a jaxgan dependency; CPU build
  python benchmarks/torch_reference.py [--batch N] [--threads 2]

Same model (TensorFlow DCGAN tutorial architecture), same loss (non-saturating
BCE on logits), same optimizers (Adam 2e-4, betas 0.5/0.999) and the same work
per step as `benchmarks/train_step.py`: one D update on a real batch and
G(z1) (G in train mode, no gradient), then one G update with fresh z2 through
the updated D, dropout on. Prints one JSON line per batch size with the same
fields as the JAX benchmark. Run both in alternation
(`benchmarks/compare_torch.py`) so that they see the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import timing  # benchmarks/timing.py, beside this file
import torch
from torch import nn


def generator() -> nn.Module:
  return nn.Sequential(
      nn.Linear(100, 7 * 7 * 256, bias=False),
      nn.BatchNorm1d(7 * 7 * 256),
      nn.LeakyReLU(0.2),
      nn.Unflatten(1, (256, 7, 7)),
      nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False),
      nn.BatchNorm2d(128),
      nn.LeakyReLU(0.2),
      nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1, bias=False),
      nn.BatchNorm2d(64),
      nn.LeakyReLU(0.2),
      nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1, bias=False),
      nn.Tanh(),
  )


def discriminator() -> nn.Module:
  return nn.Sequential(
      nn.Conv2d(1, 64, 5, stride=2, padding=2),
      nn.LeakyReLU(0.2),
      nn.Dropout(0.3),
      nn.Conv2d(64, 128, 5, stride=2, padding=2),
      nn.LeakyReLU(0.2),
      nn.Dropout(0.3),
      nn.Flatten(),
      nn.Linear(7 * 7 * 128, 1),
  )


class Setting:
  """Models, optimizers and a device-resident dataset at one batch size."""

  def __init__(self, batch: int):
    torch.manual_seed(0)
    self.batch = batch
    self.G, self.D = generator(), discriminator()
    self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    self.data = torch.rand(60_000, 1, 28, 28) * 2 - 1
    self.bce = nn.BCEWithLogitsLoss()
    self.ones, self.zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    self.round_ms: list[float] = []

  def step(self) -> None:
    real = self.data[torch.randint(0, 60_000, (self.batch,))]
    with torch.no_grad():
      fake = self.G(torch.randn(self.batch, 100))
    self.opt_d.zero_grad(set_to_none=True)
    d_loss = self.bce(self.D(real), self.ones) + self.bce(self.D(fake), self.zeros)
    d_loss.backward()
    self.opt_d.step()
    self.opt_g.zero_grad(set_to_none=True)
    g_loss = self.bce(self.D(self.G(torch.randn(self.batch, 100))), self.ones)
    g_loss.backward()
    self.opt_g.step()

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--seconds", type=float, default=3.0)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  settings = [Setting(b) for b in args.batch or [64, 256]]
  timing.interleaved_rounds(settings, args.rounds, args.seconds)
  for s in settings:
    ms = statistics.median(s.round_ms)
    print(
        json.dumps(
            {
                "framework": f"torch {torch.__version__}",
                "batch": s.batch,
                "images_per_s": round(s.batch / ms * 1e3, 1),
                "ms_per_step": round(ms, 2),
                "threads": args.threads,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "round_ms": [round(x, 1) for x in s.round_ms],
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
  main()
