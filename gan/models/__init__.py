"""Model registry: experiment configs choose generator, discriminator (and classifier) by name."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from gan.models import dcgan, dcgan32, improved_gan, mlp, sngan, triple_gan
from gan.utils import ConfigError

GENERATORS: dict[str, type[nn.Module]] = {
    "dcgan28": dcgan.Generator28,
    "dcgan32": dcgan32.Generator32,
    "sngan_cnn32": sngan.CNNGenerator32,
    "sngan_resnet32": sngan.ResNetGenerator32,
    "mlp": mlp.MLPGenerator,
    "improved_gan": improved_gan.ImprovedGANGenerator,
}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "dcgan28": dcgan.Discriminator28,
    "dcgan32": dcgan32.Discriminator32,
    "sngan_cnn32": sngan.CNNDiscriminator32,
    "sngan_resnet32": sngan.ResNetDiscriminator32,
    "mlp": mlp.MLPDiscriminator,
    "improved_gan": improved_gan.ImprovedGANDiscriminator,
}
# The third player of semi-supervised methods that have one (Triple-GAN).
CLASSIFIERS: dict[str, type[nn.Module]] = {"cnn28": triple_gan.CNNClassifier}


def _lookup(registry: dict[str, type[nn.Module]], name: str, kind: str) -> type[nn.Module]:
  if name not in registry:
    raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
  return registry[name]


def build(model: ml_collections.ConfigDict, axis_name: str | None) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) modules for `config.model`."""
  G = _lookup(GENERATORS, model.generator, "generator")
  D = _lookup(DISCRIMINATORS, model.discriminator, "discriminator")
  return G(axis_name=axis_name, **model.g), D(axis_name=axis_name, **model.d)


def build_classifier(model: ml_collections.ConfigDict, axis_name: str | None) -> nn.Module | None:
  """The classifier module of `config.model.classifier`, or None if the config names none."""
  if not model.get("classifier"):
    return None
  C = _lookup(CLASSIFIERS, model.classifier, "classifier")
  return C(axis_name=axis_name, **model.get("c", {}))
