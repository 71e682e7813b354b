"""Every random stream of a run, by name: keys derived with `fold_in` from the constants here.

A stream's key is `fold_in(parent, STREAMS[name])`, never a position in a
`split`, so adding a draw anywhere changes no other stream. The parents:

  the run's key (`GANState.rng`, from `config.seed`):
    init         the players' initial parameters (and data-dependent init batches)
    data         the training split's epoch orders (`gan.data.next_batch`)
    labelled     the labelled subset's epoch orders (semi-supervised methods)
    d_data, d_labelled   the orders of D's own batches of both (Triple-GAN's `d_batches`)
    step         the step's key, `fold_in(key("step"), state.step)` (`step_key`)
    pretrain     Triple-GAN's classifier pre-training
    grid         the latents of the fixed-noise sample grid
    probe        the health monitor's fixed real batch and latents (its "real" and "z")
  a step's key (and, below it, an update's or a pass's key):
    critic       D's updates; update i uses `fold_in(key("critic"), i)`
    generator    G's update
    classifier   C's update (Triple-GAN)
    z, labels    latents and the labels of generated examples
    real, fake, labelled, unlabelled   D's (or C's) passes on those batches
    sample       labels drawn from C (Triple-GAN)
    classify     C's passes that label unlabelled images by its argmax for D (Triple-GAN)
    judge        D's pass that scores pairs for C's adversarial term (Triple-GAN)
    mix          WGAN-GP's interpolation weights
    consistency  the second pass of the Pi-model consistency term
    augment      a pass's DiffAugment transformations
    interpolate  WGAN-GP's interpolates and their pass
    dropout, noise   a pass's dropout masks and Gaussian noise layers
  (a 2-D mixture's points: "labels" picks each point's component, "noise" its offset)
    g_init, d_init, c_init   a player's parameters (below "init")

Per-example randomness then folds in the example's index in the global batch
(`gan.step.example_keys`), so results do not depend on the device count.
"""

from __future__ import annotations

import jax

STREAMS = {
    "init": 0x1417,
    "data": 0x0DA7A,
    "labelled": 0x1ABE1,
    "d_data": 0xDDA7A,
    "d_labelled": 0xD1ABE1,
    "step": 0x57E9,
    "pretrain": 0x9E7A,
    "critic": 0xD,
    "generator": 0x6,
    "classifier": 0xC,
    "z": 0x2,
    "labels": 0x1AB,
    "real": 0x4EA1,
    "fake": 0xFA4E,
    "unlabelled": 0x0AB,
    "features": 0xFEA7,
    "sample": 0x5A3,
    "consistency": 0xC0475,
    "augment": 0xA06,
    "interpolate": 0x6A9,
    "dropout": 0xD40,
    "noise": 0x401,
    "g_init": 0x610,
    "d_init": 0xD10,
    "c_init": 0xC10,
    "judge": 0x1D6E,
    "classify": 0xC1A55,
    "mix": 0x313,
    "grid": 0x6419,
    "probe": 0x940BE,
}
assert len(set(STREAMS.values())) == len(STREAMS), "two streams share a constant"


def key(parent: jax.Array, name: str) -> jax.Array:
  """The key of stream `name` below `parent`."""
  return jax.random.fold_in(parent, STREAMS[name])


def keys(parent: jax.Array, *names: str) -> tuple[jax.Array, ...]:
  """The keys of several streams below `parent`, in the order named."""
  return tuple(key(parent, name) for name in names)


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The key of training step `step` of the run whose key is `rng`."""
  return jax.random.fold_in(key(rng, "step"), step)
