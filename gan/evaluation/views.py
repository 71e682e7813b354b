"""What evaluators look at: a run's generator or its classifier, in inference mode.

`Result` is what every evaluator returns: flat scalar metrics, the
protocol stamp that says how they were measured and, optionally, details
(non-scalar findings such as a classifier's confusions) that go to
evals.jsonl and eval.json beside the metrics but not to the scalar logs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from gan import data as data_lib
from gan import models
from gan.state import field
from gan.utils import ConfigError


@functools.partial(jax.jit, static_argnums=0)
def _infer(module: nn.Module, variables: Any, x: jax.Array, y: jax.Array | None = None):
  """`module` in inference mode, with class labels `y` if given.

  Compiled once per network definition, not once per view: the loop builds
  new views at every evaluation, and Linen modules hash and compare by their
  fields, so equal networks share one compilation.
  """
  if y is None:
    return module.apply(variables, x, train=False)
  return module.apply(variables, x, train=False, y=y)


@dataclasses.dataclass(frozen=True)
class Result:
  metrics: dict[str, float]
  protocol: dict[str, Any]
  details: dict[str, Any] = dataclasses.field(default_factory=dict)


class Generator:
  """A generator ready to sample: EMA (default) or raw parameters, inference mode.

  A class-conditional generator (`num_classes` K > 0) is given its labels
  explicitly: sample i of a call is of class i mod K, or all of one `label`.
  """

  def __init__(self, module: nn.Module, state: Any, z_dim: int, use_ema: bool = True):
    """`state` is a GANState or the raw dict a checkpoint restores to without a target."""
    g = field(state, "g")
    params = field(state, "g_ema") if use_ema else field(g, "params")
    batch_stats = field(g, "batch_stats")
    self.variables = {"params": params} | ({"batch_stats": batch_stats} if batch_stats else {})
    self.step = int(np.asarray(field(state, "step")))
    self.z_dim = z_dim
    self.kind = "ema" if use_ema else "raw"
    if use_ema and batch_stats:
      # The EMA weights run with the raw generator's running batch-norm statistics.
      self.kind = "ema (batch-norm statistics of the raw generator)"
    self.module = module
    self.num_classes = models.generator_classes(module)

  def labels(self, num: int, label: int | None = None) -> np.ndarray | None:
    """The classes of `num` samples (i mod K, or all `label`); None for an unconditional G."""
    if not self.num_classes:
      if label is not None:
        raise ConfigError(f"label {label} given, but the generator is unconditional")
      return None
    if label is None:
      return np.arange(num, dtype=np.int32) % self.num_classes
    if not 0 <= label < self.num_classes:
      raise ConfigError(
          f"label {label} is not a class of this generator (0..{self.num_classes - 1})"
      )
    return np.full(num, label, np.int32)

  def outputs(
      self, num: int, seed: int, batch_size: int = 500, label: int | None = None
  ) -> np.ndarray:
    """`num` outputs (float32) for latents from PRNGKey(seed) and classes `labels(num, label)`."""
    key = jax.random.PRNGKey(seed)
    padded = -(-num // batch_size) * batch_size
    labels = self.labels(padded, label)
    out = []
    for start in range(0, num, batch_size):
      z = jax.random.normal(jax.random.fold_in(key, start), (batch_size, self.z_dim))
      y = None if labels is None else labels[start : start + batch_size]
      out.append(np.asarray(_infer(self.module, self.variables, z, y)))
    return np.concatenate(out)[:num]


class Classifier:
  """A semi-supervised run's classifier (`gan.semi`), EMA parameters, inference mode.

  `module` maps images in [-1, 1] to class logits (Improved-GAN's D, Triple-GAN's C).
  """

  def __init__(self, module: nn.Module, variables: Any, step: int, kind: str):
    self.module, self.variables, self.step, self.kind = module, variables, step, kind

  def logits(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class logits of uint8 images, scaled to [-1, 1] as in training."""
    out = []
    for start in range(0, len(images), batch_size):
      x = data_lib.to_float(np.asarray(images[start : start + batch_size]))
      out.append(np.asarray(_infer(self.module, self.variables, x)))
    return np.concatenate(out)
