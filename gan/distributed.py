"""Multi-process (multi-host) runs on JAX's own distributed runtime.

One process per host (or per group of devices), all running the same
`gan.main` command. `initialize` joins them through `jax.distributed` before
JAX starts its backend; afterwards `jax.devices()` lists every device of every
process and the pmapped train step spans them all, so the experiment file is
the same as on one machine.

How the work is split: every process loads the (small) training split onto
its own devices, and each device draws its share of the global batch inside
the compiled step, from the epoch permutation that all processes hold
identically, by its global device index. So each process feeds only its
local devices, with its own part of the global batch: different examples per
process and no example twice in an epoch, exactly as on one machine with the
same number of devices.

Only process 0 writes what people read (metrics, sample grids, JSON, the
progress bar); Orbax checkpoints are saved and restored by all processes
together (Orbax's multi-process mode), so all of them resume from one step.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from typing import Any

import jax
import numpy as np

# Environment variables that mean "this process is one of several": a SLURM
# job step started by srun with more than one task (SLURM_NTASKS alone is also
# set in an sbatch script itself, which is one process), Open MPI's mpirun, or
# JAX's own JAX_COORDINATOR_ADDRESS.
_CLUSTER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def detect(environ: dict[str, str] | None = None) -> str | None:
  """Names the launcher whose environment says this is a multi-process run, else None."""
  environ = dict(os.environ if environ is None else environ)
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  for name in _CLUSTER_SIZE_VARS:
    value = environ.get(name, "")
    if value.isdigit() and int(value) > 1:
      return name
  return None


def slurm_local_device_ids(environ: dict[str, str] | None = None) -> list[int] | None:
  """GPU ids for a SLURM step with one task per node, so that task drives all its node's GPUs.

  JAX's SLURM detection assumes one task per GPU and gives each task only the
  device numbered by its SLURM_LOCALID; with one task per node that would
  leave all GPUs but one idle. Returns None (JAX's default) otherwise.
  """
  environ = dict(os.environ if environ is None else environ)
  per_node = environ.get("SLURM_STEP_TASKS_PER_NODE", "")  # e.g. "1(x4)" or "8(x2),4"
  gpus = environ.get("SLURM_GPUS_ON_NODE", "")
  if per_node and gpus.isdigit() and all(p.split("(")[0] == "1" for p in per_node.split(",")):
    return list(range(int(gpus)))
  return None


def _is_loopback(address: str) -> bool:
  host = address.rsplit(":", 1)[0].strip("[]")
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    mode: str = "auto",
) -> bool:
  """Joins a multi-process run if asked to; returns True if this is one.

  Args:
    coordinator: "host:port" of process 0's coordination service.
    num_processes: number of processes in the run.
    process_id: this process's index, 0 .. num_processes - 1.
    mode: "auto": multi-process if `coordinator` is given or a cluster
      launcher's environment says so (SLURM's srun with several tasks, Open
      MPI, `JAX_COORDINATOR_ADDRESS`), JAX filling in what is not given;
      "on": always (e.g. on a Cloud TPU pod slice, where JAX finds the
      workers itself); "off": single process.

  Must run before anything initialises JAX's backend (listing devices,
  computing). On CPU the processes talk over Gloo (TCP); a loopback
  coordinator address also binds the coordinator to loopback only.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', not {mode!r}")
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  if mode == "off":
    if explicit:
      raise ValueError("--distributed=off contradicts --coordinator/--num_processes/--process_id")
    return False
  if mode == "auto" and not explicit and detect() is None:
    return False
  if explicit and None in (coordinator, num_processes, process_id) and detect() is None:
    raise ValueError(
        "a multi-process run needs --coordinator HOST:PORT, --num_processes N and "
        "--process_id I together (or a cluster launcher that sets them, e.g. SLURM's srun)"
    )
  if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id {process_id} is not in 0..{num_processes - 1}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used on CPU
  bind = coordinator if coordinator and _is_loopback(coordinator) else None
  jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=slurm_local_device_ids() if detect() == "SLURM_STEP_NUM_TASKS" else None,
      coordinator_bind_address=bind,
  )
  return True


def is_primary() -> bool:
  """True in the process that writes logs, samples and JSON (process 0)."""
  return jax.process_index() == 0


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port on `host` that nothing listens on right now (for a local coordinator)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def fingerprint(tree: Any) -> str:
  """SHA-256 of a pytree's leaves (values, dtypes and shapes): equal iff bit-identical."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def broadcast_from_primary(value: int) -> int:
  """Process 0's value of an integer, in every process (identity with one process)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def assert_same_everywhere(tree: Any, what: str) -> str:
  """Checks that every process holds a bit-identical `tree`; returns its fingerprint."""
  digest = fingerprint(tree)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    words = np.frombuffer(bytes.fromhex(digest), np.uint32)
    everyone = np.asarray(multihost_utils.process_allgather(words))
    if not (everyone == words).all():
      raise RuntimeError(f"processes disagree on {what}: fingerprints differ across processes")
  return digest


def prefix() -> str:
  """ "process i/n: " in multi-process runs, so interleaved output says whose it is."""
  if jax.process_count() == 1:
    return ""
  return f"process {jax.process_index()}/{jax.process_count()}: "
