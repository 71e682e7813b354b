"""Model registry: experiment configs choose generator and discriminator by name."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from gan.models import dcgan, improved_gan, mlp
from gan.utils import ConfigError

GENERATORS: dict[str, type[nn.Module]] = {
    "dcgan28": dcgan.Generator28,
    "mlp": mlp.MLPGenerator,
    "improved_gan": improved_gan.ImprovedGANGenerator,
}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "dcgan28": dcgan.Discriminator28,
    "mlp": mlp.MLPDiscriminator,
    "improved_gan": improved_gan.ImprovedGANDiscriminator,
}


def _lookup(registry: dict[str, type[nn.Module]], name: str, kind: str) -> type[nn.Module]:
  if name not in registry:
    raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
  return registry[name]


def build(model: ml_collections.ConfigDict, axis_name: str | None) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) modules for `config.model`."""
  G = _lookup(GENERATORS, model.generator, "generator")
  D = _lookup(DISCRIMINATORS, model.discriminator, "discriminator")
  return G(axis_name=axis_name, **model.g), D(axis_name=axis_name, **model.d)
