"""Orbax checkpoints of the whole GANState plus the config, resume, and the best checkpoints.

Orbax writes each checkpoint into a temporary directory and renames it only
when complete, so a run killed mid-save leaves at most a `*.orbax-checkpoint-tmp*`
directory that restore ignores (and cleans up); the run resumes from the last
complete step.

Each checkpoint also holds the config and, for runs with a health monitor,
the monitor's state at that step (`health`), so a resume restores the state
and what describes it together: they are committed in the same rename. A
checkpoint that cannot be restored (a truncated file, an empty step
directory) is set aside as `<step>.corrupt` and the run resumes from the
newest intact one (`restore_latest`).

Which checkpoints stay on disk is a preservation policy: the latest `keep`
always, plus, when a metric is chosen, the best `keep_best` by that metric
among checkpoints saved with evaluation results. (Orbax's `max_to_keep`
combined with `best_fn` ranks every checkpoint by the metric and can delete
the latest one, which would lose the run's progress; the policy cannot.)
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from gan import faults
from gan.state import GANState


class Checkpointer:
  """Saves and restores unreplicated GANStates under `workdir/checkpoints`.

  Args:
    workdir: the run's directory.
    keep: number of latest checkpoints to keep.
    best_metric: metric name (as in metrics.jsonl, e.g. "mnist_cnn/fcd") to
      rank checkpoints by; None keeps only the latest ones.
    best_mode: "min" or "max": which end of `best_metric` is best.
    keep_best: number of best checkpoints to keep besides the latest.
    read_only: only restore (gan.evaluate, gan.sample): create no directory and leave the
      partial saves alone, which may be a running training's.
  """

  def __init__(
      self,
      workdir: str,
      keep: int,
      best_metric: str | None = None,
      best_mode: str = "min",
      keep_best: int = 1,
      read_only: bool = False,
  ):
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1 (the latest is always kept), not {keep}")
    self.best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep)]
    best_fn = None
    if best_metric:
      if best_mode not in ("min", "max"):
        raise ValueError(f"best_mode must be 'min' or 'max', not {best_mode!r}")
      worst = float("inf") if best_mode == "min" else float("-inf")

      # Checkpoints saved between evaluations carry empty metrics and rank last.
      # A NaN score ranks last too (it would break the sort).
      def best_fn(metrics):
        value = metrics.get(best_metric, worst)
        return worst if value != value else value

      policies.append(
          checkpoint_managers.BestN(
              get_metric_fn=best_fn,
              reverse=best_mode == "min",  # BestN keeps the top of an ascending sort
              n=keep_best,
          )
      )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=best_fn,  # so that metrics are stored with checkpoints and best_step works
        best_mode=best_mode,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    self.directory = os.path.join(workdir, "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "config", "health")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The best checkpoint by the metric (None without a metric or evaluated checkpoint)."""
    if not self.best_metric:
      return None
    evaluated = [
        s for s in self._manager.all_steps() if self.best_metric in (self._manager.metrics(s) or {})
    ]
    return self._manager.best_step() if evaluated else None

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(
      self,
      state: GANState,
      config: ml_collections.ConfigDict,
      metrics: dict[str, float] | None = None,
      health: dict[str, Any] | None = None,
  ) -> None:
    """Saves `state`; `metrics` (evaluation results at this step) rank it for best-N;
    `health` (the health monitor's state at this step) is committed with it."""
    step = int(jax.device_get(state.step))
    # With a tracked metric, always a dict: Orbax warns on every save without one.
    metrics = dict(metrics or {}) if self.best_metric else None
    items = {
        "state": ocp.args.StandardSave(_fields(state)),
        "config": ocp.args.JsonSave(config.to_dict()),
    }
    if health is not None:
      items["health"] = ocp.args.JsonSave(health)
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    faults.point("checkpoint:saved")

  def replace(
      self,
      state: GANState,
      config: ml_collections.ConfigDict,
      health: dict[str, Any] | None = None,
  ) -> None:
    """Saves `state` in place of the checkpoint of its step (a rollback's restored state with
    its new learning rates), keeping that checkpoint's evaluation metrics for best-N.

    Between the deletion and the new save a kill leaves the older checkpoints, from which
    the run repeats the same steps: nothing is lost but time.
    """
    step = int(jax.device_get(state.step))
    self._manager.wait_until_finished()
    metrics = None
    if step in self.all_steps():
      metrics = self._manager.metrics(step)
      self._manager.delete(step)
      faults.point("checkpoint:replace_deleted")
    self.save(state, config, metrics, health)
    self._manager.wait_until_finished()

  def config(self, step: int) -> dict[str, Any] | None:
    """The config saved with checkpoint `step` (None if it has none)."""
    return self._read_json(step, "config")

  def health(self, step: int) -> dict[str, Any] | None:
    """The health monitor's state saved with checkpoint `step` (None if it has none)."""
    return self._read_json(step, "health")

  def _read_json(self, step: int, item: str) -> dict[str, Any] | None:
    if not os.path.isdir(os.path.join(self.directory, str(step), item)):
      return None
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    )
    return restored[item]

  def restore_latest(self, like: GANState) -> tuple[GANState | None, int | None]:
    """The newest checkpoint that restores into `like`'s structure, and its step.

    A checkpoint that cannot be read is set aside (renamed `<step>.corrupt`, which
    Orbax ignores) with a one-line warning naming it, and the next older one is tried.
    (None, None) if there is no checkpoint. A checkpoint of another structure (another
    experiment's run) is not corrupt: ValueError names the mismatch instead.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(like, step), step
      except Exception as e:  # noqa: BLE001  (any unreadable file: Orbax raises many kinds)
        if _structure_mismatch(e):
          raise ValueError(
              f"the checkpoint at step {step} in {self.directory} holds another model or "
              f"method than this config builds ({type(e).__name__})"
          ) from e
        aside = os.path.join(self.directory, f"{step}.corrupt")
        os.replace(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()
        print(
            f"warning: checkpoint {step} cannot be restored ({type(e).__name__}); "
            f"moved to {aside}, trying the one before",
            file=sys.stderr,
            flush=True,
        )
    return None, None

  def restore(self, like: GANState | None, step: int | None = None) -> GANState | dict[str, Any]:
    """Restores checkpoint `step` (default: latest) into the structure of `like`.

    With `like=None` the state comes back as nested dicts of arrays (enough to
    sample from a generator without rebuilding the training state).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = None if like is None else _fields(like)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    return restored["state"] if like is None else like.replace(**restored["state"])

  def mismatch(self, like: GANState, step: int) -> str | None:
    """Where checkpoint `step` does not fit the structure of `like` (an array's path and both
    shapes), or None if it fits. Read from the checkpoint's metadata: a restore that does not
    fit fails inside Orbax's threads, which then print tracebacks until the process ends."""
    path = epath.Path(self.directory) / str(step) / "state"
    handler = ocp.StandardCheckpointHandler()
    try:
      saved = _shapes(handler.metadata(path))
    except (OSError, ValueError):  # unreadable: damaged, which restoring will report
      return None
    finally:
      handler.close()
    wanted = _shapes(_fields(like))
    for key in sorted(saved.keys() ^ wanted.keys()):
      where = "only in the checkpoint" if key in saved else "not in the checkpoint"
      return f"{key} is {where}"
    for key in sorted(saved):
      if saved[key] != wanted[key]:
        return f"{key} has shape {saved[key]} in the checkpoint, {wanted[key]} in this config"
    return None

  def delete_after(self, step: int) -> None:
    """Deletes the checkpoints of steps after `step` (a rollback abandons them)."""
    self._manager.wait_until_finished()
    for s in self.all_steps():
      if s > step:
        self._manager.delete(s)

  def close(self) -> None:
    """Waits for pending (asynchronous) saves to finish, then releases the manager."""
    self._manager.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{"g.params.Dense_0.kernel": shape} of a state's arrays (or of their saved metadata)."""

  def name(entry: Any) -> str:
    for attribute in ("key", "name", "idx"):
      if hasattr(entry, attribute):
        return str(getattr(entry, attribute))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(map(name, path)): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}


def _fields(state: GANState) -> dict[str, Any]:
  """The state's fields that are set, by name: the tree a checkpoint holds.

  Fields a method does not use (None: a plain GAN has no classifier) are left
  out, so a checkpoint's layout depends only on what the run trains, and
  checkpoints written before those fields existed still restore.
  """
  return {
      f.name: getattr(state, f.name)
      for f in dataclasses.fields(state)
      if getattr(state, f.name) is not None
  }


def _structure_mismatch(error: Exception) -> bool:
  """Whether a restore failed because the saved tree has another structure than the target."""
  text = str(error)
  return isinstance(error, ValueError | KeyError | TypeError) and any(
      word in text for word in ("structure", "shape", "Missing", "Unexpected", "tree")
  )
