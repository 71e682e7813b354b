"""Training methods, chosen by `config.method`, behind one interface.

  gan            (default) an unconditional or class-conditional GAN (`gan.step`)
  improved_gan   Salimans et al. 2016: D is a K+1-class classifier (`gan.semi.improved_gan`)
  triple_gan     Li et al. 2017: classifier C, conditional G and pair discriminator D
                 (`gan.semi.triple_gan`; C is `config.model.classifier`)

Every method has the same parts, and the training loop, sweeps, evaluation
and tests go through them alone:

  step_config(config)        the step's static settings, read once from the config
  extra_data(...)            arrays that ride along with the training split on the
                             devices (the semi-supervised labelled subset)
  init(config, nets, ...)    the initial GANState (one copy, on the host)
  make_step(cfg, nets)       the pure per-device step `(state, data) -> (state, metrics)`
  pretrain(...)              work on a new run's state before the first step (or none)
  classifier(nets, state, average)  the network and variables whose test error is
                             reported: the average of the classifier's parameters, or
                             (average=False) the raw classifier (None: no classifier)
  eval_extra(workdir, ...)   top-level entries of eval.json beside the evaluators'

The methods' maths lives in `gan.step` and `gan.semi`; this module only
wires it to the interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import ml_collections
import numpy as np

from gan import data as data_lib
from gan import models, semi
from gan import state as state_lib
from gan import step as step_lib
from gan.semi import improved_gan, triple_gan
from gan.utils import ConfigError


class Networks(NamedTuple):
  """A run's modules: generator, discriminator and, for Triple-GAN, the classifier."""

  G: nn.Module
  D: nn.Module
  C: nn.Module | None = None


def build_networks(config: ml_collections.ConfigDict, axis_name: str | None) -> Networks:
  """The modules of `config.model`, for use under the named device axis `axis_name`."""
  G, D = models.build(config.model, axis_name=axis_name)
  return Networks(G, D, models.build_classifier(config.model, axis_name=axis_name))


class GAN:
  """A plain GAN: n_critic D updates, then one G update (`gan.step`)."""

  name = "gan"
  semi_supervised = False

  def step_config(self, config: ml_collections.ConfigDict) -> step_lib.GANStepConfig:
    return step_lib.GANStepConfig.from_config(config, data_lib.batch_fn(config.dataset))

  def check(self, nets: Networks) -> None:
    """Raises ConfigError if `nets` cannot play this method."""

  def extra_data(
      self, config: ml_collections.ConfigDict, split: data_lib.Split, workdir: str, write: bool
  ) -> dict[str, np.ndarray]:
    del config, split, workdir, write
    return {}

  def init(
      self,
      config: ml_collections.ConfigDict,
      nets: Networks,
      split: data_lib.Split,
      extra: dict[str, np.ndarray],
  ) -> state_lib.GANState:
    del extra
    example_shape = data_lib.example_shape(config.dataset, split)
    return state_lib.create(config, nets.G, nets.D, example_shape, split.num_examples)

  def make_step(self, cfg: Any, nets: Networks) -> step_lib.StepFn:
    return step_lib.make_train_step(cfg, nets.G, nets.D)

  def pretrain(
      self,
      config: ml_collections.ConfigDict,
      nets: Networks,
      state: state_lib.GANState,
      arrays: dict[str, np.ndarray],
      log: Callable[[str], None],
  ) -> tuple[state_lib.GANState, dict[str, Any]]:
    """(state, summary); an empty summary: nothing was done."""
    del config, nets, arrays, log
    return state, {}

  def classifier(
      self, nets: Networks, state: Any, average: bool = True
  ) -> tuple[nn.Module, dict[str, Any]] | None:
    del nets, state, average
    return None

  def eval_extra(self, workdir: str, results: dict[str, Any]) -> dict[str, Any] | None:
    del workdir, results
    return None


class SemiSupervised(GAN):
  """What the semi-supervised methods share: a labelled subset, a classifier, its test error."""

  semi_supervised = True

  def extra_data(self, config, split, workdir, write):
    """The labelled subset, tiled to whole batches (`gan.semi.labelled_data`)."""
    return semi.labelled_data(config, split, workdir, write)

  def eval_extra(self, workdir, results):
    """The test error and the labelled subset (`gan.semi.eval_extra`)."""
    return semi.eval_extra(workdir, results)


class ImprovedGAN(SemiSupervised):
  """Improved-GAN: D is the classifier (`gan.semi.improved_gan`)."""

  name = "improved_gan"

  def step_config(self, config: ml_collections.ConfigDict) -> improved_gan.ImprovedGANStepConfig:
    return improved_gan.ImprovedGANStepConfig.from_config(config)

  def init(self, config, nets, split, extra):
    return improved_gan.create_state(
        config, nets.G, nets.D, split.image, len(extra["labelled_label"])
    )

  def make_step(self, cfg, nets):
    return improved_gan.make_train_step(cfg, nets.G, nets.D)

  def classifier(self, nets, state, average=True):
    return improved_gan.classifier(nets.D, state, average)


class TripleGAN(SemiSupervised):
  """Triple-GAN: classifier, conditional G and pair discriminator (`gan.semi.triple_gan`)."""

  name = "triple_gan"

  def step_config(self, config: ml_collections.ConfigDict) -> triple_gan.TripleGANStepConfig:
    return triple_gan.TripleGANStepConfig.from_config(config)

  def check(self, nets: Networks) -> None:
    if nets.C is None:
      raise ConfigError("method 'triple_gan' needs config.model.classifier")

  def init(self, config, nets, split, extra):
    return triple_gan.create_state(
        config, nets.G, nets.D, nets.C, split.image, len(extra["labelled_label"])
    )

  def make_step(self, cfg, nets):
    return triple_gan.make_train_step(cfg, nets.G, nets.D, nets.C)

  def pretrain(self, config, nets, state, arrays, log):
    return triple_gan.pretrain(config, nets.C, state, arrays, log)

  def classifier(self, nets, state, average=True):
    return triple_gan.classifier(nets.C, state, average)


METHODS: dict[str, GAN] = {m.name: m for m in (GAN(), ImprovedGAN(), TripleGAN())}


def get(config: ml_collections.ConfigDict) -> GAN:
  """The method of `config.method` (default: "gan")."""
  name = config.get("method", "gan")
  if name not in METHODS:
    raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
  return METHODS[name]
