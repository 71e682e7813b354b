"""gan.curves: a metric's learning curves over runs, against step and training time."""

import json

import numpy as np
import pytest

from gan import curves


def _write(workdir, records):
  workdir.mkdir()
  with open(workdir / "metrics.jsonl", "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return str(workdir)


def test_training_hours_skip_the_pause_of_a_resume_and_the_last_record_of_a_step_wins(tmp_path):
  hour = 3600.0
  run = _write(
      tmp_path / "run",
      [
          {"step": 100, "e/err": 0.5, "wall_time": 1 * hour, "start_time": 0.0},
          {"step": 200, "e/err": 0.4, "wall_time": 2 * hour},
          {"step": 300, "e/err": 0.9, "wall_time": 3 * hour},  # killed after this, before its
          # checkpoint; resumed 10 hours later from step 200 and redone (the last record wins)
          {"step": 300, "e/err": 0.3, "wall_time": 13.5 * hour, "start_time": 13 * hour},
          {"step": 400, "d/loss": 1.0, "wall_time": 14 * hour},  # not the metric
      ],
  )
  c = curves.curve(run, "e/err")
  np.testing.assert_array_equal(c["steps"], [100, 200, 300])
  np.testing.assert_allclose(c["values"], [0.5, 0.4, 0.3])
  # 3 hours in the first process, then half an hour in the second: the 10-hour pause is out.
  np.testing.assert_allclose(c["hours"], [1.0, 2.0, 3.5])
  assert curves.training_hours(curves.writers.read_metrics(run))[400] == pytest.approx(4.0)


def test_the_command_prints_a_table_and_draws_both_panels(tmp_path, capsys):
  a = _write(
      tmp_path / "a", [{"step": s, "m": 1 / s, "wall_time": s, "start_time": 0} for s in (1, 2, 4)]
  )
  b = _write(tmp_path / "b", [{"step": 5, "other": 1.0, "wall_time": 9.0, "start_time": 0}])
  out = tmp_path / "fig" / "m.png"
  curves.main(["m", a, f"{b}=second", "--out", str(out)])
  printed = capsys.readouterr().out
  assert "| a | 4 | 0.25 | 0.25 (4) | 0.00 |" in printed
  assert "| second | no m yet |" in printed
  assert out.stat().st_size > 1000
  with pytest.raises(SystemExit, match="no metrics.jsonl"):
    curves.main(["m", str(tmp_path / "missing")])
