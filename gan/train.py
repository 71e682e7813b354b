"""The training loop: `train_and_evaluate(config, workdir)`.

Entry point for the command line (`gan.main`), notebooks and tests alike. It
loads the data onto the devices, builds or resumes the state, runs the
mapped step (`parallel`, below), and at the cadences in the config writes metrics, fixed-noise
sample grids from the EMA generator and checkpoints. Nothing happens on the
host between those cadences: metrics come back only at log steps.

How the per-device step is mapped over the devices (`config.parallel`):
  "pmap"       `jax.pmap` (`gan.step.pmap_step`); state and data carry a
               leading device axis, one copy per device (`replicate`).
  "shard_map"  `jax.jit(jax.shard_map(...))` (`gan.step.shard_map_step`),
               pmap's successor; state and data are one array each,
               replicated over a mesh of the devices. One process only.
  "auto"       (default) shard_map in one process, pmap across processes.
Both run the same per-device function with the same collectives and give the
same numbers; shard_map's unreplicated layout is faster (the Improved-GAN
step: 91 against 98 ms on a loaded machine, benchmarks/README.md).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from gan import data as data_lib
from gan import distributed, health, models, runs, semi, toy2d, writers
from gan import state as state_lib
from gan import step as step_lib
from gan.evaluation import evaluators as evaluators_lib
from gan.utils import ConfigError, check_batch, check_workdir, every, progress_interval


def replicate(tree, devices):
  """Copies a pytree onto each device, adding a leading device axis (for pmap)."""
  sharding = NamedSharding(Mesh(np.asarray(devices), (step_lib.AXIS,)), P(step_lib.AXIS))

  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices), *x.shape)), sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree):
  """The first local device's copy of a replicated pytree.

  Reads that device's buffer directly: indexing (`x[0]`) would be a computation
  over the whole array, which in a multi-process run spans other processes'
  devices and so needs every process to join it.
  """

  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_data(0)[0]
    return x[0]

  return jax.tree.map(first, tree)


class Run:
  """A prepared run: data on the devices, models, state, compiled step and writers.

  `shared`: a Run of the same dataset and evaluators whose loaded split, device
  copy of the data and evaluators this one takes instead of building its own
  (the members of a population sweep, `gan.sweep`).
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str,
      shared: Run | None = None,
      parallel: str | None = None,
  ):
    """`parallel` overrides `config.parallel` (a population sweep's pmapped step needs "pmap")."""
    self.workdir = check_workdir(workdir)
    self.config = config
    # With several processes the step spans every process's devices; each
    # process holds copies on (and feeds) only its local ones.
    self.devices = jax.local_devices()
    self.primary = distributed.is_primary()
    self.parallel = parallel_mode(parallel or config.get("parallel", "auto"))
    self.mesh = Mesh(np.asarray(self.devices), (step_lib.AXIS,))
    local_batch = check_batch(config.batch_size, jax.device_count())
    pack = config.model.d.get("pack", 1)
    if local_batch % pack:
      raise ConfigError(f"the per-device batch {local_batch} is not divisible by pack={pack}")
    # Names in the config are checked before the (slow) data loading.
    self.method = semi.get(config)  # None: a plain GAN
    step_config = (self.method or step_lib).StepConfig.from_config(config)
    self.G, self.D = models.build(config.model, axis_name=step_lib.AXIS)
    self.C = models.build_classifier(config.model, axis_name=step_lib.AXIS)
    if self.method is semi.triple_gan and self.C is None:
      raise ConfigError("method 'triple_gan' needs config.model.classifier")
    if shared is None:
      split = data_lib.load(config.dataset, config.train_split, config.data_dir)
    else:
      split = shared.split
    logging.info("Data: %d examples from %s", split.num_examples, split.source)
    per_example = data_lib.STACKED.get(config.dataset, (None, 1))[1]
    if (
        config.dataset not in toy2d.MIXTURES
        and split.num_examples < per_example * config.batch_size
    ):
      raise ConfigError(
          f"batch_size {config.batch_size} needs {per_example * config.batch_size} training "
          f"images per batch; the split has {split.num_examples}"
      )
    self.example_shape = data_lib.example_shape(config.dataset, split)
    self.split = split
    arrays = split.arrays()
    self.num_labelled = 0
    if self.method:  # the labelled subset, tiled to whole batches, rides along with the data
      labelled = semi.labelled_data(config, split, self.workdir, self.primary)
      arrays |= labelled
      self.num_labelled = len(labelled["labelled_label"])
    self.state = self.initial_state()
    self.evaluators = evaluators_lib.build(config) if shared is None else shared.evaluators
    self.checkpointer = runs.checkpointer(self.workdir, config)
    # Every process resumes from the step process 0 sees (-1: none), so they cannot drift apart.
    latest = self.checkpointer.latest_step()
    resume = distributed.broadcast_from_primary(-1 if latest is None else latest)
    self.resumed = resume >= 0
    if self.resumed:
      self.state = self.checkpointer.restore(self.state, step=resume)
      print(f"{_prefix()}Resuming from step {int(self.state.step)} in {self.workdir}", flush=True)
    self.arrays = arrays  # the host data (the split's own arrays and the labelled subset)
    self.data = self.put(arrays) if shared is None else shared.data
    # The health monitor's probe: a fixed real batch and fixed latents, scored at log steps.
    probe = min(64, config.batch_size)
    _, batch = data_lib.batch_fn(config.dataset)(
        jax.tree.map(jax.numpy.asarray, split.arrays()),
        jax.numpy.arange(split.num_examples),
        jax.random.PRNGKey(config.seed + 2),
        0,
        probe,
        None,
    )
    self.probe_real = batch["image"]
    z_shape = (probe, config.model.z_dim)
    self.probe_z = jax.random.normal(jax.random.PRNGKey(config.seed + 3), z_shape)
    self.diversity = health.make_diversity_fn(self.G, self.D)
    if self.method:
      train_step = self.method.make_train_step(step_config, self.G, self.D, self.C)
    else:
      train_step = step_lib.make_train_step(step_config, self.G, self.D)
    if self.parallel == "pmap":
      self.train_step = step_lib.pmap_step(train_step)
    else:
      self.train_step = step_lib.shard_map_step(train_step, self.mesh)
    self.sample = step_lib.make_sample_fn(self.G)
    self.fixed_z = jax.random.normal(
        jax.random.PRNGKey(config.seed + 1), (config.num_samples, config.model.z_dim)
    )

  def put(self, tree):
    """A host pytree onto the devices in this run's layout (`parallel`)."""
    if self.parallel == "pmap":
      return replicate(tree, self.devices)
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def first(self, tree):
    """One copy of a pytree held in this run's layout, which outlives the next step.

    pmap: the first device's copy (indexing makes a new buffer). shard_map: a
    host copy, since the first device's buffer is the one the next step donates.
    """
    if self.parallel == "pmap":
      return unreplicate(tree)
    return jax.tree.map(
        lambda x: np.array(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree
    )

  def pretrain(self) -> None:
    """A new run's pre-training, if its method has one (Triple-GAN's C alone, `semi.pretrain`).

    Writes pretrain.json and a step-0 checkpoint, so that neither a resume nor
    a health rollback before the first regular checkpoint repeats or loses it.
    """
    pretrain = getattr(self.method, "pretrain", None)
    if self.resumed or pretrain is None:
      return
    log = functools.partial(print, flush=True) if self.primary else lambda _: None
    self.state, summary = pretrain(self.config, self.C, self.state, self.arrays, log)
    if not summary:
      return
    if self.primary:
      with open(os.path.join(self.workdir, "pretrain.json"), "w") as f:
        json.dump(summary, f, indent=2)
    self.checkpointer.save(jax.device_get(self.state), self.config)

  def initial_state(self) -> state_lib.GANState:
    if self.method:
      return self.method.create_state(
          self.config, self.G, self.D, self.C, self.split.image, self.num_labelled
      )
    return state_lib.create(
        self.config, self.G, self.D, self.example_shape, self.split.num_examples
    )

  def save_samples(self, state: state_lib.GANState) -> str:
    outputs = np.asarray(self.sample(state.g, state.g_ema, self.fixed_z))
    path = os.path.join(self.workdir, "samples", f"step_{int(state.step):06d}.png")
    if outputs.ndim == 2:  # points (the 2D mixtures): a scatter plot over the real means
      return writers.save_points_plot(outputs, toy2d.get(self.config.dataset).means, path)
    # A conditional G makes sample i of class i mod K (`gan.models.generator_classes`): with K
    # columns, each column is one class.
    columns = models.generator_classes(self.G) or None
    return writers.save_image_grid(outputs, path, columns)

  def evaluate(self, state: state_lib.GANState, names: list[str]) -> dict[str, Any]:
    """Runs the named evaluators on the EMA generator (or classifier); appends to evals.jsonl."""
    step = int(state.step)
    views = runs.make_views(self.config, self.G, self.D, self.C, state)
    results = evaluators_lib.run_all({name: self.evaluators[name] for name in names}, views)
    if not self.primary:  # every process evaluates (same numbers); process 0 writes
      return results
    with open(os.path.join(self.workdir, "evals.jsonl"), "a") as f:
      f.write(json.dumps({"step": step, **evaluators_lib.as_json(results)}) + "\n")
    return results


def parallel_mode(parallel: str) -> str:
  """`config.parallel` resolved: "pmap" or "shard_map" (see the module docstring)."""
  if parallel not in ("auto", "pmap", "shard_map"):
    raise ConfigError(f"unknown parallel={parallel!r}; use 'auto', 'pmap' or 'shard_map'")
  if parallel == "shard_map" and jax.process_count() > 1:
    raise ConfigError("parallel='shard_map' runs in one process; use 'pmap' or 'auto'")
  if parallel == "auto":
    return "shard_map" if jax.process_count() == 1 else "pmap"
  return parallel


def _prefix() -> str:
  """ "process i/n: " in multi-process runs, so interleaved output says whose it is."""
  if jax.process_count() == 1:
    return ""
  return f"process {jax.process_index()}/{jax.process_count()}: "


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.GANState:
  """Trains until `config.num_steps` generator updates; resumes from `workdir` if possible.

  The health monitor (`gan.health`, settings in `config.health`) watches every
  log step and evaluation; its events go to `events.jsonl` and may roll the run
  back to an earlier checkpoint with lower learning rates, or stop it.

  Returns the final state (one copy, on the first device).
  """
  run = Run(config, workdir)
  if run.primary:
    write_config(config, run.workdir)
  start = int(run.state.step)
  if start >= config.num_steps:
    logging.info("Already trained %d >= num_steps=%d steps", start, config.num_steps)
    return run.state
  run.pretrain()
  writer = writers.MetricWriter(run.workdir) if run.primary else writers.NullWriter()
  monitor = HealthMonitor(run)
  p_state = run.put(run.state)
  del run.state  # donated to the step from here on
  bar = tqdm(
      total=config.num_steps,
      initial=start,
      desc="train",
      unit="step",
      dynamic_ncols=True,
      mininterval=progress_interval(),
      disable=not run.primary,
  )
  monitor.bar = bar
  last_time, last_step = time.perf_counter(), start
  p_metrics, step, results, results_step = None, start, None, start
  while step < config.num_steps:
    step += 1
    if step == monitor.fault_step:  # a fault injected on purpose (`config.inject_fault`)
      p_state = run.put(monitor.inject_fault(jax.device_get(run.first(p_state))))
      p_metrics = None
    # At most two steps in flight: wait for step t-1 before queueing t+1. An
    # unbounded queue of pmapped steps deadlocked XLA:CPU with 2 simulated
    # devices on 2 cores (an all-reduce rendezvous timed out in step 1).
    previous = p_metrics
    p_state, p_metrics = run.train_step(p_state, run.data)
    jax.block_until_ready(previous)
    bar.update(1)
    is_last = step == config.num_steps
    events: list[health.Event] = []
    if every(step, config.log_every) or is_last:
      metrics = jax.device_get(run.first(p_metrics))
      now = time.perf_counter()
      metrics["perf/steps_per_s"] = (step - last_step) / (now - last_time)
      metrics["perf/images_per_s"] = metrics["perf/steps_per_s"] * config.batch_size
      if monitor.enabled:
        g, d = run.first(p_state.g), run.first(p_state.d)
        metrics["health/diversity"] = float(run.diversity(g, d, run.probe_real, run.probe_z))
        metrics["health/d_sigma_max"] = max(health.top_singular_values(d.params).values())
      last_time, last_step = now, step
      writer.write(step, metrics)
      bar.set_postfix({k: f"{float(metrics[k]):.3f}" for k in ("d/loss", "g/loss")})
      logging.info("step %d: %s", step, {k: round(float(v), 4) for k, v in metrics.items()})
      events += monitor.observe(step, metrics)
    if run.primary and (every(step, config.sample_every) or is_last):
      run.save_samples(run.first(p_state))
    due = [n for n, e in run.evaluators.items() if every(step, e.every) or is_last]
    eval_metrics = None
    if due:
      state = jax.device_get(run.first(p_state))
      results, results_step = run.evaluate(state, due), step
      eval_metrics = evaluators_lib.flatten(results)
      writer.write(step, eval_metrics)
      if run.primary:
        bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
      last_time, last_step = time.perf_counter(), step  # evaluation is not training throughput
      events += monitor.observe_eval(step, eval_metrics)
    action = monitor.handle(events)
    stopping = action in ("early_stop", "stop")
    # Before any checkpoint of this step, so the saved state carries the raised rates.
    if action == "log" and monitor.enabled and (scale := monitor.recovered(step)) is not None:
      state = state_lib.with_learning_rate_scale(jax.device_get(run.first(p_state)), scale)
      p_state, p_metrics = run.put(state), None
    if every(step, config.checkpoint_every) or is_last or eval_metrics or stopping:
      state = jax.device_get(run.first(p_state))
      if jax.process_count() > 1:  # all processes save together; check they hold one state
        distributed.assert_same_everywhere(state, f"the training state at step {step}")
      run.checkpointer.save(state, config, eval_metrics)
      monitor.save()
    if (is_last or stopping) and results is not None and run.primary:
      extra = semi.eval_extra(run.workdir, results) if run.method else None
      runs.write_eval_json(run.workdir, results_step, "final", results, extra)
    if stopping:
      if run.primary:
        bar.write(f"step {step}: stopping ({action}); best checkpoint: {monitor.best_note()}")
      break
    if action == "rollback":
      p_state = run.put(monitor.rollback(events))
      step = int(jax.device_get(run.first(p_state.step)))
      bar.reset(total=config.num_steps)
      bar.update(step)
      last_time, last_step = time.perf_counter(), step
      p_metrics = None
  bar.close()
  writer.close()
  run.checkpointer.close()
  state = jax.block_until_ready(run.first(p_state))
  if jax.process_count() > 1:
    digest = distributed.fingerprint((state.g.params, state.d.params))
    print(f"{_prefix()}finished at step {int(state.step)}, parameters {digest[:16]}", flush=True)
  return state


class HealthMonitor:
  """The loop's side of `gan.health`: feeds the Monitor, records events, carries out actions."""

  def __init__(self, run: Run):
    self.run, self.bar = run, None
    config = run.config
    settings = config.get("health") or {}
    self.enabled = bool(settings.get("enabled", True))
    best = config.get("best_checkpoint") or {}
    self.monitor = health.Monitor(settings, best.get("metric"), best.get("mode", "min"))
    self.path = os.path.join(run.workdir, "health.json")
    # A fault injected on purpose, to show recovery: from step `step` on, both learning
    # rates are multiplied by `lr_factor`. It happens once: a rollback that takes the run
    # back past `step` does not bring it back.
    fault = config.get("inject_fault") or {}
    self.fault_step = int(fault.get("step", 0)) or None
    self.fault_lr_factor = float(fault.get("lr_factor", 1.0))
    self.fault_injected = False
    if os.path.exists(self.path) and run.checkpointer.latest_step() is not None:
      with open(self.path) as f:
        saved = json.load(f)
      self.monitor.load_state_dict(saved)
      self.fault_injected = bool(saved.get("fault_injected", False))
      if self.fault_injected:
        self.fault_step = None
      # The checkpoint is the truth about the rates in force (health.json may be a step
      # ahead of it after a crash); an injected fault's factor is not a remedy.
      scales = state_lib.learning_rate_scales(run.state)
      self.monitor.lr_scale = min(1.0, scales["g"])

  def observe(self, step: int, metrics: dict[str, float]) -> list[health.Event]:
    return self.monitor.observe(step, metrics) if self.enabled else []

  def observe_eval(self, step: int, metrics: dict[str, float]) -> list[health.Event]:
    return self.monitor.observe_eval(step, metrics) if self.enabled else []

  def handle(self, events: list[health.Event]) -> str:
    """Records `events`; returns the strongest action among them ("log" if none)."""
    order = {name: i for i, name in enumerate(health.ACTIONS)}  # log < rollback < stops
    action = "log"
    for event in events:
      cleared = event.action == health.CLEARED
      message = f"health: step {event.step}: {event.message}" + (
          "" if cleared else f" -> {event.action}"
      )
      (logging.info if cleared else logging.warning)("%s", message)
      if self.run.primary:
        health.write_event(self.run.workdir, event)
        (self.bar.write if self.bar is not None else print)(message)
      if not cleared and order[event.action] > order[action]:
        action = event.action
    return action

  def rollback(self, events: list[health.Event]) -> state_lib.GANState:
    """The state to go on from: the last checkpoint before the trouble, learning rates lowered."""
    since = min(e.since for e in events if e.action == "rollback")
    steps = [s for s in self.run.checkpointer.all_steps() if s < since]
    self.monitor.lr_scale *= self.monitor.config.remedy_lr_factor
    state = self.run.initial_state()  # nothing saved before the trouble: start over
    if steps:
      state = self.run.checkpointer.restore(state, step=max(steps))
    self.run.checkpointer.delete_after(int(state.step))
    self.monitor.reset_windows()
    self.monitor.quiet_since = int(state.step)
    state = state_lib.with_learning_rate_scale(state, self.monitor.lr_scale)
    message = (
        f"health: rolled back to step {int(state.step)}; learning rates x{self.monitor.lr_scale:g}"
    )
    logging.warning("%s", message)
    if self.run.primary and self.bar is not None:
      self.bar.write(message)
    self.save()
    return state

  def recovered(self, step: int) -> float | None:
    """The new learning-rate scale when a remedy is undone after a quiet spell (logged)."""
    scale = self.monitor.recovered(step)
    if scale is not None:
      message = f"health: step {step}: quiet for a while; learning rates back to x{scale:g}"
      logging.warning("%s", message)
      if self.run.primary and self.bar is not None:
        self.bar.write(message)
      self.save()
    return scale

  def inject_fault(self, state: state_lib.GANState) -> state_lib.GANState:
    """Multiplies both learning rates by the configured factor, once per run."""
    step, self.fault_step, self.fault_injected = int(state.step) + 1, None, True
    scale = state_lib.learning_rate_scales(state)["g"] * self.fault_lr_factor
    message = f"fault injected at step {step}: learning rates x{self.fault_lr_factor:g}"
    logging.warning("%s", message)
    if self.run.primary and self.bar is not None:
      self.bar.write(message)
    self.save()
    return state_lib.with_learning_rate_scale(state, scale)

  def save(self) -> None:
    if self.run.primary and self.enabled:
      with open(self.path, "w") as f:
        json.dump({**self.monitor.state_dict(), "fault_injected": self.fault_injected}, f)

  def best_note(self) -> str:
    step = self.run.checkpointer.best_step()
    if step is None:
      return f"latest (step {self.run.checkpointer.latest_step()}); no metric tracked"
    return f"step {step} by {self.monitor.metric}"
