"""Test setup: four simulated CPU devices, so multi-device code is tested on one CPU.

XLA reads XLA_FLAGS when its backend starts, so this runs before any test
imports JAX computations. Tests that need fewer devices pass a subset.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=4"]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402

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


def pytest_configure(config):
  del config
  assert jax.device_count() == 4, "tests expect 4 simulated CPU devices"
