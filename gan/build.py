"""Build, then loop: a run's pieces, each made from the config by a small named builder.

A notebook can call the builders one by one:

  method = methods.get(config)
  nets = methods.build_networks(config, step_lib.AXIS)
  split, arrays = build.data(config, method, workdir)
  state = build.initial_state(config, method, nets, split, arrays)
  step = build.train_step(method, method.step_config(config), nets, layout)

or have `build.run(config, workdir)` make all of them into a `Run`, which the
training loop (`gan.loop`) only runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from gan import (
    checkpoint,
    distributed,
    health,
    methods,
    models,
    runs,
    streams,
    utils,
    validate,
    writers,
)
from gan import data as data_lib
from gan import state as state_lib
from gan import step as step_lib
from gan.evaluation import evaluators as evaluators_lib
from gan.parallel import Layout
from gan.utils import ConfigError, check_batch, check_workdir


def check_batch_config(config: ml_collections.ConfigDict) -> None:
  """The global batch splits over the devices, and each device's share over D's packing."""
  local_batch = check_batch(config.batch_size, jax.device_count())
  pack = config.model.d.get("pack", 1)
  if local_batch % pack:
    raise ConfigError(f"the per-device batch {local_batch} is not divisible by pack={pack}")


def data(
    config: ml_collections.ConfigDict,
    method: methods.GAN,
    workdir: str,
    write: bool = True,
    split: data_lib.Split | None = None,
) -> tuple[data_lib.Split, dict[str, np.ndarray]]:
  """The training split (loaded, unless given) and the host arrays the step reads.

  The arrays are the split's own plus the method's (`extra_data`: the labelled
  subset, which `write` lets it record in `workdir`).
  """
  if split is None:
    split = data_lib.load(config.dataset, config.train_split, config.data_dir)
  logging.info("Data: %d examples from %s", split.num_examples, split.source)
  data_lib.check_batch_fits(config.dataset, split, config.batch_size)
  return split, split.arrays() | method.extra_data(config, split, workdir, write)


def initial_state(
    config: ml_collections.ConfigDict,
    method: methods.GAN,
    nets: methods.Networks,
    split: data_lib.Split,
    arrays: dict[str, np.ndarray],
) -> state_lib.GANState:
  """A new run's state (one copy, on the host), from `config.seed`."""
  extra = {k: v for k, v in arrays.items() if k not in ("image", "label")}
  return method.init(config, nets, split, extra)


def health_probe(
    config: ml_collections.ConfigDict, split: data_lib.Split
) -> tuple[jax.Array, jax.Array]:
  """The health monitor's probe: a fixed real batch and fixed latents, scored at log steps."""
  probe = min(64, config.batch_size)
  real_key, z_key = streams.keys(streams.key(jax.random.PRNGKey(config.seed), "probe"), "real", "z")
  _, batch = data_lib.batch_fn(config.dataset)(
      jax.tree.map(jax.numpy.asarray, split.arrays()),
      jax.numpy.arange(split.num_examples),
      real_key,
      0,
      probe,
      None,
  )
  return batch["image"], jax.random.normal(z_key, (probe, config.model.z_dim))


def fixed_latents(config: ml_collections.ConfigDict) -> jax.Array:
  """The latents of the sample grid, the same at every snapshot."""
  key = streams.key(jax.random.PRNGKey(config.seed), "grid")
  return jax.random.normal(key, (config.num_samples, config.model.z_dim))


def train_step(
    method: methods.GAN, step_config: Any, nets: methods.Networks, layout: Layout
) -> step_lib.StepFn:
  """The method's per-device step, mapped over the devices once, in `layout`."""
  return layout.map_step(method.make_step(step_config, nets))


def resume(
    checkpointer: checkpoint.Checkpointer,
    state: state_lib.GANState,
    config: ml_collections.ConfigDict,
) -> tuple[state_lib.GANState, bool]:
  """The newest intact checkpoint restored into `state`'s structure (made from `config`).

  One process falls back past checkpoints that cannot be read
  (`Checkpointer.restore_latest`); several resume from the step process 0 sees,
  so they cannot drift apart. Raises ConfigError if the latest checkpoint does
  not fit `state` (the workdir of another experiment).
  """
  latest = checkpointer.latest_step()
  latest = distributed.broadcast_from_primary(-1 if latest is None else latest)
  if latest < 0:
    return state, False
  difference = checkpointer.mismatch(state, latest)
  if difference:
    workdir = os.path.dirname(checkpointer.directory)
    raise ConfigError(
        f"the checkpoint in {workdir} (step {latest}) does not match this config "
        f"({_config_diff(checkpointer, latest, config) or difference}); use another --workdir, "
        "or the config "
        "the run was trained with"
    )
  try:
    if jax.process_count() == 1:
      restored, _ = checkpointer.restore_latest(state)
      return (state, False) if restored is None else (restored, True)
    return checkpointer.restore(state, step=latest), True
  except ValueError as e:  # an older checkpoint of another structure
    raise ConfigError(str(e)) from None


def check_resumable(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpointer: checkpoint.Checkpointer,
    resume_stopped: bool,
    allow_config_change: bool,
) -> None:
  """Refuses, in one line, to go on from a stopped run or with another config.

  A run the health monitor stopped (`stopped.json`) goes on only with
  `resume_stopped`, and then from its newest checkpoint before the trouble.
  A resume may change only `runs.RESUMABLE_CHANGES` (length, cadences,
  evaluation) of the config saved with the latest checkpoint, unless
  `allow_config_change`.
  """
  stopped_path = os.path.join(workdir, runs.STOPPED)
  if os.path.exists(stopped_path):
    with open(stopped_path) as f:
      stopped = json.load(f)
    if not resume_stopped:
      raise ConfigError(
          f"{workdir}: {stopped['reason']}. Rerun with --resume_stopped to go on from the "
          f"newest checkpoint before step {stopped['since']}"
      )
    good = [s for s in checkpointer.all_steps() if s < stopped["since"]]
    checkpointer.delete_after(max(good, default=-1))
    os.remove(stopped_path)
  latest = checkpointer.latest_step()
  saved = None
  if latest is not None:
    try:
      saved = checkpointer.config(latest)
    except Exception:  # noqa: BLE001  (unreadable: `resume` sets the checkpoint aside)
      saved = None
  changes = ""
  if saved is not None:
    changes = validate.config_diff(saved, config, ignore=runs.RESUMABLE_CHANGES)
  if changes and not allow_config_change:
    raise ConfigError(
        f"{workdir} holds a run of another config ({changes}); use another --workdir, or "
        "--allow_config_change to resume it anyway"
    )


def _config_diff(
    checkpointer: checkpoint.Checkpointer, step: int, config: ml_collections.ConfigDict
) -> str:
  """How `config` differs from the one saved with checkpoint `step` ("" if it has none)."""
  try:
    saved = checkpointer.config(step)
  except Exception:  # noqa: BLE001  (unreadable: the structural difference is reported instead)
    return ""
  return validate.config_diff(saved, config) if saved is not None else ""


@dataclasses.dataclass
class Run:
  """A built run: everything the loop needs, made by the builders above (`run`).

  `state` is the starting state on the host (initial or resumed); `data` the
  arrays on the devices in `layout`.
  """

  config: ml_collections.ConfigDict
  workdir: str
  primary: bool
  layout: Layout
  method: methods.GAN
  nets: methods.Networks
  split: data_lib.Split
  arrays: dict[str, np.ndarray]
  data: Any
  state: state_lib.GANState
  resumed: bool
  train_step: step_lib.StepFn
  evaluators: dict[str, Any]
  checkpointer: checkpoint.Checkpointer
  probe_real: jax.Array
  probe_z: jax.Array
  fixed_z: jax.Array
  diversity: Callable[..., jax.Array]
  sample: Callable[..., jax.Array]
  lock: Any = None

  def close(self) -> None:
    """Releases the workdir's lock (the loop calls this when the run ends)."""
    if self.lock is not None:
      self.lock.close()
      self.lock = None

  def new_state(self) -> state_lib.GANState:
    """The state the run started from before any training (a rollback with nothing saved)."""
    return initial_state(self.config, self.method, self.nets, self.split, self.arrays)

  def pretrain(self, log: Callable[[str], None]) -> None:
    """A new run's pre-training, if its method has one (Triple-GAN's C alone).

    Writes pretrain.json and a step-0 checkpoint, so that neither a resume nor
    a health rollback before the first regular checkpoint repeats or loses it.
    """
    if self.resumed:
      return
    self.state, summary = self.method.pretrain(self.config, self.nets, self.state, self.arrays, log)
    if not summary:
      return
    if self.primary:
      utils.write_json(os.path.join(self.workdir, "pretrain.json"), summary, indent=2)
    self.checkpointer.save(jax.device_get(self.state), self.config)

  def save_samples(self, state: state_lib.GANState) -> str:
    """The fixed-noise grid of `state`'s EMA generator, as samples/step_NNNNNN.png."""
    outputs = np.asarray(self.sample(state.g, state.g_ema, self.fixed_z))
    path = os.path.join(self.workdir, "samples", f"step_{int(state.step):06d}.png")
    if outputs.ndim == 2:  # points (the 2D mixtures): a scatter plot over the real means
      points = data_lib.reference_points(self.config.dataset)
      return writers.save_points_plot(outputs, points, path)
    # A conditional G makes sample i of class i mod K (`gan.models.generator_classes`): with K
    # columns, each column is one class.
    columns = models.generator_classes(self.nets.G) or None
    return writers.save_image_grid(outputs, path, columns)

  def evaluate(self, state: state_lib.GANState, names: list[str]) -> dict[str, Any]:
    """Runs the named evaluators on the EMA generator (or classifier); appends to evals.jsonl."""
    views = runs.make_views(self.config, self.method, self.nets, state)
    results = evaluators_lib.run_all({name: self.evaluators[name] for name in names}, views)
    if not self.primary:  # every process evaluates (same numbers); process 0 writes
      return results
    with open(os.path.join(self.workdir, "evals.jsonl"), "a") as f:
      f.write(json.dumps({"step": int(state.step), **evaluators_lib.as_json(results)}) + "\n")
    return results


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    shared: Run | None = None,
    parallel: str | None = None,
    resume_stopped: bool = False,
    allow_config_change: bool = False,
) -> Run:
  """Builds a run of `config` in `workdir`, resumed from its latest checkpoint if there is one.

  `shared`: a Run of the same dataset and evaluators whose loaded split, device
  copy of the data and evaluators this one takes instead of building its own
  (the members of a population sweep, `gan.sweep`). `parallel` overrides
  `config.parallel` (a population's pmapped step needs "pmap"). The workdir is
  locked for this process until `Run.close`; see `check_resumable` for the flags.
  """
  validate.check(config)
  workdir = check_workdir(workdir)
  validate.check_run_dir(workdir)
  primary = distributed.is_primary()
  lock = runs.lock_workdir(workdir) if primary else None
  try:
    return _run(config, workdir, shared, parallel, resume_stopped, allow_config_change, lock)
  except BaseException:
    if lock is not None:
      lock.close()
    raise


def _run(config, workdir, shared, parallel, resume_stopped, allow_config_change, lock) -> Run:
  layout = Layout(parallel or config.get("parallel", "auto"))
  check_batch_config(config)
  # Names in the config are checked before the (slow) data loading.
  method = methods.get(config)
  step_config = method.step_config(config)
  nets = methods.build_networks(config, step_lib.AXIS)
  method.check(nets)
  primary = distributed.is_primary()
  # Read-only first: a writable Orbax manager starts a clean-up thread, which prints a
  # traceback if the process then exits at once (a refused resume, a missing dataset).
  looked_up = runs.checkpointer(workdir, config, read_only=not resume_stopped)
  try:
    check_resumable(config, workdir, looked_up, resume_stopped, allow_config_change)
  finally:
    looked_up.close()
  split, arrays = data(config, method, workdir, primary, shared.split if shared else None)
  state = initial_state(config, method, nets, split, arrays)
  evaluators = evaluators_lib.build(config) if shared is None else shared.evaluators
  checkpointer = runs.checkpointer(workdir, config)
  try:
    state, resumed = resume(checkpointer, state, config)
  except BaseException:
    checkpointer.close()
    raise
  if resumed:
    print(f"{distributed.prefix()}Resuming from step {int(state.step)} in {workdir}", flush=True)
  probe_real, probe_z = health_probe(config, split)
  return Run(
      config=config,
      workdir=workdir,
      primary=primary,
      layout=layout,
      method=method,
      nets=nets,
      split=split,
      arrays=arrays,
      data=layout.put(arrays) if shared is None else shared.data,
      state=state,
      resumed=resumed,
      train_step=train_step(method, step_config, nets, layout),
      evaluators=evaluators,
      checkpointer=checkpointer,
      probe_real=probe_real,
      probe_z=probe_z,
      fixed_z=fixed_latents(config),
      diversity=health.make_diversity_fn(nets.G, nets.D),
      sample=step_lib.make_sample_fn(nets.G),
      lock=lock,
  )
