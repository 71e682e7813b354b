"""Test setup: the CPU platform with four simulated devices, whatever the host has.

Multi-device code is tested on one CPU, on a GPU host too: the suite selects
the CPU platform (JAX_PLATFORMS=cpu, inherited by the processes tests start)
instead of taking JAX's default backend. XLA reads XLA_FLAGS when its backend
starts, so this runs before any test imports JAX computations. Tests that need
fewer devices pass a subset. The accelerator tests (tests/test_devices.py)
select the accelerator explicitly, in processes of their own.
"""

import os

SIMULATED_DEVICES = 4
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={SIMULATED_DEVICES}",
    ]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the session: its pytest-xdist workers and the
# processes tests start (training CLIs, kill-and-resume runs) inherit it, so a program that
# another process already compiled (the same smoke step, by its HLO) is read, not compiled
# again. Made by the process that starts the session, removed when it ends (a session
# killed outright leaves it in the temporary directory). No size limit: with one, JAX
# locks the folder and reads every entry's size and access time on each write; a session
# writes thousands of entries, so the suite's time grew with the square of their number
# (benchmarks/README.md, "The test suite"). Without the lock a reader may catch an entry while
# another process writes it; JAX then treats it as a miss (a warning) and compiles.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # noqa: E402

  _XLA_CACHE = tempfile.mkdtemp(prefix="jaxgan-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
else:
  _XLA_CACHE = None

import gc  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from experiments import mnist  # noqa: E402


@pytest.fixture
def smoke_config():
  """The MNIST smoke config, unlocked so tests can adjust it."""
  return mnist.get_config("smoke")


@pytest.fixture(scope="module")
def fast_compilation():
  """Most XLA optimisations off for a module: small programs compile faster, numbers barely
  change. Use with `pytestmark = pytest.mark.usefixtures("fast_compilation")`."""
  saved = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", saved)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops JAX's compiled programs and traces after each test module. One process runs
  hundreds of differently shaped programs; kept to the end they grew the process past
  5 GB, and a CI run crashed in XLA's compiler late in the suite."""
  yield
  jax.clear_caches()
  gc.collect()


# The prepared TFDS data_dir: $TFDS_DATA_DIR, else ../shared beside the checkout (as in CI).
TFDS_DATA_DIR = os.environ.get("TFDS_DATA_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "tensorflow_datasets"
)


def pytest_configure(config):
  assert (
      jax.default_backend() == "cpu" and jax.device_count() == SIMULATED_DEVICES
  ), f"tests expect {SIMULATED_DEVICES} simulated CPU devices, got {jax.devices()}"
  config.addinivalue_line(
      "markers",
      "tfds(name): needs the prepared TFDS dataset `name` in TFDS_DATA_DIR; skipped without "
      "it, an error without it when JAXGAN_TEST_REQUIRE_DATA=1 (as in CI)",
  )


def pytest_unconfigure(config):
  if _XLA_CACHE:
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def pytest_runtest_setup(item):
  """Skips a `tfds` test whose dataset is not prepared, unless the data is required."""
  for marker in item.iter_markers("tfds"):
    (name,) = marker.args
    if os.path.isdir(os.path.join(TFDS_DATA_DIR, name)):
      continue
    message = f"no prepared TFDS {name} in {TFDS_DATA_DIR} ($TFDS_DATA_DIR or ../shared)"
    if os.environ.get("JAXGAN_TEST_REQUIRE_DATA") == "1":
      pytest.fail(f"{message}, and JAXGAN_TEST_REQUIRE_DATA=1", pytrace=False)
    pytest.skip(message)
