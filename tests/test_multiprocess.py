"""Multi-process training on JAX's distributed runtime, two CPU processes over loopback.

The processes talk through a coordinator on 127.0.0.1 (a free port, freed
when they exit) and Gloo collectives. The end-to-end test bounds its own time
and kills every process it started, whatever happens.
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gan import checkpoint, distributed, launch
from gan.evaluation import sharded
from gan.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "mnist.py") + ":smoke"
DEADLINE_S = 240  # for the whole end-to-end test; it takes ~1-2 minutes on 2 cores


def _popen(args, devices: int = 1, log=None) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-m", "gan.main", *args],
      cwd=ROOT,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
  )


def _wait(processes, deadline: float) -> None:
  for p in processes:
    p.wait(timeout=max(1.0, deadline - time.monotonic()))


def _params(workdir: str, step: int):
  state = checkpoint.Checkpointer(workdir, keep=3).restore(None, step=step)
  return state["g"]["params"], state["d"]["params"]


def test_detect_reads_cluster_launchers():
  assert distributed.detect({}) is None
  assert distributed.detect({"SLURM_STEP_NUM_TASKS": "1", "SLURM_JOB_ID": "7"}) is None
  assert distributed.detect({"SLURM_NTASKS": "4"}) is None  # an sbatch script, not srun's tasks
  assert distributed.detect({"SLURM_STEP_NUM_TASKS": "4"}) == "SLURM_STEP_NUM_TASKS"
  assert distributed.detect({"OMPI_COMM_WORLD_SIZE": "2"}) == "OMPI_COMM_WORLD_SIZE"
  assert distributed.detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})


def test_slurm_one_task_per_node_drives_all_its_gpus():
  one_per_node = {"SLURM_STEP_TASKS_PER_NODE": "1(x4)", "SLURM_GPUS_ON_NODE": "8"}
  assert distributed.slurm_local_device_ids(one_per_node) == list(range(8))
  one_per_gpu = {"SLURM_STEP_TASKS_PER_NODE": "8(x4)", "SLURM_GPUS_ON_NODE": "8"}
  assert distributed.slurm_local_device_ids(one_per_gpu) is None  # JAX's default: SLURM_LOCALID
  assert distributed.slurm_local_device_ids({"SLURM_STEP_TASKS_PER_NODE": "1(x4)"}) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"coordinator": "127.0.0.1:1", "num_processes": 2}, "together"),
        ({"coordinator": "127.0.0.1:1", "num_processes": 2, "process_id": 2}, "not in 0..1"),
        ({"coordinator": "127.0.0.1:1", "mode": "off"}, "contradicts"),
        ({"mode": "sometimes"}, "auto"),
    ],
)
def test_initialize_rejects_inconsistent_flags(kwargs, message, monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(ValueError, match=message):
    distributed.initialize(**kwargs)


def test_single_process_needs_no_setup():
  assert distributed.initialize(mode="off") is False
  assert distributed.is_primary()
  assert distributed.broadcast_from_primary(7) == 7
  tree = {"a": np.arange(3.0), "b": np.int32(1)}
  assert distributed.assert_same_everywhere(tree, "t") == distributed.fingerprint(tree)
  assert distributed.fingerprint(tree) != distributed.fingerprint({"a": np.arange(3.0), "b": 2})


def test_launcher_stops_on_bad_config(tmp_path, capsys):
  status = launch.launch(
      ["--config", SMOKE, "--workdir", str(tmp_path / "w"), "--config.num_stpes=3"], 2
  )
  assert status == 2
  err = capsys.readouterr().err
  # The first to fail is reported; the other is stopped if it has not failed yet too.
  assert re.search(r"\[\d\] error: unknown config key", err), err
  assert re.search(r"launch: process \d exited with 2", err), err


def test_two_processes_train_resume_and_match_two_devices(tmp_path, monkeypatch):
  """2 processes x 1 CPU device == 1 process x 2 simulated devices; killed and relaunched."""
  deadline = time.monotonic() + DEADLINE_S
  # No data_dir set anywhere: the bundled MNIST sample, fast to load.
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  common = [
      "--config",
      SMOKE,
      "--config.checkpoint_every=10",
      "--config.keep_checkpoints=5",
  ]
  multi, ref = str(tmp_path / "multi"), str(tmp_path / "ref")
  started = []
  try:
    # The reference: one process, two simulated devices, 30 steps uninterrupted.
    ref_log = open(tmp_path / "ref.log", "w")  # noqa: SIM115
    started.append(
        _popen(["--workdir", ref, *common, "--config.num_steps=30"], devices=2, log=ref_log)
    )
    # Two processes (the command of the docs), killed once their step-10 checkpoint is written.
    port = distributed.free_port()
    first = []
    for i in range(2):
      log = open(tmp_path / f"first{i}.log", "w")  # noqa: SIM115
      args = ["--workdir", multi, *common, "--config.num_steps=1000"]
      args += ["--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)]
      first.append(_popen(args, log=log))
    started += first
    committed = os.path.join(multi, "checkpoints", "10", "_CHECKPOINT_METADATA")
    while not os.path.exists(committed):
      assert time.monotonic() < deadline, "no step-10 checkpoint in time"
      assert all(p.poll() is None for p in first), (tmp_path / "first0.log").read_text()
      time.sleep(0.05)
    for p in first:
      p.send_signal(signal.SIGKILL)
    _wait(first, deadline)

    # Relaunched together by the local launcher; they resume and finish at step 30.
    second = subprocess.run(
        [sys.executable, "-m", "gan.launch", "--num_processes", "2", "--"]
        + ["--workdir", multi, *common, "--config.num_steps=30"],
        cwd=ROOT,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
        capture_output=True,
        text=True,
        timeout=max(1.0, deadline - time.monotonic()),
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    _wait(started[:1], deadline)
    assert started[0].returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
  finally:
    for p in started:
      if p.poll() is None:
        p.kill()
        p.wait()

  out = second.stdout
  resumed = re.findall(r"\[(\d)\] process \1/2: Resuming from step (\d+)", out)
  assert sorted(i for i, _ in resumed) == ["0", "1"], out
  assert len({s for _, s in resumed}) == 1 and int(resumed[0][1]) >= 10, out
  finished = re.findall(r"\[(\d)\] process \1/2: finished at step 30, parameters (\w+)", out)
  assert len(finished) == 2 and finished[0][1] == finished[1][1], out  # bit-identical replicas

  # One set of outputs: only process 0 wrote logs (each step after the resume once) and samples.
  resume_step = int(resumed[0][1])
  logged = [r["step"] for r in read_metrics(multi) if r["step"] > resume_step]
  assert logged == sorted(set(logged)) and logged[-1] == 30, logged
  assert "[1] train:" not in second.stderr and "[0] train:" in second.stderr
  assert os.path.exists(os.path.join(multi, "samples", "step_000030.png"))

  # The same numbers as one process driving two devices, to float tolerance.
  for a, b in zip(
      jax.tree.leaves(_params(multi, 30)), jax.tree.leaves(_params(ref, 30)), strict=True
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# Each process of `test_two_processes_share_evaluation_and_hold_the_same_statistics`: joins the
# run, extracts its share of 7 chunks of 40 "images" over its 2 devices, and saves what it holds.
_SHARE_SCRIPT = """
import sys
import numpy as np
from gan import distributed
distributed.initialize(coordinator=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import jax
from gan.evaluation import sharded
rng = np.random.default_rng(1)
w = rng.normal(size=(3, 5)).astype(np.float32)
images = rng.normal(size=(40, 3)).astype(np.float32)
extract = sharded.ShardedFeatures(lambda w, x: {"f": jax.numpy.tanh(x @ w)}, w)
made = []
def make_chunk(start, num):
  made.append(start)
  return images[start : start + num]
stats = sharded.share_stats(extract, make_chunk, 40, 6, "f", 4, keep=20)
one = sharded.share_stats(extract, make_chunk, 6, 6, "f", 4, keep=3)  # process 0: no chunk
assert one.count == 6 and one.features.shape == (3, 5)
np.savez(sys.argv[3], made=made, devices=len(extract.devices), count=stats.count,
         mean=stats.mean, cov=stats.cov, features=stats.features)
"""


def test_two_processes_share_evaluation_and_hold_the_same_statistics(tmp_path):
  """Feature statistics over two processes (2 CPU devices each): each extracts its own chunks,
  and after the all-gather both hold bit-identical statistics, those of one process alone."""
  port = distributed.free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=ROOT)
  processes = [
      subprocess.Popen(
          [sys.executable, "-c", _SHARE_SCRIPT, f"127.0.0.1:{port}", str(i), tmp_path / f"{i}.npz"],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=120)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in processes] == [0, 0], outs
  held = [dict(np.load(tmp_path / f"{i}.npz")) for i in range(2)]
  assert [h["made"].tolist() for h in held] == [[0, 6, 12], [18, 24, 30, 36, 0]]
  assert [int(h["devices"]) for h in held] == [2, 2]
  for key in ("count", "mean", "cov", "features"):  # bit-identical in both processes
    np.testing.assert_array_equal(held[0][key], held[1][key])

  # One process on 2 devices: the same moments (its float64 sums are added in another
  # order: equal to rounding) and exactly the same kept rows, 18 of them from process 0.
  rng = np.random.default_rng(1)
  w = rng.normal(size=(3, 5)).astype(np.float32)
  images = rng.normal(size=(40, 3)).astype(np.float32)
  fn = lambda w, x: {"f": jax.numpy.tanh(x @ w)}  # noqa: E731
  extract = sharded.ShardedFeatures(fn, w, jax.devices()[:2])
  alone = sharded.share_stats(extract, lambda s, n: images[s : s + n], 40, 6, "f", 4, keep=20)
  assert int(held[0]["count"]) == alone.count == 40
  np.testing.assert_allclose(held[0]["mean"], alone.mean, rtol=1e-12)
  np.testing.assert_allclose(held[0]["cov"], alone.cov, rtol=1e-10, atol=1e-15)
  np.testing.assert_array_equal(held[0]["features"], alone.features)
