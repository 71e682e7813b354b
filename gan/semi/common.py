"""What the semi-supervised methods share: their data streams and their initial state pieces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gan import data as data_lib
from gan import state as state_lib
from gan import step as step_lib
from gan import streams

# A step's walks through the data, each in its own epoch orders: the arrays it draws from
# (the training split, or the tiled labelled subset: `labelled_` arrays), the state's field
# that holds its current order, and that order's stream. The "d_" walks are D's own
# batches, of other sizes than C's (Triple-GAN's `semi.d_batches`); they live in `d_perms`.
WALKS = {
    "unlabelled": ("", "data_perm", "data"),
    "labelled": ("labelled_", "labelled_perm", "labelled"),
    "d_unlabelled": ("", "d_perms", "d_data"),
    "d_labelled": ("labelled_", "d_perms", "d_labelled"),
}


def draw_batches(
    state: state_lib.GANState, data: dict[str, jax.Array], sizes: Mapping[str, int]
) -> tuple[dict[str, Any], dict[str, dict[str, jax.Array]]]:
  """Inside a step: this device's batch of each walk of `sizes` (its global batch size).

  Each walk goes through its arrays in its own permutation, one batch per step
  (the training split's labels are for monitoring only). Returns the state
  fields that hold the new orders (for `state.replace`) and the batches by walk.
  """
  orders: dict[str, Any] = {}
  if state.d_perms is not None:
    orders["d_perms"] = dict(state.d_perms)
  batches = {}
  for walk, size in sizes.items():
    prefix, name, stream = WALKS[walk]
    perm = getattr(state, name)
    if name == "d_perms":
      perm = perm[walk]
    perm, batches[walk] = data_lib.next_batch(
        {"image": data[f"{prefix}image"], "label": data[f"{prefix}label"]},
        perm,
        streams.key(state.rng, stream),
        state.step,
        size,
        step_lib.AXIS,
    )
    _set_order(orders, walk, perm)
  return orders, batches


def first_orders(
    rng: jax.Array,
    num_images: int,
    num_labelled: int,
    walks: Sequence[str] = ("unlabelled", "labelled"),
) -> dict[str, Any]:
  """The state fields that hold the first orders of `walks` (see WALKS)."""
  sizes = {"": num_images, "labelled_": num_labelled}
  orders: dict[str, Any] = {}
  for walk in walks:
    prefix, _, stream = WALKS[walk]
    perm = data_lib.epoch_permutation(streams.key(rng, stream), jnp.int32(0), sizes[prefix])
    _set_order(orders, walk, perm)
  return orders


def _set_order(orders: dict[str, Any], walk: str, perm: jax.Array) -> None:
  """Puts `walk`'s order where the state keeps it (D's walks in the `d_perms` dict)."""
  name = WALKS[walk][1]
  if name == "d_perms":
    orders.setdefault(name, {})[walk] = perm
  else:
    orders[name] = perm


def init_images(config: ml_collections.ConfigDict, images: np.ndarray) -> jax.Array:
  """`config.semi.init_batch` training images in [-1, 1], for data-dependent initialisation."""
  index = np.random.default_rng([config.seed, streams.STREAMS["init"]]).choice(
      len(images), config.semi.init_batch, replace=False
  )
  return data_lib.to_float(jnp.asarray(images[np.sort(index)]))


def new_player(
    module, variables: dict, optim: ml_collections.ConfigDict, num_steps: int
) -> state_lib.TrainState:
  """A player's TrainState from its initial variables and optimizer settings."""
  return state_lib.TrainState.create(
      apply_fn=module.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=state_lib.make_optimizer(optim, num_steps),
  )
