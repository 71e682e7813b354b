"""Kills, signals, corruption and two writers: what each leaves behind, and the resumed run.

Runs train the toy 2D smoke config in subprocesses. A kill lands at a named
point (`gan.faults`, $JAXGAN_KILL_AT) instead of by timing luck; the killed run
is then run again, and its final checkpoint must equal an uninterrupted run's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import pytest

from gan import checkpoint, health, loop, runs

ENV = os.environ | {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "XLA_FLAGS": ""}
CLI = [sys.executable, "-m", "gan.main", "--config=experiments/toy2d.py:smoke"]
# A run hit by a 1,000x learning-rate spike at step 25: the health monitor sees the loss
# explode at step 30 (a checkpoint step) and rolls back to step 20 with halved rates.
SPIKE = {
    "log_every": 5,
    "checkpoint_every": 10,
    "inject_fault.step": 25,
    "inject_fault.lr_factor": 1000.0,
}
RUNNER = """
import json, sys
import ml_collections
from experiments import toy2d
from gan import train
config = toy2d.get_config("smoke")
for key, value in json.loads(sys.argv[2]).items():
  node = config
  *parents, leaf = key.split(".")
  for parent in parents:
    if parent not in node:
      node[parent] = ml_collections.ConfigDict()
    node = node[parent]
  node[leaf] = value
train.train_and_evaluate(config, sys.argv[1])
"""


def _train(workdir, settings, kill_at=None):
  env = ENV | ({"JAXGAN_KILL_AT": kill_at} if kill_at else {})
  command = [sys.executable, "-c", RUNNER, str(workdir), json.dumps(settings)]
  return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def _cli(workdir, *flags, kill_at=None):
  env = ENV | ({"JAXGAN_KILL_AT": kill_at} if kill_at else {})
  command = [*CLI, f"--workdir={workdir}", *flags]
  return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def _final(workdir):
  """The latest checkpoint's state (as restored: nested dicts of arrays) and its step."""
  ckpt = checkpoint.Checkpointer(str(workdir), keep=3)
  step = ckpt.latest_step()
  state = ckpt.restore(None, step)
  ckpt.close()
  return step, state


def _error_lines(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def spiked(tmp_path_factory):
  """An uninterrupted run through the spike and its rollback."""
  workdir = tmp_path_factory.mktemp("spiked")
  result = _train(workdir, SPIKE)
  assert result.returncode == 0, result.stderr[-2000:]
  events = health.read_events(str(workdir))
  assert [(e["step"], e["action"]) for e in events] == [(30, "rollback")]
  return workdir


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  """An uninterrupted run of the smoke config (40 steps, checkpoints at 20 and 40)."""
  workdir = tmp_path_factory.mktemp("plain")
  result = _cli(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.mark.parametrize(
    "kill_at",
    [
        "rollback:deleted",  # the later checkpoints deleted, the restored one not yet replaced
        "checkpoint:replace_deleted",  # the restored step's old checkpoint deleted too
        "rollback:saved",  # the rolled-back state saved, nothing after it yet
        "replacing:health.json@3",  # health.json written but not yet in place
        "checkpoint:saved@2",  # just after an ordinary checkpoint (step 20)
    ],
)
def test_a_kill_anywhere_resumes_to_the_uninterrupted_run(kill_at, spiked, tmp_path):
  killed = _train(tmp_path, SPIKE, kill_at=kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  # The step whose health action was the rollback (30) never became a checkpoint.
  on_disk = checkpoint.Checkpointer(str(tmp_path), keep=3).all_steps()
  assert 30 not in on_disk, on_disk
  if (tmp_path / "health.json").exists():
    json.loads((tmp_path / "health.json").read_text())  # never half written
  resumed = _train(tmp_path, SPIKE)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  step, state = _final(tmp_path)
  expected_step, expected = _final(spiked)
  assert step == expected_step == 40
  chex.assert_trees_all_equal(state, expected)


def test_sigterm_saves_the_step_and_the_rerun_finishes_the_run(plain, tmp_path):
  interrupted = _cli(tmp_path, kill_at="checkpoint:saved@1:TERM")  # SIGTERM at step 20
  assert interrupted.returncode == 128 + signal.SIGTERM, interrupted.stderr[-2000:]
  (line,) = _error_lines(interrupted)
  assert "SIGTERM at step 20" in line and "resume" in line
  assert checkpoint.Checkpointer(str(tmp_path), keep=3).latest_step() == 20
  assert _cli(tmp_path).returncode == 0
  chex.assert_trees_all_equal(_final(tmp_path), _final(plain))


def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_run_resumes_before_it(plain, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(plain, workdir)
  state_dir = workdir / "checkpoints" / "40" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(root, name)) // 2)
  (workdir / "eval.json").unlink()
  result = _cli(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "checkpoint 40 cannot be restored" in result.stderr
  assert (workdir / "checkpoints" / "40.corrupt").is_dir()
  chex.assert_trees_all_equal(_final(workdir), _final(plain))


def test_a_second_process_on_a_workdir_is_refused_and_a_dead_ones_lock_is_taken_over(
    plain, tmp_path
):
  workdir = tmp_path / "run"
  shutil.copytree(plain, workdir)
  held = runs.lock_workdir(str(workdir))
  try:
    result = _cli(workdir, "--config.num_steps=60")
  finally:
    held.close()
  assert result.returncode == 2
  (line,) = _error_lines(result)
  assert f"in use by process {os.getpid()}" in line
  # A process killed while holding the lock: the kernel releases it, the next run takes it.
  holder = subprocess.Popen(
      [sys.executable, "-c", f"from gan import runs; runs.lock_workdir({str(workdir)!r}); input()"],
      stdin=subprocess.PIPE,
  )
  try:
    deadline = time.monotonic() + 120
    while f"process {holder.pid}" not in (workdir / runs.LOCK).read_text():
      assert time.monotonic() < deadline, "the holder never took the lock"
      time.sleep(0.05)
  finally:
    holder.kill()
    holder.wait()
  runs.lock_workdir(str(workdir)).close()


def test_resuming_with_another_config_is_refused_in_one_line(plain, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(plain, workdir)
  saved = (workdir / "config.json").read_text()
  result = _cli(workdir, "--config.seed=1", "--config.num_steps=60")
  assert result.returncode == 2
  (line,) = _error_lines(result)
  assert "seed: 0 -> 1" in line and "--allow_config_change" in line
  assert (workdir / "config.json").read_text() == saved  # still the checkpoints' config
  assert _cli(workdir, "--config.num_steps=60").returncode == 0  # its length may change


def test_a_stopped_run_exits_non_zero_and_a_rerun_must_be_told_to_go_on(tmp_path):
  lr = ["--config.optim.g.lr=1e6", "--config.optim.d.lr=1e6"]  # diverges, every rollback
  stopped = _cli(tmp_path, *lr)
  assert stopped.returncode == 3, stopped.stderr[-2000:]
  (line,) = _error_lines(stopped)
  assert line.startswith("error: stopped: the health monitor stopped the run")
  record = json.loads((tmp_path / runs.STOPPED).read_text())
  saved = checkpoint.Checkpointer(str(tmp_path), keep=3).all_steps()
  assert record["step"] not in saved  # the diverged state was not saved
  again = _cli(tmp_path, *lr)
  assert again.returncode == 2
  (line,) = _error_lines(again)
  assert "--resume_stopped" in line
  told = _cli(tmp_path, *lr, "--resume_stopped")
  assert told.returncode == 3 and "stopped" in _error_lines(told)[0]  # it went on, and stopped


def test_a_second_sigint_interrupts_at_once():
  before = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers ignore SIGINT
  with loop.Interrupts() as interrupts:
    os.kill(os.getpid(), signal.SIGINT)
    assert interrupts.signum == signal.SIGINT  # noted for the loop, nothing raised
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before  # restored
