"""Data parallelism with `jax.sharding`: the batch is split over a 1-D mesh, parameters replicated.

Works the same on one CPU, eight simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), a GPU box or a TPU pod slice
(call `maybe_initialize_distributed()` first on multi-host runs).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lr_common.errors import UserError

DATA_AXIS = "data"


def maybe_initialize_distributed(force: bool = False) -> None:
  """Joins a multi-host run (TPU pod, multi-node GPU) when the environment asks for it.

  On Cloud TPU pods `jax.distributed.initialize()` needs no arguments; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  wanted = force or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or (
      os.environ.get("LR_JAX_DISTRIBUTED", "") == "1")
  if wanted and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D mesh over all (global) devices, axis name 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


class DeviceError(UserError, ValueError):
  """The work cannot be split evenly over the devices."""


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise DeviceError(
        f"train.batch_size={batch_size} must be a multiple of the number of devices "
        f"({n}) so that every device gets the same share of the batch.")


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree fully replicated on the mesh.

  With several processes every process must pass the same values (they do: the
  frozen weights are loaded and the RGN initialised from the same seed everywhere);
  each one fills its own devices from its host copy.
  """
  return _put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
  """numpy copies of (possibly multi-process, batch-sharded) global arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def put_batch(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of global host arrays, split along axis 0 over the mesh.

  With several processes, each process passes the global batch and keeps its part,
  so every host must see the same data order (it does: orders come from the seed).
  """
  return _put(tree, batch_sharded(mesh))


def _put(tree: Any, sharding: NamedSharding) -> Any:
  """Global arrays from host values every process holds in full; each process fills
  only its own devices."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)
