"""Bad input ends in one line on stderr and exit status 2, never a traceback (issue 27, item 8).

The range checks (`gan.validate`) run in-process, one case per key; the command
lines run in subprocesses, one per path through them: a config that does not
load, a setting out of range, a run directory in the way, a checkpoint of
another config, a run without a checkpoint, a read-only run directory.
"""

import importlib
import json
import math
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from experiments import mnist, toy2d
from gan import build, methods, report, runs, utils, validate
from gan import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "mnist.py") + ":smoke"
EXPERIMENTS = (
    "mnist",
    "cifar10",
    "cifar10_dcgan",
    "cifar10_cgan_pd",
    "cifar10_shared_trunk",
    "cifar10_triple_gan",
    "mnist_improved_gan",
    "mnist_triple_gan",
    "stacked_mnist",
    "toy2d",
)


def _run(module: str, *args: str, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
      [*wrapper, sys.executable, "-m", module, *args],
      capture_output=True,
      text=True,
      env=env,
      cwd=ROOT,
      timeout=300,
      check=False,
  )


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
  assert result.returncode == 2, result.stderr
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0]


# --- Every shipped config passes; each range is enforced. ---


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_configs_validate(name):
  module = importlib.import_module(f"experiments.{name}")
  for variant in ("", *module.VARIANTS):
    validate.check(module.get_config(variant))


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
  *path, name = key.split(".")
  node = config
  for part in path:
    node = node[part]
  with node.ignore_type():
    node[name] = value


@pytest.mark.parametrize(
    "experiment, key, value, allowed",
    [
        ("mnist:smoke", "batch_size", 0, ">= 1"),
        ("mnist:smoke", "num_steps", 0, ">= 1"),
        ("mnist:smoke", "n_critic", 0, ">= 1"),
        ("mnist:smoke", "model.z_dim", 0, ">= 1"),
        ("mnist:smoke", "num_samples", 0, ">= 1"),
        ("mnist:smoke", "log_every", 0, ">= 1"),
        ("mnist:smoke", "sample_every", -5, ">= 1"),
        ("mnist:smoke", "checkpoint_every", 2.5, "an integer"),
        ("mnist:smoke", "keep_checkpoints", 0, ">= 1"),
        ("mnist:smoke", "best_checkpoint.mode", "bogus", "'min', 'max'"),
        ("mnist:smoke", "seed", -1, ">= 0"),
        ("mnist:smoke", "optim.g.lr", -2e-4, "> 0"),
        ("mnist:smoke", "optim.d.lr", math.inf, "finite number > 0"),
        ("mnist:smoke", "optim.d.lr", "fast", "finite number > 0"),
        ("mnist:smoke", "optim.g.b1", 1.0, "[0, 1)"),
        ("mnist:smoke", "optim.d.b2", -0.1, "[0, 1)"),
        ("mnist:smoke", "ema_decay", 1.5, "[0, 1]"),
        ("mnist:smoke", "label_smoothing", 1.0, "[0, 1)"),
        ("mnist:smoke", "r1_gamma", -1.0, ">= 0"),
        ("mnist:smoke", "r1_every", 0, ">= 1"),
        ("mnist:smoke", "model.d.dropout_rate", 1.0, "[0, 1)"),
        ("mnist:smoke", "model.g.width", 0, ">= 1"),
        ("mnist:smoke", "health.divergence.window", 0, ">= 1"),
        ("mnist:smoke", "health.mode_collapse.action", "panic", "'rollback'"),
        ("mnist:smoke", "health.remedy_lr_factor", 0.0, "(0, 1]"),
        ("mnist:", "evals.mnist_cnn.every", 0, ">= 1"),
        ("mnist:", "evals.mnist_cnn.num_samples", 0, ">= 1"),
        ("mnist_triple_gan:smoke", "semi.alpha", 1.5, "[0, 1]"),
        ("mnist_triple_gan:smoke", "semi.labels_per_class", 0, ">= 1"),
        ("mnist_triple_gan:smoke", "semi.classifier_ema_decay", -0.1, "[0, 1]"),
        ("mnist_triple_gan:smoke", "optim.c.lr", 0.0, "> 0"),
        ("cifar10_triple_gan:smoke", "optim.c.b1_rampdown.epochs", 0, ">= 1"),
        ("mnist_improved_gan:smoke", "semi.init_batch", 0, ">= 1"),
    ],
)
def test_out_of_range_setting_is_named_with_its_range(experiment, key, value, allowed):
  name, variant = experiment.split(":")
  config = importlib.import_module(f"experiments.{name}").get_config(variant)
  _set(config, key, value)
  with pytest.raises(utils.ConfigError) as error:
    validate.check(config)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{key}=") and allowed in message, message


@pytest.mark.parametrize(
    "key", ["optim.g.lr", "ema_decay", "semi.alpha", "health.divergence.max_loss", "r1_gamma"]
)
def test_nan_is_rejected_wherever_it_is(key):
  config = importlib.import_module("experiments.mnist_triple_gan").get_config("smoke")
  if key == "r1_gamma":
    with config.unlocked():
      config.r1_gamma = 0.0
  _set(config, key, math.nan)
  with pytest.raises(utils.ConfigError, match=f"^{key}=nan: a setting cannot be NaN"):
    validate.check(config)


def test_nan_in_a_swept_value_is_rejected():
  config = mnist.get_config("smoke")
  config.sweep.params = {"optim/g/lr,optim/d/lr": (2e-4, math.nan)}
  with pytest.raises(utils.ConfigError, match="cannot be NaN"):
    validate.check(config)


def test_a_sweep_checks_every_member_before_building_any(tmp_path):
  from gan import sweep  # noqa: PLC0415  (defines gan.main's flags)

  config = mnist.get_config("smoke")
  config.sweep.params = {"optim/g/lr,optim/d/lr": (2e-4, -1.0)}
  with pytest.raises(utils.ConfigError, match=r"^member 1 .*optim\.[gd]\.lr=-1.0: must be"):
    sweep.train_population(config, str(tmp_path / "sweep"))
  assert not (tmp_path / "sweep").exists()


def test_other_structural_mistakes_are_config_errors():
  config = mnist.get_config("smoke")
  with config.unlocked():
    config.health.divergence.patience = 3  # a plateau setting under divergence
  with pytest.raises(utils.ConfigError, match="unknown setting health.divergence.patience"):
    validate.check(config)
  config = mnist.get_config("smoke")
  with config.unlocked():
    config.optim.g.eps, config.optim.g.eps_root = 0.0, 0.0
  with pytest.raises(utils.ConfigError, match="optim.g.eps and optim.g.eps_root are both 0"):
    validate.check(config)
  config = mnist.get_config("smoke")
  with config.unlocked():
    del config.num_steps
  with pytest.raises(utils.ConfigError, match="the config has no num_steps"):
    validate.check(config)
  with pytest.raises(utils.ConfigError, match="is a dict, not an ml_collections.ConfigDict"):
    validate.check(mnist.get_config("smoke").to_dict())


def test_things_in_the_way_of_a_run_directory(tmp_path):
  validate.check_run_dir(str(tmp_path))
  (tmp_path / "samples").write_text("")
  with pytest.raises(utils.ConfigError, match="samples is a file"):
    validate.check_run_dir(str(tmp_path))
  (tmp_path / "samples").unlink()
  (tmp_path / "health.json").mkdir()
  with pytest.raises(utils.ConfigError, match="health.json is a folder"):
    validate.check_run_dir(str(tmp_path))


def test_config_diff_is_one_line():
  old, new = mnist.get_config("smoke"), mnist.get_config("smoke,mlp")
  assert validate.config_diff(old, old) == ""
  new.model.z_dim = 64
  diff = validate.config_diff(json.loads(json.dumps(old.to_dict())), new)
  assert "model.d.depth: unset -> 2" in diff and "more" in diff
  assert "\n" not in diff
  assert "model.d.widths" not in diff  # a tuple read back from JSON as a list is no change


# --- Reading what a run wrote. ---


def test_a_partial_last_line_is_skipped_with_a_warning(tmp_path, capsys):
  records = [{"step": s, "d/loss": 1.3, "g/loss": 0.7, "wall_time": 1.0 + s} for s in (5, 10)]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records) + '{"step": 15, "d/lo')
  report.main([str(tmp_path)])
  err = capsys.readouterr().err.splitlines()
  assert err == [f"warning: skipped 1 partial line(s) of {tmp_path}/metrics.jsonl (line 3)"]
  assert (tmp_path / "report.html").exists()


def test_report_on_an_unwritable_run_directory(tmp_path, monkeypatch, capsys):
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 5, "d/loss": 1.0}) + "\n")

  def read_only(path, mode="r", *args, **kwargs):
    if set(mode) & set("wax+"):
      raise PermissionError(13, "Permission denied", str(path))
    return open(path, mode, *args, **kwargs)

  monkeypatch.setattr(report, "open", read_only, raising=False)
  with pytest.raises(SystemExit) as exit_:
    report.main([str(tmp_path)])
  assert exit_.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
      f"error: {tmp_path}/summary.png: Permission denied"
  ]


# --- The command lines, each path once. ---


def test_config_file_that_does_not_load(tmp_path):
  syntax = tmp_path / "syntax.py"
  syntax.write_text("def get_config(:\n")
  _assert_one_line_error(
      _run("gan.main", "--config", str(syntax), "--workdir", str(tmp_path / "a")),
      f"config file {syntax}, line 1",
  )
  returns_dict = tmp_path / "returns_dict.py"
  returns_dict.write_text("def get_config():\n  return {'seed': 0}\n")
  _assert_one_line_error(
      _run("gan.main", "--config", str(returns_dict), "--workdir", str(tmp_path / "a")),
      "is a dict, not an ml_collections.ConfigDict",
  )


def test_setting_out_of_range_on_the_command_line(tmp_path):
  result = _run(
      "gan.main", "--config", SMOKE, "--workdir", str(tmp_path / "a"), "--config.n_critic=0"
  )
  _assert_one_line_error(result, "n_critic=0: must be an integer >= 1")
  assert not (tmp_path / "a").exists()  # refused before anything was written


def test_samples_folder_being_a_file(tmp_path):
  (tmp_path / "samples").write_text("")
  _assert_one_line_error(
      _run("gan.main", "--config", SMOKE, "--workdir", str(tmp_path)), "samples is a file"
  )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A toy-2D run directory with an untrained step-0 checkpoint (no training: fast)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = toy2d.get_config("smoke")
  method = methods.get(config)
  nets = methods.build_networks(config, step_lib.AXIS)
  split, arrays = build.data(config, method, workdir)
  checkpointer = runs.checkpointer(workdir, config)
  checkpointer.save(build.initial_state(config, method, nets, split, arrays), config)
  checkpointer.close()
  runs.write_config(config, workdir)
  return workdir


def test_resuming_with_a_config_the_checkpoint_does_not_fit(run_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  toy = os.path.join(ROOT, "experiments", "toy2d.py") + ":smoke"
  result = _run("gan.main", "--config", toy, "--workdir", workdir, "--config.model.z_dim=3")
  _assert_one_line_error(result, f"{workdir} holds a run of another config (model.z_dim: 16 -> 3)")
  # Told to resume anyway, the checkpoint itself is checked before anything is restored.
  flags = ("--config.model.z_dim=3", "--allow_config_change")
  result = _run("gan.main", "--config", toy, "--workdir", workdir, *flags)
  _assert_one_line_error(
      result,
      f"the checkpoint in {workdir} (step 0) does not match this config (model.z_dim: 16 -> 3)",
  )


def test_run_without_a_checkpoint(run_dir, tmp_path):
  shutil.copy(os.path.join(run_dir, "config.json"), tmp_path)
  no_checkpoint = f"no checkpoint in {tmp_path}/checkpoints"
  _assert_one_line_error(_run("gan.evaluate", "--workdir", str(tmp_path)), no_checkpoint)
  out = str(tmp_path / "x.npz")
  _assert_one_line_error(
      _run("gan.sample", "--workdir", str(tmp_path), "--out", out), no_checkpoint
  )
  assert os.listdir(tmp_path) == ["config.json"]  # a reader creates nothing


def _read_only(path: str) -> tuple[str, ...]:
  """A command prefix that runs the command with `path` mounted read-only (in its own mount
  namespace, so nothing changes outside it)."""
  return (
      "unshare",
      "--mount",
      "--map-root-user",
      "sh",
      "-c",
      'mount --bind -o ro "$0" "$0" && exec "$@"',
      path,
  )


@pytest.fixture(scope="module")
def read_only_mounts():
  probe = subprocess.run([*_read_only(ROOT), "true"], capture_output=True, check=False)
  if shutil.which("unshare") is None or probe.returncode:
    pytest.skip("no read-only bind mounts here (unshare --mount --map-root-user)")


@pytest.mark.usefixtures("read_only_mounts")
def test_read_only_run_directory(run_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "d/loss": 1.0}) + "\n")
  ro = _read_only(workdir)
  _assert_one_line_error(
      _run("gan.evaluate", "--workdir", workdir, wrapper=ro),
      f"{workdir}/eval.json: Read-only file system",
  )
  _assert_one_line_error(
      _run("gan.report", workdir, wrapper=ro), f"{workdir}/summary.png: Read-only file system"
  )
  out = os.path.join(workdir, "x.npz")
  _assert_one_line_error(
      _run("gan.sample", "--workdir", run_dir, "--num", "4", "--out", out, wrapper=ro),
      f"{out}: Read-only file system",
  )
