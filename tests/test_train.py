"""The loop: outputs in the workdir, bit-identical resume, atomic checkpoints."""

import json
import os
import time

import jax
import numpy as np
import pytest

from gan import build, data, parallel, train, writers
from gan.checkpoint import Checkpointer
from gan.utils import ConfigError


@pytest.fixture
def toy_mnist(monkeypatch):
  """128 random 28x28 images instead of reading TFDS, so the loop runs in seconds."""
  rng = np.random.default_rng(0)
  split = data.Split(
      image=rng.integers(0, 256, (128, 28, 28, 1), dtype=np.uint8),
      label=rng.integers(0, 10, (128,), dtype=np.int32),
      source="toy",
  )
  monkeypatch.setattr(data, "load", lambda *args, **kwargs: split)


def _params(state):
  return jax.device_get(
      (
          state.g.params,
          state.d.params,
          state.g_ema,
          state.g.opt_state,
          state.d.opt_state,
          state.data_perm,
      )
  )


def test_writes_samples_metrics_and_checkpoints(smoke_config, toy_mnist, tmp_path):
  config = smoke_config
  config.num_steps, config.log_every, config.sample_every, config.checkpoint_every = 6, 2, 3, 3
  final = train.train_and_evaluate(config, str(tmp_path))
  assert int(final.step) == 6
  assert sorted(os.listdir(tmp_path / "samples")) == ["step_000003.png", "step_000006.png"]
  records = writers.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [2, 4, 6]
  assert all(np.isfinite(r["d/loss"]) and r["perf/images_per_s"] > 0 for r in records)
  times = [r["wall_time"] for r in records]  # Unix seconds: the curves against time
  assert times == sorted(times) and abs(times[-1] - time.time()) < 600
  assert Checkpointer(str(tmp_path), keep=3).latest_step() == 6
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 16
  assert os.listdir(tmp_path / "tensorboard")


def test_resumed_run_is_bit_identical_to_uninterrupted_run(smoke_config, toy_mnist, tmp_path):
  config = smoke_config
  config.num_steps, config.checkpoint_every = 8, 4
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

  config.num_steps = 4
  train.train_and_evaluate(config, str(tmp_path / "b"))
  config.num_steps = 8
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"))

  assert int(resumed.step) == 8
  for a, b in zip(
      jax.tree.leaves(_params(uninterrupted)), jax.tree.leaves(_params(resumed)), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  steps = [r["step"] for r in writers.read_metrics(str(tmp_path / "b"))]
  assert steps == sorted(steps) and steps[-1] == 8


def test_pmap_and_shard_map_loops_train_the_same_run(smoke_config, toy_mnist, tmp_path):
  # Four simulated devices: the same per-device step mapped two ways, plus a resume in the
  # other layout (checkpoints hold one host copy, whatever the layout).
  config = smoke_config
  config.num_steps, config.checkpoint_every = 6, 3
  config.parallel = "pmap"
  pmapped = train.train_and_evaluate(config, str(tmp_path / "pmap"))
  config.parallel = "shard_map"
  sharded = train.train_and_evaluate(config, str(tmp_path / "shard_map"))
  assert parallel.parallel_mode("auto") == "shard_map"  # one process
  config.num_steps = 3
  train.train_and_evaluate(config, str(tmp_path / "mixed"))
  config.num_steps, config.parallel = 6, "pmap"
  mixed = train.train_and_evaluate(config, str(tmp_path / "mixed"))
  for other in (sharded, mixed):
    for a, b in zip(
        jax.tree.leaves(_params(pmapped)), jax.tree.leaves(_params(other)), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  config.parallel = "vmap"
  with pytest.raises(ConfigError, match="unknown parallel='vmap'"):
    build.run(config, str(tmp_path / "d"))


def test_resume_skips_a_checkpoint_killed_mid_save(smoke_config, toy_mnist, tmp_path):
  config = smoke_config
  config.num_steps, config.checkpoint_every = 4, 4
  train.train_and_evaluate(config, str(tmp_path))
  # What a kill during the save of step 8 leaves behind: an unfinished temporary directory.
  partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\0" * 100)
  assert Checkpointer(str(tmp_path), keep=3).latest_step() == 4
  config.num_steps = 6
  final = train.train_and_evaluate(config, str(tmp_path))
  assert int(final.step) == 6
  assert Checkpointer(str(tmp_path), keep=3).latest_step() == 6
