"""Orbax checkpoints of the whole GANState plus the config, and resume from a workdir.

Orbax writes each checkpoint into a temporary directory and renames it only
when complete, so a run killed mid-save leaves at most a `*.orbax-checkpoint-tmp*`
directory that restore ignores (and cleans up); the run resumes from the last
complete step.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from gan.state import GANState


class Checkpointer:
  """Saves and restores unreplicated GANStates under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
    self.directory = os.path.join(workdir, "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "config")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: GANState, config: ml_collections.ConfigDict) -> None:
    step = int(jax.device_get(state.step))
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())
        ),
    )

  def restore(self, like: GANState, step: int | None = None) -> GANState:
    """Restores checkpoint `step` (default: latest) into the structure of `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like))
    )
    return restored["state"]

  def close(self) -> None:
    """Waits for pending (asynchronous) saves to finish, then releases the manager."""
    self._manager.close()
