"""Where a run's arrays live on the devices: the layout of the mapped step.

How the per-device step is mapped over the devices (`config.parallel`):
  "pmap"       `jax.pmap` (`gan.step.pmap_step`); state and data carry a
               leading device axis, one copy per device (`replicate`).
  "shard_map"  `jax.jit(jax.shard_map(...))` (`gan.step.shard_map_step`),
               pmap's successor; state and data are one array each,
               replicated over a mesh of the devices. One process only.
  "auto"       (default) shard_map in one process, pmap across processes.
Both run the same per-device function with the same collectives and give the
same numbers; shard_map's unreplicated layout is the faster of the two
(benchmarks/README.md).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gan import step as step_lib
from gan.utils import ConfigError


def parallel_mode(parallel: str) -> str:
  """`config.parallel` resolved: "pmap" or "shard_map" (see the module docstring)."""
  if parallel not in ("auto", "pmap", "shard_map"):
    raise ConfigError(f"unknown parallel={parallel!r}; use 'auto', 'pmap' or 'shard_map'")
  if parallel == "shard_map" and jax.process_count() > 1:
    raise ConfigError("parallel='shard_map' runs in one process; use 'pmap' or 'auto'")
  if parallel == "auto":
    return "shard_map" if jax.process_count() == 1 else "pmap"
  return parallel


def replicate(tree: Any, devices: list[jax.Device]) -> Any:
  """Copies a pytree onto each device, adding a leading device axis (for pmap)."""
  sharding = NamedSharding(Mesh(np.asarray(devices), (step_lib.AXIS,)), P(step_lib.AXIS))

  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices), *x.shape)), sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of a replicated pytree.

  Reads that device's buffer directly: indexing (`x[0]`) would be a computation
  over the whole array, which in a multi-process run spans other processes'
  devices and so needs every process to join it.
  """

  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_data(0)[0]
    return x[0]

  return jax.tree.map(first, tree)


class Layout:
  """One run's layout ("pmap" or "shard_map") over this process's devices.

  With several processes the step spans every process's devices; each process
  holds copies on (and feeds) only its local ones.
  """

  def __init__(self, mode: str, devices: list[jax.Device] | None = None):
    self.mode = parallel_mode(mode)
    self.devices = list(devices or jax.local_devices())
    self.mesh = Mesh(np.asarray(self.devices), (step_lib.AXIS,))

  @property
  def backend(self) -> str:
    """The platform of the devices ("cpu", "gpu", "tpu"), for `gan.platform.choices`."""
    return self.devices[0].platform

  def put(self, tree: Any) -> Any:
    """A host pytree onto the devices in this layout."""
    if self.mode == "pmap":
      return replicate(tree, self.devices)
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def first(self, tree: Any) -> Any:
    """One copy of a pytree held in this layout, which outlives the next step.

    pmap: the first device's copy (indexing makes a new buffer). shard_map: a
    host copy, since the first device's buffer is the one the next step donates.
    """
    if self.mode == "pmap":
      return unreplicate(tree)
    return jax.tree.map(
        lambda x: np.array(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree
    )

  def map_step(self, train_step: step_lib.StepFn) -> step_lib.StepFn:
    """The per-device `train_step` mapped over the devices, once, in this layout."""
    if self.mode == "pmap":
      return step_lib.pmap_step(train_step)
    return step_lib.shard_map_step(train_step, self.mesh)
