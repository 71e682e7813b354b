"""The command line as a user runs it: one-line errors, training, resume."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "mnist.py") + ":smoke"


def _run(
    args, devices: int = 1, timeout: int = 300, cwd: str = ROOT
) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run(
      [sys.executable, "-m", "gan.main", *args],
      capture_output=True,
      text=True,
      env=env,
      cwd=cwd,
      timeout=timeout,
      check=False,
  )


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr
  for fragment in fragments:
    assert fragment in errors[0]


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("--config.num_stpes=5", ("unknown config key", "num_stpes")),
        ("--config.num_steps=many", ("num_steps", "many")),
        ("--config.loss=nonsaturating", ("unknown loss",)),
    ],
)
def test_bad_config_is_one_line(tmp_path, override, fragments):
  _assert_one_line_error(
      _run(["--config", SMOKE, "--workdir", str(tmp_path), override]), *fragments
  )


def test_unknown_variant_is_one_line(tmp_path):
  config = os.path.join(ROOT, "experiments", "mnist.py") + ":smoke,bogus"
  result = _run(["--config", config, "--workdir", str(tmp_path / "run")])
  _assert_one_line_error(result, "unknown variant 'bogus'", "smoke, mlp")
  assert not os.path.exists(tmp_path / "run")


def test_config_by_full_path_from_another_directory(tmp_path, monkeypatch):
  # An experiment file that imports its base (`from experiments import mnist`) loads
  # from any directory: the installed package, not the repository as the working
  # directory, provides `experiments`. The config error proves the file was loaded.
  monkeypatch.delenv("PYTHONPATH", raising=False)
  config = os.path.join(ROOT, "experiments", "mnist_improved_gan.py") + ":smoke"
  result = _run(
      ["--config", config, "--workdir", str(tmp_path / "run"), "--config.num_stpes=5"],
      cwd=str(tmp_path),
  )
  _assert_one_line_error(result, "unknown config key", "num_stpes")


def test_batch_not_divisible_by_device_count(tmp_path):
  result = _run(
      ["--config", SMOKE, "--workdir", str(tmp_path), "--config.batch_size=15"], devices=2
  )
  _assert_one_line_error(result, "batch_size 15", "2 devices")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  _assert_one_line_error(
      _run(["--config", SMOKE, "--workdir", str(blocker / "run")]), "not writable"
  )


def test_mnist_missing_from_a_named_data_dir_is_one_line(tmp_path):
  wrong = f"--config.data_dir={tmp_path / 'wrong'}"
  result = _run(["--config", SMOKE, "--workdir", str(tmp_path / "run"), wrong])
  _assert_one_line_error(result, "'mnist' not found", str(tmp_path / "wrong"))
  assert "MNIST sample" not in result.stderr


def test_trains_offline_on_two_devices_and_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)  # nothing set: the bundled MNIST sample
  monkeypatch.setenv("HOME", str(tmp_path))
  first = _run(["--config", SMOKE, "--workdir", workdir, "--config.num_steps=10"], devices=2)
  assert first.returncode == 0, first.stderr
  assert first.stderr.count("5,000-image MNIST sample") == 1
  assert os.path.exists(os.path.join(workdir, "samples", "step_000010.png"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "10"))
  second = _run(["--config", SMOKE, "--workdir", workdir, "--config.num_steps=20"], devices=2)
  assert second.returncode == 0, second.stderr
  assert "Resuming from step 10" in second.stdout
  assert os.path.exists(os.path.join(workdir, "samples", "step_000020.png"))


def test_command_line_modules_share_their_flags():
  # gan.sweep and gan.seeds take gan.main's --config and --workdir: each defining
  # its own made importing two of them (as the test suite does) a DuplicateFlagError.
  code = "import gan.main, gan.sweep, gan.seeds; print('ok')"
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
  bad = subprocess.run(
      [sys.executable, "-m", "gan.seeds", "--config", SMOKE, "--workdir", "w", "--seeds", "0,x"],
      capture_output=True,
      text=True,
      cwd=ROOT,
      check=False,
  )
  _assert_one_line_error(bad, "--seeds")
