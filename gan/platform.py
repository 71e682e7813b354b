"""XLA settings the entry points apply before JAX starts, and run-time checks of the host.

XLA reads `XLA_FLAGS` once, when the first backend initialises, so
`configure_xla()` must run before any computation; entry points (`gan.main`,
the benchmarks, notebooks) call it first thing. Flags are appended to any the
user already set and never override a flag the user named.
"""

from __future__ import annotations

import os

# Eigen instead of YNNPACK for convolutions on XLA:CPU: the MNIST DCGAN step is
# faster with it at both batch sizes benchmarks/train_step.py measures (see
# benchmarks/README.md). The flag only affects the CPU backend, so it is
# harmless on GPU.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def configure_xla(extra_flags: tuple[str, ...] = CPU_FLAGS) -> str:
  """Appends `extra_flags` to $XLA_FLAGS unless the user set the same flag; returns the result."""
  current = os.environ.get("XLA_FLAGS", "")
  names = {flag.split("=", 1)[0] for flag in current.split()}
  added = [flag for flag in extra_flags if flag.split("=", 1)[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return os.environ["XLA_FLAGS"]


def peak_rss_mb() -> float:
  """Peak resident memory of this process in MB (Linux ru_maxrss is in KB)."""
  import resource  # noqa: PLC0415

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
