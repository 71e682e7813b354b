"""Model registry: experiment configs choose generator, discriminator (and classifier) by name.

`config.model.dtype` is the players' computation dtype: "float32" (the default)
or "bfloat16" for mixed precision (bfloat16 compute, float32 parameters and
optimizer state; see `gan.models.conditioning`). Only networks with a `dtype`
attribute (the 32x32 ones) accept "bfloat16".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gan.models import (
    cifar_semi,
    dcgan,
    dcgan32,
    improved_gan,
    mlp,
    shared_trunk,
    sngan,
    triple_gan,
)
from gan.utils import ConfigError

GENERATORS: dict[str, type[nn.Module]] = {
    "dcgan28": dcgan.Generator28,
    "dcgan32": dcgan32.Generator32,
    "sngan_cnn32": sngan.CNNGenerator32,
    "sngan_resnet32": sngan.ResNetGenerator32,
    "mlp": mlp.MLPGenerator,
    "improved_gan": improved_gan.ImprovedGANGenerator,
    "triple_gan32": cifar_semi.ConditionalGenerator32,
}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "dcgan28": dcgan.Discriminator28,
    "dcgan32": dcgan32.Discriminator32,
    "sngan_cnn32": sngan.CNNDiscriminator32,
    "sngan_resnet32": sngan.ResNetDiscriminator32,
    "mlp": mlp.MLPDiscriminator,
    "improved_gan": improved_gan.ImprovedGANDiscriminator,
    "triple_gan32": cifar_semi.PairDiscriminator32,
    "shared_trunk": shared_trunk.SharedTrunkDiscriminator,
}
# The third player of semi-supervised methods that have one (Triple-GAN).
CLASSIFIERS: dict[str, type[nn.Module]] = {
    "cnn28": triple_gan.CNNClassifier,
    "conv_large": cifar_semi.ConvLargeClassifier,
    "shared_trunk": shared_trunk.SharedTrunkClassifier,
}


def _lookup(registry: dict[str, type[nn.Module]], name: str, kind: str) -> type[nn.Module]:
  if name not in registry:
    raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
  return registry[name]


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype_kwargs(model: ml_collections.ConfigDict, G: type[nn.Module], D: type[nn.Module]):
  """{"dtype": ...} for a mixed-precision config, {} for float32 (every network's default)."""
  name = model.get("dtype", "float32")
  if name not in DTYPES:
    raise ConfigError(f"unknown model.dtype {name!r}; choose one of {sorted(DTYPES)}")
  if name == "float32":
    return {}
  for module, registered in ((G, model.generator), (D, model.discriminator)):
    if "dtype" not in {field.name for field in dataclasses.fields(module)}:
      raise ConfigError(
          f"model.dtype={name!r}: {registered!r} computes in float32 only; mixed precision is "
          "implemented in the 32x32 networks (dcgan32, sngan_cnn32, sngan_resnet32)"
      )
  return {"dtype": DTYPES[name]}


def _fields(settings: Any) -> dict[str, Any]:
  """Module fields from config settings, sequences as tuples.

  A config read back from a run's config.json has lists where the experiment
  file had tuples; Linen modules with list fields cannot be hashed, and jit
  keys compilations by the module (`gan.evaluation.views`).
  """

  def hashable(value):
    return tuple(hashable(v) for v in value) if isinstance(value, list | tuple) else value

  return {key: hashable(value) for key, value in dict(settings).items()}


def _checked(module: nn.Module, where: str) -> nn.Module:
  """`module`, if it hashes; a config error now rather than at the first evaluation."""
  try:
    hash(module)
  except TypeError as e:
    raise ConfigError(
        f"{where}: {type(module).__name__}'s settings must be numbers, strings or sequences "
        f"of them (a network is compiled per distinct module): {e}"
    ) from None
  return module


def build(model: ml_collections.ConfigDict, axis_name: str | None) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) modules for `config.model`."""
  G = _lookup(GENERATORS, model.generator, "generator")
  D = _lookup(DISCRIMINATORS, model.discriminator, "discriminator")
  dtype = _dtype_kwargs(model, G, D)
  return (
      _checked(G(axis_name=axis_name, **dtype, **_fields(model.g)), "config.model.g"),
      _checked(D(axis_name=axis_name, **dtype, **_fields(model.d)), "config.model.d"),
  )


def generator_classes(G: nn.Module) -> int:
  """K of a class-conditional generator (it takes labels y in 0..K-1), 0 for an unconditional one.

  Conditional generators draw class i mod K for example i when called without
  y. Triple-GAN's MNIST generator names K `label_classes`, the others `num_classes`.
  """
  return int(getattr(G, "num_classes", 0) or getattr(G, "label_classes", 0) or 0)


def build_classifier(model: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module | None:
  """The classifier module of `config.model.classifier`, or None if the config names none."""
  if not model.get("classifier"):
    return None
  C = _lookup(CLASSIFIERS, model.classifier, "classifier")
  return _checked(C(axis_name=axis_name, **_fields(model.get("c", {}))), "config.model.c")
