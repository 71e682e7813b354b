"""The one training loop: what happens around every step of a run, as hooks on one object.

`RunLoop` does a run's per-step work at the cadences of its config, for a
single run (`train`, below) and for every member of a population sweep
(`gan.sweep`) alike:

  log          training metrics, the health probes, metrics.jsonl / TensorBoard
  sample       the EMA generator's fixed-noise grid (samples/step_NNNNNN.png)
  evaluate     the config's evaluators (evals.jsonl) and, at the end, eval.json
  checkpoint   the whole state, ranked by the evaluation for best-N
  health       detector events, rollback with lowered learning rates, undoing
               the remedy, early stop and stop (`gan.recovery`)

Where a run's state lives while it trains is a `Slot`: its own device
copies (`DeviceSlot`), or one place in a population's stacked state. The loop
reads and replaces the state only through the slot, so a sweep member gets
exactly what a single run gets. Nothing happens on the host between the
cadences: metrics come back only at log steps.

Crash consistency: a checkpoint carries the health monitor's state of its
step; the state of a step whose health action is a rollback or a stop (the
diverged state) is never saved. A run the monitor stops ends with `RunStoppedError`
(and `stopped.json` in its workdir); SIGTERM or SIGINT end the current step,
save it and raise `RunInterruptedError`; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Protocol

import jax
from absl import logging
from tqdm.auto import tqdm

from gan import build, distributed, health, platform, writers
from gan import runs as runs_lib
from gan import state as state_lib
from gan.evaluation import evaluators as evaluators_lib
from gan.recovery import HealthMonitor
from gan.utils import every, progress_interval, write_json


class RunStoppedError(Exception):
  """The health monitor stopped the run (a failure it could not recover from).

  `state` is the run's last state (one copy, on the host), which was not saved.
  """

  def __init__(self, reason: str, state: state_lib.GANState | None = None):
    super().__init__(reason)
    self.state = state


class RunInterruptedError(Exception):
  """SIGTERM or SIGINT ended the run after saving its current step; rerun to resume."""

  def __init__(self, signum: int, step: int, workdir: str):
    name = signal.Signals(signum).name
    super().__init__(
        f"{name} at step {step}: checkpoint saved in {workdir}; run the same command to resume"
    )
    self.signum = signum


class Slot(Protocol):
  """Where one run's state lives while it trains."""

  def metrics(self) -> dict[str, float]:
    """This step's training metrics, on the host (waits for the step)."""

  def state(self) -> state_lib.GANState:
    """This step's state, on the host."""

  def set_state(self, state: state_lib.GANState) -> None:
    """Replaces the state (a rollback, a changed learning-rate scale, an injected fault)."""

  def diversity(self) -> float:
    """The health monitor's diversity probe on this step's players."""


class DeviceSlot:
  """A single run's state: its own copy on the devices, stepped by the run's mapped step."""

  def __init__(self, run: build.Run, state: state_lib.GANState, steps_in_flight: int | None = 2):
    """`steps_in_flight`: the backend's bound (`gan.platform.Choices`); None for none."""
    self.run = run
    self.p_state = run.layout.put(state)
    self.p_metrics = None
    self._host: state_lib.GANState | None = None
    self.queue = platform.StepQueue(steps_in_flight)

  def step(self) -> None:
    self.p_state, self.p_metrics = self.run.train_step(self.p_state, self.run.data)
    self.queue.dispatched(self.p_metrics)
    self._host = None

  def metrics(self) -> dict[str, float]:
    return jax.device_get(self.run.layout.first(self.p_metrics))

  def state(self) -> state_lib.GANState:
    if self._host is None:
      self._host = jax.device_get(self.run.layout.first(self.p_state))
    return self._host

  def set_state(self, state: state_lib.GANState) -> None:
    self.p_state, self.p_metrics, self._host = self.run.layout.put(state), None, None

  def diversity(self) -> float:
    first = self.run.layout.first
    g, d = first(self.p_state.g), first(self.p_state.d)
    return float(self.run.diversity(g, d, self.run.probe_real, self.run.probe_z))


@dataclasses.dataclass
class Outcome:
  """What a step's hooks did: whether they evaluated, where the run goes on, whether it ended
  (and, if the health monitor stopped it, why)."""

  evaluated: bool
  step: int
  done: bool
  stopped: str | None = None


class RunLoop:
  """One run's hooks around its steps: log, sample, evaluate, checkpoint, health."""

  def __init__(self, run: build.Run, bar: Any, prefix: str = ""):
    """`bar` is the progress bar whose lines show messages; `prefix` names the run in them."""
    self.run, self.bar, self.prefix = run, bar, prefix
    self.monitor = HealthMonitor(run, self.say)
    self.writer = writers.MetricWriter(run.workdir) if run.primary else writers.NullWriter()
    self.results: dict[str, Any] | None = None
    self.results_step = int(run.state.step)
    self.saved_step = int(run.state.step) if run.resumed else None

  def say(self, message: str) -> None:
    self.bar.write(self.prefix + message)

  def log_due(self, step: int) -> bool:
    config = self.run.config
    return every(step, config.log_every) or step == config.num_steps

  def before_step(self, step: int, slot: Slot) -> None:
    """A fault injected on purpose (`config.inject_fault`) before the step that reaches it."""
    if step == self.monitor.fault_step:
      slot.set_state(self.monitor.inject_fault(slot.state()))

  def after_step(self, step: int, slot: Slot, steps_per_s: float) -> Outcome:
    """The hooks due after step `step`, in order; returns where the run goes on."""
    run, config, monitor = self.run, self.run.config, self.monitor
    is_last = step == config.num_steps
    events: list[health.Event] = []
    if self.log_due(step):
      events += self.log(step, slot, steps_per_s)
    if run.primary and (every(step, config.sample_every) or is_last):
      run.save_samples(slot.state())
    due = [n for n, e in run.evaluators.items() if every(step, e.every) or is_last]
    eval_metrics = None
    if due:
      self.results, self.results_step = run.evaluate(slot.state(), due), step
      eval_metrics = evaluators_lib.flatten(self.results)
      self.writer.write(step, eval_metrics)
      if run.primary:
        self.say(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
      events += monitor.observe_eval(step, eval_metrics)
    action = monitor.handle(events)
    stopping = action in ("early_stop", "stop")
    # Before any checkpoint of this step, so the saved state carries the raised rates.
    if action == "log" and monitor.enabled and (scale := monitor.recovered(step)) is not None:
      slot.set_state(state_lib.with_learning_rate_scale(slot.state(), scale))
    # The state of a step that diverged (a rollback or a stop) never becomes a checkpoint.
    diverged = action in ("rollback", "stop")
    due_checkpoint = every(step, config.checkpoint_every) or is_last or eval_metrics or stopping
    if due_checkpoint and not diverged:
      self.checkpoint(step, slot.state(), eval_metrics)
    if (is_last or stopping) and action != "rollback" and self.results and run.primary:
      extra = run.method.eval_extra(run.workdir, self.results)
      runs_lib.write_eval_json(run.workdir, self.results_step, "final", self.results, extra)
    if stopping:
      if run.primary:
        self.say(f"step {step}: stopping ({action}); best checkpoint: {monitor.best_note()}")
      stopped = None
      if action == "stop":
        stopped = self.record_stop(step, events)
      return Outcome(bool(due), step, done=True, stopped=stopped)
    if action == "rollback":  # also after the last step: the run goes on from the restored state
      state = monitor.rollback(events)
      slot.set_state(state)
      return Outcome(bool(due), int(state.step), done=False)
    return Outcome(bool(due), step, done=is_last)

  def log(self, step: int, slot: Slot, steps_per_s: float) -> list[health.Event]:
    config, monitor = self.run.config, self.monitor
    metrics = slot.metrics()
    metrics["perf/steps_per_s"] = steps_per_s
    metrics["perf/images_per_s"] = steps_per_s * config.batch_size
    if monitor.enabled:
      metrics["health/diversity"] = slot.diversity()
      d_params = slot.state().d.params
      metrics["health/d_sigma_max"] = max(health.top_singular_values(d_params).values())
    self.writer.write(step, metrics)
    logging.info(
        "%sstep %d: %s", self.prefix, step, {k: round(float(v), 4) for k, v in metrics.items()}
    )
    if not self.prefix:
      self.bar.set_postfix({k: f"{float(metrics[k]):.3f}" for k in ("d/loss", "g/loss")})
    return monitor.observe(step, metrics)

  def checkpoint(
      self, step: int, state: state_lib.GANState, eval_metrics: dict[str, float] | None = None
  ) -> None:
    if jax.process_count() > 1:  # all processes save together; check they hold one state
      distributed.assert_same_everywhere(state, f"the training state at step {step}")
    health_state = self.monitor.state_dict() if self.monitor.enabled else None
    self.run.checkpointer.save(state, self.run.config, eval_metrics, health_state)
    self.saved_step = step
    self.monitor.save()

  def record_stop(self, step: int, events: list[health.Event]) -> str:
    """Writes stopped.json (a rerun refuses to go on from a stopped run unless told to);
    returns the one-line reason."""
    failure = next(e for e in events if e.action == "stop")
    reason = (
        f"the health monitor stopped the run at step {step}: {failure.message} "
        f"(trouble since step {failure.since}; see events.jsonl, or gan.report)"
    )
    if self.run.primary:
      record = {"step": step, "since": failure.since, "detector": failure.detector}
      write_json(os.path.join(self.run.workdir, runs_lib.STOPPED), record | {"reason": reason})
    return reason

  def save_now(self, step: int, slot: Slot) -> None:
    """A checkpoint of the current step unless one was just saved (an interrupted run)."""
    if self.saved_step != step:
      self.checkpoint(step, slot.state())

  def close(self) -> None:
    self.writer.close()
    self.run.checkpointer.close()


def progress_bar(total: int, initial: int, desc: str, primary: bool = True) -> Any:
  return tqdm(
      total=total,
      initial=initial,
      desc=desc,
      unit="step",
      dynamic_ncols=True,
      mininterval=progress_interval(),
      disable=not primary,
  )


class Interrupts:
  """SIGTERM and SIGINT while training, noted for the loop to act on between steps.

  The loop finishes the current step, saves it and raises `RunInterruptedError`; a
  second SIGINT raises KeyboardInterrupt at once. Handlers are installed only in
  the main thread (elsewhere Python allows none) and restored on exit.
  """

  def __init__(self):
    self.signum: int | None = None
    self._saved: dict[int, Any] = {}

  def __enter__(self) -> Interrupts:
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._saved[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc: Any) -> None:
    for signum, handler in self._saved.items():
      signal.signal(signum, handler)


def train(run: build.Run) -> state_lib.GANState:
  """Trains a built run to `config.num_steps`; returns the final state (one copy).

  Raises RunStoppedError if the health monitor stops the run, RunInterruptedError after
  SIGTERM or SIGINT (the current step saved).
  """
  try:
    with Interrupts() as interrupts:
      return _train(run, interrupts)
  finally:
    run.close()


def _train(run: build.Run, interrupts: Interrupts) -> state_lib.GANState:
  config = run.config
  start = int(run.state.step)
  if start >= config.num_steps:
    logging.info("Already trained %d >= num_steps=%d steps", start, config.num_steps)
    return run.state
  log = (lambda message: print(message, flush=True)) if run.primary else (lambda _: None)
  run.pretrain(log)
  bar = progress_bar(config.num_steps, start, "train", run.primary)
  hooks = RunLoop(run, bar)
  slot = DeviceSlot(run, run.state, platform.choices(run.layout.backend).steps_in_flight)
  del run.state  # donated to the step from here on
  last_time, last_step, step = time.perf_counter(), start, start
  outcome = None
  try:
    while step < config.num_steps:
      step += 1
      hooks.before_step(step, slot)
      slot.step()
      bar.update(1)
      steps_per_s = 0.0
      if hooks.log_due(step):
        jax.block_until_ready(slot.p_metrics)  # the rate is training's
        now = time.perf_counter()
        steps_per_s, last_time, last_step = (step - last_step) / (now - last_time), now, step
      outcome = hooks.after_step(step, slot, steps_per_s)
      if outcome.evaluated:  # evaluation is not training throughput
        last_time, last_step = time.perf_counter(), step
      if outcome.done:
        break
      if outcome.step != step:  # rolled back
        step = outcome.step
        bar.reset(total=config.num_steps)
        bar.update(step)
        last_time, last_step = time.perf_counter(), step
      if interrupts.signum is not None:
        hooks.save_now(step, slot)
        raise RunInterruptedError(interrupts.signum, step, run.workdir)
  finally:
    bar.close()
    hooks.close()
  if outcome is not None and outcome.stopped:
    raise RunStoppedError(outcome.stopped, slot.state())
  state = slot.state()
  if jax.process_count() > 1:
    digest = distributed.fingerprint((state.g.params, state.d.params))
    print(
        f"{distributed.prefix()}finished at step {int(state.step)}, parameters {digest[:16]}",
        flush=True,
    )
  return state
