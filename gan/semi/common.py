"""What the semi-supervised methods share: their data streams and their initial state pieces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gan import data as data_lib
from gan import state as state_lib
from gan import step as step_lib
from gan import streams


def draw_batches(
    state: state_lib.GANState, data: dict[str, jax.Array], global_batch: int
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, dict[str, jax.Array]]:
  """Inside a step: this device's unlabelled and labelled batches, and both new data orders.

  The unlabelled batch walks the whole training split (its labels are for
  monitoring only), the labelled one the tiled labelled subset, each in its
  own permutation, one batch of each per step.
  """
  perm, unlabelled = data_lib.next_batch(
      {"image": data["image"], "label": data["label"]},
      state.data_perm,
      streams.key(state.rng, "data"),
      state.step,
      global_batch,
      step_lib.AXIS,
  )
  labelled_perm, labelled = data_lib.next_batch(
      {"image": data["labelled_image"], "label": data["labelled_label"]},
      state.labelled_perm,
      streams.key(state.rng, "labelled"),
      state.step,
      global_batch,
      step_lib.AXIS,
  )
  return perm, unlabelled, labelled_perm, labelled


def first_orders(rng: jax.Array, num_images: int, num_labelled: int) -> dict[str, jax.Array]:
  """The first epoch's orders of the training split and of the (tiled) labelled subset."""
  return {
      "data_perm": data_lib.epoch_permutation(streams.key(rng, "data"), jnp.int32(0), num_images),
      "labelled_perm": data_lib.epoch_permutation(
          streams.key(rng, "labelled"), jnp.int32(0), num_labelled
      ),
  }


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
