"""The loop's side of the health monitor (`gan.health`): events recorded, actions carried out.

`HealthMonitor` feeds a run's log records and evaluations to `health.Monitor`,
writes its events to events.jsonl, rolls the run back to an earlier checkpoint
with lower learning rates, undoes that remedy after a quiet spell, and injects
the faults that experiments ask for on purpose (`config.inject_fault`) to show
recovery.

The monitor's state is saved inside every checkpoint (`state_dict`), so a
resumed run continues with the health state of the step it resumes from;
health.json is a readable copy of the latest. A rollback replaces the
checkpoint it goes back to by the restored state with its lowered learning
rates, and the state that diverged is never saved: whatever a kill
interrupts, the run resumes from a state that an uninterrupted run also
passed through, and repeats the same steps from there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from absl import logging

from gan import build, faults, health, utils
from gan import state as state_lib


class HealthMonitor:
  """The loop's side of `gan.health`: feeds the Monitor, records events, carries out actions."""

  def __init__(self, run: build.Run, say: Callable[[str], None]):
    """`say` shows a message to the person running it (a progress bar's line)."""
    self.run, self.say = run, say
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
    saved = self._saved() if run.resumed else None
    if saved is not None:
      self.monitor.load_state_dict(saved)
      self.fault_injected = bool(saved.get("fault_injected", False))
      if self.fault_injected:
        self.fault_step = None
      # The state is the truth about the rates in force (health.json of an older run may
      # be a step ahead of it); an injected fault's factor is not a remedy.
      scales = state_lib.learning_rate_scales(run.state)
      self.monitor.lr_scale = min(1.0, scales["g"])

  def _saved(self) -> dict | None:
    """The monitor's state saved with the checkpoint the run resumed from (older runs:
    health.json; an unreadable one is ignored with a warning)."""
    saved = self.run.checkpointer.health(int(self.run.state.step))
    if saved is not None or not os.path.exists(self.path):
      return saved
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      self.say(f"warning: {self.path} cannot be read ({e}); health state starts afresh")
      return None

  def state_dict(self) -> dict:
    """What a checkpoint saves of the monitor (and of the injected fault)."""
    return {**self.monitor.state_dict(), "fault_injected": self.fault_injected}

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
        self.say(message)
      if not cleared and order[event.action] > order[action]:
        action = event.action
    return action

  def rollback(self, events: list[health.Event]) -> state_lib.GANState:
    """The state to go on from: the last checkpoint before the trouble, learning rates lowered."""
    since = min(e.since for e in events if e.action == "rollback")
    steps = [s for s in self.run.checkpointer.all_steps() if s < since]
    self.monitor.lr_scale *= self.monitor.config.remedy_lr_factor
    state = self.run.new_state()  # nothing saved before the trouble: start over
    if steps:
      state = self.run.checkpointer.restore(state, step=max(steps))
    self.run.checkpointer.delete_after(int(state.step))
    faults.point("rollback:deleted")
    self.monitor.reset_windows()
    self.monitor.quiet_since = int(state.step)
    state = state_lib.with_learning_rate_scale(state, self.monitor.lr_scale)
    # The restored state with its new rates (and the monitor's state) replaces the
    # checkpoint it came from, so a kill from here on resumes with the remedy in force.
    self.run.checkpointer.replace(state, self.run.config, self.state_dict())
    faults.point("rollback:saved")
    message = (
        f"health: rolled back to step {int(state.step)}; learning rates x{self.monitor.lr_scale:g}"
    )
    logging.warning("%s", message)
    if self.run.primary:
      self.say(message)
    self.save()
    return state

  def recovered(self, step: int) -> float | None:
    """The new learning-rate scale when a remedy is undone after a quiet spell (logged)."""
    scale = self.monitor.recovered(step)
    if scale is not None:
      message = f"health: step {step}: quiet for a while; learning rates back to x{scale:g}"
      logging.warning("%s", message)
      if self.run.primary:
        self.say(message)
      self.save()
    return scale

  def inject_fault(self, state: state_lib.GANState) -> state_lib.GANState:
    """Multiplies both learning rates by the configured factor, once per run."""
    step, self.fault_step, self.fault_injected = int(state.step) + 1, None, True
    scale = state_lib.learning_rate_scales(state)["g"] * self.fault_lr_factor
    message = f"fault injected at step {step}: learning rates x{self.fault_lr_factor:g}"
    logging.warning("%s", message)
    if self.run.primary:
      self.say(message)
    self.save()
    return state_lib.with_learning_rate_scale(state, scale)

  def save(self) -> None:
    """Writes health.json, the readable copy of the monitor's latest state (atomically)."""
    if self.run.primary and self.enabled:
      utils.write_json(self.path, self.state_dict())
      faults.point("health:saved")

  def best_note(self) -> str:
    step = self.run.checkpointer.best_step()
    if step is None:
      return f"latest (step {self.run.checkpointer.latest_step()}); no metric tracked"
    return f"step {step} by {self.monitor.metric}"
