"""The health monitor: each detector on synthetic metric streams, and on runs broken on purpose."""

import json
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from experiments import mnist
from gan import health, loop, models, report, train, writers
from gan import state as state_lib


def _healthy(step, **overrides):
  m = {
      "d/loss": 1.3,
      "g/loss": 0.8,
      "d/real_acc": 0.6,
      "d/fake_acc": 0.6,
      "d/fake_prob": 0.4,
      "g/grad_norm": 1.0,
      "d/update_ratio": 1e-3,
      "g/update_ratio": 1e-3,
      "health/finite": 1.0,
      "health/diversity": 0.8,
  }
  return m | overrides


def _feed(monitor, records, start=300, every=10):
  events = []
  for i, record in enumerate(records):
    events += monitor.observe(start + i * every, record)
  return events


def _monitor(**overrides):
  return health.Monitor(overrides, metric="m/fcd", mode="min")


def test_healthy_stream_fires_nothing():
  assert _feed(_monitor(), [_healthy(0) for _ in range(50)]) == []


def test_discriminator_wins_needs_the_whole_window_and_fires_once():
  monitor = _monitor()
  records = [_healthy(0) for _ in range(5)]  # the G-gradient reference
  won = _healthy(0, **{"d/real_acc": 1.0, "d/fake_acc": 0.99, "g/grad_norm": 0.01})
  records += [won] * 4 + [_healthy(0)] + [won] * 12
  events = _feed(monitor, records)
  assert [e.detector for e in events] == ["discriminator_wins"]  # once per episode
  assert events[0].step == 300 + (5 + 4 + 1 + 5 - 1) * 10  # the interrupted window did not count
  assert events[0].evidence["g/grad_norm_reference"] == pytest.approx(1.0)


def test_discriminator_wins_on_rejected_samples_without_vanishing_gradient():
  won = _healthy(0, **{"d/real_acc": 1.0, "d/fake_acc": 1.0, "d/fake_prob": 1e-4})
  events = _feed(_monitor(), [_healthy(0)] * 5 + [won] * 5)
  assert [e.detector for e in events] == ["discriminator_wins"]


def test_a_detector_switched_off_never_fires():
  won = _healthy(0, **{"d/real_acc": 1.0, "d/fake_acc": 1.0, "d/fake_prob": 1e-4})
  records = [_healthy(0)] * 5 + [won] * 20
  assert [e.detector for e in _feed(_monitor(), records)] == ["discriminator_wins"]
  assert _feed(_monitor(discriminator_wins={"action": "off"}), records) == []


def test_warmup_silences_the_early_steps():
  won = _healthy(0, **{"d/real_acc": 1.0, "d/fake_acc": 1.0, "d/fake_prob": 0.0})
  collapsed = won | {"health/diversity": 0.0}
  assert _feed(_monitor(), [collapsed] * 15, start=10) == []  # steps 10..150 <= 200


def test_mode_collapse_from_diversity_and_from_class_coverage():
  monitor = _monitor()
  events = _feed(monitor, [_healthy(0, **{"health/diversity": 0.02})] * 5)
  assert [e.detector for e in events] == ["mode_collapse"]
  # A whole window of good records ends the episode with a `cleared` record of the same
  # test; a mixed window neither clears nor fires again.
  collapsed = _healthy(0, **{"health/diversity": 0.02})
  cleared = _feed(monitor, [_healthy(0)] * 3 + [collapsed] + [_healthy(0)] * 6, start=400)
  assert [(e.step, e.action, e.test) for e in cleared] == [(480, "cleared", "mode_collapse")]
  assert cleared[0].message == "mode collapse cleared" and cleared[0].since == 440
  assert monitor.quiet_since == 340  # a cleared record does not restart the remedy clock
  # One evaluation with too few classes fires, whatever the diversity records around it
  # say (they keep their own window), once per episode.
  monitor = _monitor()
  assert _feed(monitor, [_healthy(0)] * 3, start=300) == []
  assert monitor.observe_eval(1000, {"c/classes": 10, "c/real_classes": 10}) == []
  events = monitor.observe_eval(2000, {"c/classes": 3, "c/real_classes": 10})
  assert [e.detector for e in events] == ["mode_collapse"] and "3 classes" in events[0].message
  assert _feed(monitor, [_healthy(0)] * 3, start=2010) == []
  assert monitor.observe_eval(3000, {"c/classes": 4, "c/real_classes": 10}) == []  # same episode
  ended = monitor.observe_eval(4000, {"c/classes": 9, "c/real_classes": 10})
  assert [(e.action, e.test) for e in ended] == [("cleared", "mode_collapse:c/classes")]
  assert [e.action for e in monitor.observe_eval(5000, {"c/classes": 2, "c/real_classes": 10})] == [
      "log"
  ]


def test_divergence_on_nonfinite_values_explosions_and_huge_updates():
  monitor = _monitor()
  events = _feed(monitor, [_healthy(0, **{"health/finite": 0.0})] * 2)
  assert [(e.detector, e.action) for e in events] == [("divergence", "rollback")]
  monitor = _monitor()
  events = _feed(monitor, [_healthy(0)] * 10 + [_healthy(0, **{"g/loss": 50.0})] * 2)
  assert [e.detector for e in events] == ["divergence"] and "g/loss" in events[0].message
  monitor = _monitor()
  events = _feed(monitor, [_healthy(0, **{"d/update_ratio": 3.0})] * 2)
  assert [e.detector for e in events] == ["divergence"]
  # A discriminator loss going from ~0 to ~2 is not an explosion (medians floor at 1).
  small = [_healthy(0, **{"d/loss": 1e-4})] * 10 + [_healthy(0, **{"d/loss": 2.0})] * 2
  assert _feed(_monitor(), small) == []


def test_rollbacks_are_bounded_then_the_run_stops():
  monitor = _monitor(max_rollbacks=2, divergence={"window": 1})
  actions = []
  for i in range(3):
    actions += [e.action for e in monitor.observe(300 + i, _healthy(0, **{"health/finite": 0.0}))]
    monitor.reset_windows()
  assert actions == ["rollback", "rollback", "stop"]


def test_a_remedy_is_undone_after_quiet_steps():
  monitor = _monitor(remedy_steps=100)
  monitor.lr_scale, monitor.quiet_since = 0.25, 500  # two rollbacks, the last back to 500
  assert monitor.recovered(599) is None
  assert monitor.recovered(600) == 0.5
  assert monitor.recovered(650) is None  # the next step up needs another quiet spell
  monitor._event("divergence", 680, {}, "again", since=660)  # any event restarts the clock
  assert monitor.recovered(700) is None and monitor.recovered(780) == 1.0
  assert monitor.recovered(10_000) is None  # never above the starting rates
  permanent = _monitor(remedy_steps=0)
  permanent.lr_scale = 0.5
  assert permanent.recovered(10**6) is None


def test_plateau_early_stops_after_patience_evaluations():
  monitor = _monitor(plateau={"patience": 2})
  fired = [monitor.observe_eval(s, {"m/fcd": v}) for s, v in enumerate([5.0, 4.0, 4.5, 4.1])]
  assert [len(f) for f in fired] == [0, 0, 0, 1]
  assert fired[-1][0].action == "early_stop" and fired[-1][0].evidence["best"] == 4.0


def test_settings_are_checked():
  with pytest.raises(ValueError, match="unknown setting health.divergence.windw"):
    health.Monitor({"divergence": {"windw": 3}})
  with pytest.raises(ValueError, match="action"):
    health.Monitor({"plateau": {"action": "panic"}})


def test_monitor_state_survives_a_resume():
  monitor = _monitor(plateau={"patience": 3})
  monitor.observe_eval(1, {"m/fcd": 2.0})
  monitor.observe_eval(2, {"m/fcd": 3.0})
  monitor.lr_scale, monitor.rollbacks = 0.5, 1
  assert len(_feed(monitor, [_healthy(0, **{"health/diversity": 0.02})] * 5)) == 1
  other = _monitor(plateau={"patience": 3})
  other.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
  assert other.state_dict() == monitor.state_dict()
  assert other.active == {"mode_collapse"}  # the open episode: neither repeated nor lost
  assert _feed(other, [_healthy(0, **{"health/diversity": 0.02})] * 5, start=400) == []
  assert [e.action for e in _feed(other, [_healthy(0)] * 5, start=500)] == ["cleared"]


def test_signal_functions():
  w = np.diag([3.0, 2.0, 1.0])
  sigmas = health.top_singular_values({"conv": {"kernel": w.reshape(1, 1, 3, 3)}, "b": np.ones(3)})
  assert sigmas == {"conv/kernel": pytest.approx(3.0)}
  for shape in [(40, 7), (7, 40), (3, 3, 4, 6)]:  # wide, tall and conv kernels: the SVD's value
    w = np.random.default_rng(0).normal(size=shape)
    expected = np.linalg.norm(w.reshape(-1, shape[-1]), 2)
    assert health.top_singular_values({"kernel": w}) == {"kernel": pytest.approx(expected)}
  real = jax.random.normal(jax.random.PRNGKey(0), (32, 8))
  other = jax.random.normal(jax.random.PRNGKey(1), (32, 8))
  assert 0.8 < float(health.diversity_ratio(real, other)) < 1.25
  assert float(health.diversity_ratio(real, jnp.tile(real[:1], (32, 1)))) < 1e-3


def test_learning_rate_scale_is_set_in_the_optimizer_state():
  config = mnist.get_config("smoke")
  G, D = models.build(config.model, axis_name=None)
  state = state_lib.create(config, G, D, (28, 28, 1), 64)
  assert state_lib.learning_rate_scales(state) == {"g": 1.0, "d": 1.0}
  halved = state_lib.with_learning_rate_scale(state, 0.5)
  assert state_lib.learning_rate_scales(halved) == {"g": 0.5, "d": 0.5}
  grads = jax.tree.map(jnp.ones_like, state.g.params)
  full, _ = state.g.tx.update(grads, state.g.opt_state, state.g.params)
  half, _ = halved.g.tx.update(grads, halved.g.opt_state, halved.g.params)
  np.testing.assert_allclose(jax.tree.leaves(half)[0], 0.5 * jax.tree.leaves(full)[0], rtol=1e-6)


# Short versions of the broken experiments (smoke-sized models, real MNIST digits:
# TFDS_DATA_DIR's or the bundled 5,000-image sample), 300 steps, logged every 10.
@pytest.mark.parametrize(
    "variant, expected",
    [
        ("smoke", set()),
        ("smoke,broken_d_wins", {"discriminator_wins"}),
        ("smoke,broken_collapse", {"mode_collapse"}),
        ("smoke,broken_diverge", {"divergence"}),
        ("smoke,broken_spike", {"divergence"}),
    ],
)
def test_the_matching_detector_fires_on_each_broken_run(variant, expected, tmp_path):
  config = mnist.get_config(variant)
  config.num_steps, config.log_every = 300, 10
  config.checkpoint_every = config.sample_every = 100
  if variant.endswith("spike"):
    config.inject_fault.step = 150
    config.health.remedy_steps = 100  # the halved rates come back 100 quiet steps later
  if variant.endswith("diverge"):  # the run ends stopped, with its last state unsaved
    with pytest.raises(loop.RunStoppedError) as stopped:
      train.train_and_evaluate(config, str(tmp_path))
    final = stopped.value.state
    assert (tmp_path / "stopped.json").exists()
  else:
    final = train.train_and_evaluate(config, str(tmp_path))
  events = health.read_events(str(tmp_path))
  assert {e["detector"] for e in events} == expected, events
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(final)))
  verdict = report.verdict(report.load(str(tmp_path)))
  if variant.endswith("diverge"):  # rolled back with lower learning rates, then stopped
    assert [e["action"] for e in events] == ["rollback"] * 3 + ["stop"]
    assert state_lib.learning_rate_scales(final) == {"g": 0.125, "d": 0.125}
    assert verdict.startswith("Unhealthy") and "stopped" in verdict
  if variant.endswith("spike"):  # one rollback past the fault, then healthy to the end
    assert [e["action"] for e in events] == ["rollback"]
    assert events[0]["step"] <= 170  # the step-150 fault is seen within two log records
    assert int(final.step) == 300
    assert state_lib.learning_rate_scales(final) == {"g": 1.0, "d": 1.0}
    with open(tmp_path / "health.json") as f:
      assert json.load(f)["fault_injected"]
    with open(tmp_path / "metrics.jsonl") as f:
      last = [json.loads(line) for line in f][-1]
    assert last["step"] == 300 and last["d/loss"] < 5 and last["g/loss"] < 10, last
    assert verdict.startswith("Recovered: divergence at step")


def test_resume_takes_the_learning_rates_from_the_checkpoint(tmp_path):
  # A rollback halves the rates; if health.json then disagrees with the checkpoint (a
  # crash between the two writes), the resumed run follows the checkpoint.
  config = mnist.get_config("smoke,broken_spike")
  config.num_steps, config.log_every, config.checkpoint_every = 50, 5, 10
  config.inject_fault.step = 33
  train.train_and_evaluate(config, str(tmp_path))
  assert [e["action"] for e in health.read_events(str(tmp_path))] == ["rollback"]
  path = tmp_path / "health.json"
  saved = json.loads(path.read_text())
  assert saved["lr_scale"] == 0.5
  path.write_text(json.dumps(saved | {"lr_scale": 1.0}))
  config.num_steps = 60
  final = train.train_and_evaluate(config, str(tmp_path))
  assert state_lib.learning_rate_scales(final) == {"g": 0.5, "d": 0.5}
  assert json.loads(path.read_text())["lr_scale"] == 0.5


def _fake_run(workdir, events=()):
  os.makedirs(workdir / "samples")
  (workdir / "config.json").write_text(
      json.dumps({"evals": {"c": {}}, "best_checkpoint": {"metric": "c/fcd", "mode": "min"}})
  )
  with open(workdir / "metrics.jsonl", "w") as f:
    for step in range(10, 110, 10):
      f.write(json.dumps({"step": step} | _healthy(step)) + "\n")
      if step % 50 == 0:
        f.write(json.dumps({"step": step, "c/fcd": 100.0 / step}) + "\n")
  for event in events:
    health.write_event(str(workdir), event)
  for step in (50, 100):
    os.makedirs(workdir / "checkpoints" / str(step))
    writers.save_image_grid(
        np.zeros((4, 8, 8, 1)), str(workdir / "samples" / f"step_{step:06d}.png")
    )


def test_report_of_a_healthy_run(tmp_path):
  _fake_run(tmp_path)
  # The caller's pyplot backend (a notebook's is "inline") is left alone: switching it to Agg
  # stopped a notebook's figures from showing.
  saved = matplotlib.get_backend()
  matplotlib.use("svg")
  try:
    html_path, summary_path = report.write(str(tmp_path))
    assert matplotlib.get_backend() == "svg"
  finally:
    matplotlib.use(saved)
  with open(html_path) as f:
    page = f.read()
  assert "Healthy: no detector fired in 100 steps." in page
  assert page.count("data:image/png;base64,") >= 4  # signals, metrics, two sample grids
  assert "Step 100: c/fcd = 1" in page  # the best checkpoint and why
  with open(summary_path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_names_the_failure(tmp_path, capsys):
  event = health.Event(70, "divergence", {"finite": False}, "log", "training diverges", 60)
  _fake_run(tmp_path, [event])
  report.main([str(tmp_path)])
  out = capsys.readouterr().out
  assert out.startswith("Unhealthy after 100 steps: divergence at step 70")
  assert "action: log" in out
  # The same failure, rolled back, and the run trained on without another event.
  rolled_back = {**event.as_json(), "action": "rollback"}
  assert report.verdict({**report.load(str(tmp_path)), "events": [rolled_back]}).startswith(
      "Recovered: divergence at step 70"
  )
  with pytest.raises(SystemExit):
    report.main([str(tmp_path / "nowhere")])


def test_report_tells_a_warning_that_cleared_from_one_still_open(tmp_path):
  warned = health.Event(30, "mode_collapse", {}, "log", "mode collapse: samples alike", 10)
  cleared = health.Event(50, "mode_collapse", {}, "cleared", "mode collapse cleared", 50)
  _fake_run(tmp_path, [warned, cleared])
  loaded = report.load(str(tmp_path))
  assert report.verdict(loaded) == (
      "Healthy at step 100: every warning has cleared. Warned: mode collapse at step 30 "
      "(first: mode collapse: samples alike; action: log; cleared at step 50)."
  )
  # Without its `cleared` record (or with one of another test) the warning is still open.
  other = {**cleared.as_json(), "test": "mode_collapse:c/classes"}
  for events in ([warned.as_json()], [warned.as_json(), other]):
    text = report.verdict({**loaded, "events": events})
    assert text.startswith("Unhealthy after 100 steps: mode collapse at step 30"), text
    assert "open since step 30" in text
  # Records written before tests were named pair by detector.
  old = [{k: v for k, v in e.as_json().items() if k != "test"} for e in (warned, cleared)]
  assert report.verdict({**loaded, "events": old}).startswith("Healthy at step 100")
  # A cleared warning beside a rollback: the run recovered.
  rolled = health.Event(70, "divergence", {}, "rollback", "training diverges", 60).as_json()
  recovered = report.verdict({**loaded, "events": [warned.as_json(), cleared.as_json(), rolled]})
  assert recovered.startswith("Recovered: mode collapse at step 30"), recovered
  assert "divergence at step 70" in recovered and "no further event" in recovered
  # A rollback ends the warnings open before it (the monitor forgets them and would fire
  # again); a warning after the last rollback that cleared is named.
  later = [{**e.as_json(), "step": e.step + 50} for e in (warned, cleared)]
  for events in ([warned.as_json(), rolled], [rolled, *later]):
    text = report.verdict({**loaded, "events": events})
    assert text.startswith("Recovered: mode collapse at step"), text
  assert "rolled back at step 70" in report.verdict(
      {**loaded, "events": [warned.as_json(), rolled]}
  )
  assert "no warning left open" in text
  # A warning fired again after a resume is closed by the same cleared record.
  again = {**warned.as_json(), "step": 40}
  assert report.verdict(
      {**loaded, "events": [warned.as_json(), again, cleared.as_json()]}
  ).startswith("Healthy at step 100")
  # A plateau's early stop beside a cleared warning: healthy, and the stop is named.
  plateau = health.Event(90, "plateau", {}, "early_stop", "plateau: c/fcd stalled", 90).as_json()
  text = report.verdict({**loaded, "events": [warned.as_json(), cleared.as_json(), plateau]})
  assert text.startswith("Healthy at step 100") and "Stopped at step 90" in text, text
