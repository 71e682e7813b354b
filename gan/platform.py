"""Per-backend choices: XLA flags, the models' CPU workarounds, steps in flight; host checks.

What is tuned for XLA:CPU applies on the CPU backend only; every other backend
(GPU, TPU) gets JAX's and XLA's stock behaviour. `choices(backend)` is the
whole table, one place to read and to test:

  choice                  cpu                                   gpu, tpu
  xla_flags               Eigen convolutions (CPU_FLAGS)        none
  conv_chunk              models slice big batches (their       whole batch
                          `conv_chunk` setting)
  custom_conv_transpose   `layers.ConvTranspose`'s own gradient  JAX's gradient
  steps_in_flight         2 (the loop waits for step t-1        None: JAX's
                          before queueing t+1)                  asynchronous dispatch

The CPU column is what benchmarks/README.md measured to help on XLA:CPU (and
a deadlock it avoids); nothing was measured to help on an accelerator.

XLA reads `XLA_FLAGS` once, when the first backend starts, so the flags
cannot be chosen from a started backend: `configure_xla()` (entry points call
it first thing) decides from the backend JAX is about to start
(`expected_backend`), and `prepare(config)` adds the determinism flag that
`config.deterministic` asks for, before the run's first computation.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import importlib.util
import os
from typing import Any

from gan.utils import ConfigError

# Eigen instead of YNNPACK for convolutions on XLA:CPU: the MNIST DCGAN step is
# faster with it at both batch sizes benchmarks/train_step.py measures (see
# benchmarks/README.md).
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# Run-to-run identical results on XLA:GPU: no autotuning (fixed kernels) and no
# atomics-based, order-dependent scatters and reductions. Costs speed (docs/gpu.md).
GPU_DETERMINISTIC_FLAGS = ("--xla_gpu_deterministic_ops=true",)

_GPU_NAMES = ("gpu", "cuda", "rocm")


@dataclasses.dataclass(frozen=True)
class Choices:
  """What the code does differently on one backend (see the module docstring's table)."""

  backend: str
  xla_flags: tuple[str, ...]
  conv_chunk: bool
  custom_conv_transpose: bool
  steps_in_flight: int | None


def canonical(backend: str) -> str:
  """The name choices go by: "cpu", "gpu" (for CUDA and ROCm) or JAX's own ("tpu")."""
  backend = backend.lower()
  return "gpu" if backend in _GPU_NAMES else backend


def choices(backend: str) -> Choices:
  """The per-backend choices for `backend` ("cpu", "gpu", "cuda", "tpu", ...)."""
  backend = canonical(backend)
  if backend == "cpu":
    # Two steps in flight: an unbounded queue of pmapped steps deadlocked XLA:CPU with 2
    # simulated devices on 2 cores (an all-reduce rendezvous timed out in step 1).
    return Choices(
        backend, CPU_FLAGS, conv_chunk=True, custom_conv_transpose=True, steps_in_flight=2
    )
  return Choices(backend, (), conv_chunk=False, custom_conv_transpose=False, steps_in_flight=None)


def deterministic_flags(backend: str) -> tuple[str, ...]:
  """XLA flags that make `backend` run to run deterministic; XLA:CPU and TPUs already are."""
  return GPU_DETERMINISTIC_FLAGS if canonical(backend) == "gpu" else ()


def current() -> Choices:
  """The choices of JAX's default backend, where the training step runs (starts the backend)."""
  import jax  # noqa: PLC0415

  return choices(jax.default_backend())


def backend_started() -> bool:
  """Whether JAX has started its backends (after which XLA_FLAGS is no longer read)."""
  from jax._src import xla_bridge  # noqa: PLC0415  (no public equivalent)

  return xla_bridge.backends_are_initialized()


def requested_platforms() -> str:
  """$JAX_PLATFORMS or `jax_platforms`: the platforms the user named, "" for JAX's choice."""
  import jax  # noqa: PLC0415

  return jax.config.jax_platforms or ""


def _visible(backend: str) -> bool:
  if backend == "gpu":
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):  # hidden on purpose
      return False
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/kfd", "/dev/dxg"))
  if backend == "tpu":
    return os.path.isdir("/dev/vfio") or any(os.path.exists(f"/dev/accel{i}") for i in range(8))
  return False


def _installed_accelerators() -> list[str]:
  """Accelerator platforms with a JAX plugin installed: CUDA/ROCm plugins, libtpu."""
  names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
  if importlib.util.find_spec("jax_plugins") is not None:
    import pkgutil  # noqa: PLC0415

    import jax_plugins  # noqa: PLC0415

    names += [module.name for module in pkgutil.iter_modules(jax_plugins.__path__)]
  found = ["gpu" for name in names if "cuda" in name or "rocm" in name]
  if importlib.util.find_spec("libtpu") is not None:
    found.append("tpu")
  return found


def expected_backend() -> str:
  """The backend JAX makes its default, found without starting it.

  As JAX chooses: the first of $JAX_PLATFORMS (or `jax_platforms`) if set;
  else an accelerator whose plugin is installed and whose device is visible;
  else the CPU. Once the backend has started, the started one.
  """
  import jax  # noqa: PLC0415

  if backend_started():
    return canonical(jax.default_backend())
  if platforms := requested_platforms():
    return canonical(platforms.split(",")[0])
  for backend in _installed_accelerators():
    if _visible(backend):
      return backend
  return "cpu"


def configure_xla(extra_flags: tuple[str, ...] | None = None, backend: str | None = None) -> str:
  """Appends flags to $XLA_FLAGS unless the user set the same flag; returns the result.

  `extra_flags` default to the choices of `backend` (default: `expected_backend()`).
  """
  if extra_flags is None:
    extra_flags = choices(backend or expected_backend()).xla_flags
  current_flags = os.environ.get("XLA_FLAGS", "")
  names = {flag.split("=", 1)[0] for flag in current_flags.split()}
  added = [flag for flag in extra_flags if flag.split("=", 1)[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join([current_flags, *added]).strip()
  return os.environ["XLA_FLAGS"]


def prepare(config: Any) -> Choices:
  """Applies `config.deterministic` before the run's first computation; returns the choices.

  Raises ConfigError if determinism is asked for on a backend that needs a flag
  and the backend has already started without it (set the flag in XLA_FLAGS, or
  start training before any other computation).
  """
  backend = expected_backend()
  if config.get("deterministic", False) and (flags := deterministic_flags(backend)):
    if not backend_started():
      configure_xla(flags)
    elif not all(flag in os.environ.get("XLA_FLAGS", "").split() for flag in flags):
      raise ConfigError(
          f"deterministic=True needs XLA_FLAGS={' '.join(flags)} before JAX starts its "
          f"{backend} backend, which has already started"
      )
  return current()


class StepQueue:
  """Bounds how many dispatched steps may be unfinished (`Choices.steps_in_flight`).

  With a limit n, dispatching a step waits for the step n-1 before it. None is
  no bound: JAX's asynchronous dispatch queues steps as fast as the host makes
  them, which keeps a fast device busy on small steps.
  """

  def __init__(self, limit: int | None):
    self.limit = limit
    self._pending: collections.deque[Any] = collections.deque()

  def dispatched(self, outputs: Any) -> None:
    """Records a step just dispatched (any of its outputs); waits while too many are unfinished."""
    if self.limit is None:
      return
    import jax  # noqa: PLC0415

    self._pending.append(outputs)
    while len(self._pending) >= self.limit:
      jax.block_until_ready(self._pending.popleft())


def peak_rss_mb() -> float:
  """Peak resident memory of this process in MB (Linux ru_maxrss is in KB)."""
  import resource  # noqa: PLC0415

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
