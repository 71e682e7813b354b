"""Checkpoint retention: the latest N always, plus the best N by a metric, in both directions."""

import flax
import jax.numpy as jnp
import ml_collections
import pytest

from gan.checkpoint import Checkpointer


@flax.struct.dataclass
class _State:
  step: jnp.ndarray


def _save_all(workdir, scores, **kwargs):
  ckpt = Checkpointer(str(workdir), **kwargs)
  config = ml_collections.ConfigDict({"seed": 0})
  for step, score in scores:
    metrics = None if score is None else {"eval/x": score, "eval/other": 0.0}
    ckpt.save(_State(jnp.int32(step)), config, metrics)
  ckpt.close()
  return Checkpointer(str(workdir), **kwargs)


SCORES = [(1, None), (2, 5.0), (3, 1.0), (4, 3.0), (5, None), (6, 3.0), (7, None)]


def test_best_lowest_and_latest_are_kept(tmp_path):
  ckpt = _save_all(tmp_path, SCORES, keep=1, best_metric="eval/x", best_mode="min")
  assert ckpt.all_steps() == [3, 7]
  assert ckpt.best_step() == 3 and ckpt.latest_step() == 7


def test_best_highest_with_ties_keeps_the_later(tmp_path):
  ckpt = _save_all(tmp_path, SCORES, keep=2, best_metric="eval/x", best_mode="max", keep_best=2)
  # 5.0 at step 2, then 3.0 at steps 4 and 6 (tie: the later is kept); latest two: 6, 7.
  assert ckpt.all_steps() == [2, 6, 7]
  assert ckpt.best_step() == 2


def test_nan_scores_rank_last_and_no_metric_keeps_only_latest(tmp_path):
  scores = [(1, 2.0), (2, float("nan")), (3, None)]
  ckpt = _save_all(tmp_path / "nan", scores, keep=1, best_metric="eval/x", best_mode="min")
  assert ckpt.all_steps() == [1, 3] and ckpt.best_step() == 1
  plain = _save_all(tmp_path / "plain", SCORES, keep=2)
  assert plain.all_steps() == [6, 7] and plain.best_step() is None


def test_keep_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match="latest is always kept"):
    Checkpointer(str(tmp_path), keep=0)
