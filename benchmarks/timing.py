"""Interleaved timing rounds shared by the benchmarks (pure Python: no JAX or torch import)."""

from __future__ import annotations

from typing import Protocol


class Setting(Protocol):
  """Something that runs `steps` training steps and returns the mean ms per step."""

  round_ms: list[float]

  def run(self, steps: int) -> float:
    ...


def interleaved_rounds(settings: list[Setting], rounds: int, seconds: float) -> None:
  """Warms each setting up, then times `rounds` rounds of about `seconds` each, in turn.

  Interleaving the settings, rather than timing one after the other, exposes
  them all to the same slow drifts of a shared machine. Each round's mean ms
  per step is appended to the setting's `round_ms`.
  """
  steps = []
  for s in settings:
    s.run(3)  # warm-up
    steps.append(max(3, int(seconds * 1e3 / s.run(3))))
  for _ in range(rounds):
    for s, n in zip(settings, steps, strict=True):
      s.round_ms.append(s.run(n))
