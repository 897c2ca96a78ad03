"""Splitting work over devices with `jax.sharding`, parameters replicated.

Training: the batch is split over a 1-D mesh of all devices (`make_mesh`, `put_batch`).
Editing: the candidate edits of a batch, B images x N boxes, are split over a 2-D
mesh of this host's devices, images x boxes (`CandidateSplit`, `map_candidates`), each
device editing its share in chunks of at most `max_per_device` candidates.

Works the same on one CPU, eight simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), a GPU box or a TPU pod slice
(multi-host runs join first: `lr_jax.hosts.join`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lr_common.errors import UserError

DATA_AXIS = "data"


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


IMAGES_AXIS, BOXES_AXIS = "images", "boxes"


@dataclasses.dataclass(frozen=True)
class CandidateSplit:
  """How the candidate edits of inference spread over devices (static in jit).

  devices: this host's devices the candidates are split over; max_per_device: at most
  this many candidates edited at once on one device (at least one box of each image it
  holds), in chunks one after the other inside the same call; 0: all at once.
  """
  devices: tuple[Any, ...]
  max_per_device: int = 0

  def layout(self, batch: int, num_boxes: int) -> "CandidateLayout":
    return candidate_layout(batch, num_boxes, len(self.devices), self.max_per_device)

  def mesh(self, layout: "CandidateLayout") -> Mesh:
    """The devices as an images x boxes mesh."""
    return Mesh(np.asarray(self.devices).reshape(layout.image_shards, layout.box_shards),
                (IMAGES_AXIS, BOXES_AXIS))

  def replicated(self) -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(self.devices), (DATA_AXIS,)), P())


@dataclasses.dataclass(frozen=True)
class CandidateLayout:
  """Where B images x N boxes go on the devices (`candidate_layout`)."""
  image_shards: int     # the images split this many ways ...
  box_shards: int       # ... and each image's boxes this many ways (product: the devices)
  num_boxes: int        # N, the real boxes per image
  padded: int           # boxes per image after padding to whole chunks on every device
  chunks: int           # chunks per device, edited one after the other
  per_chunk: int        # boxes per image in one chunk


def candidate_layout(batch: int, num_boxes: int, device_count: int,
                     max_per_device: int = 0) -> CandidateLayout:
  """Images split as far as B allows (their greatest common divisor with the device
  count), then each image's boxes over the rest; each device's boxes in as few chunks
  as keep it at `max_per_device` edits at once (at least one box per image), padded as
  little as that many chunks allow."""
  if batch < 1 or num_boxes < 1 or device_count < 1:
    raise ValueError(f"a candidate layout needs at least one image, box and device; got "
                     f"{batch} images, {num_boxes} boxes, {device_count} devices")
  image_shards = math.gcd(batch, device_count)
  box_shards = device_count // image_shards
  local_boxes = -(-num_boxes // box_shards)
  per_chunk = local_boxes
  if max_per_device:
    per_chunk = min(local_boxes, max(1, max_per_device // (batch // image_shards)))
  chunks = -(-local_boxes // per_chunk)
  per_chunk = -(-local_boxes // chunks)
  return CandidateLayout(image_shards, box_shards, num_boxes,
                         box_shards * chunks * per_chunk, chunks, per_chunk)


def candidate_split(max_per_device: int = 0, devices: Sequence[Any] | None = None
                    ) -> CandidateSplit | None:
  """The split over `devices` (default: all of this host's), or None where there is
  nothing to split or chunk (one device, no cap): then inference runs as it always did."""
  devices = tuple(jax.local_devices() if devices is None else devices)
  if not devices:
    raise DeviceError("no devices to edit on")
  if len(devices) == 1 and not max_per_device:
    return None
  return CandidateSplit(devices, max_per_device)


def map_candidates(fn: Callable[..., Any], split: CandidateSplit, shared: Any,
                   per_image: Any, boxes: jax.Array, keys: jax.Array) -> Any:
  """fn(shared, per_image, boxes, keys) for every candidate, split over the devices
  (inside jit).

  shared: replicated pytree (parameters); per_image: pytree of (B, ...) arrays; boxes
  (B, N, 4) and keys (B, N, ...) one per candidate. fn gets a device's images and
  (B', C, ...) boxes and keys of one chunk and returns a pytree of (B', C, ...) arrays;
  the result has (B, N, ...) leaves. The box axis is padded with copies of the last
  box (and its key) to whole chunks on every device; the pads are dropped after.
  """
  batch, num_boxes = boxes.shape[:2]
  lay = split.layout(batch, num_boxes)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, lay.padded - num_boxes)] + [(0, 0)] * (x.ndim - 2),
                          mode="edge")
  boxes, keys = pad(boxes), pad(keys)

  def on_device(shared, per_image, boxes, keys):
    if lay.chunks == 1:
      return fn(shared, per_image, boxes, keys)
    # (B', chunks * C, ...) -> (chunks, B', C, ...), one chunk at a time, and back.
    split_chunks = lambda x: jnp.moveaxis(
        x.reshape(x.shape[:1] + (lay.chunks, lay.per_chunk) + x.shape[2:]), 1, 0)
    out = jax.lax.map(lambda bk: fn(shared, per_image, *bk),
                      (split_chunks(boxes), split_chunks(keys)))
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(
        x.shape[1:2] + (-1,) + x.shape[3:]), out)

  spread = jax.shard_map(
      on_device, mesh=split.mesh(lay),
      in_specs=(P(), P(IMAGES_AXIS), P(IMAGES_AXIS, BOXES_AXIS), P(IMAGES_AXIS, BOXES_AXIS)),
      out_specs=P(IMAGES_AXIS, BOXES_AXIS), check_vma=False)
  out = spread(shared, per_image, boxes, keys)
  return jax.tree.map(lambda x: x[:, :num_boxes], out)


_REPLICAS: dict[str, Any] = {}


def replicated_once(tree: Any, split: CandidateSplit | None) -> Any:
  """`tree` (frozen weights) replicated on the split's devices, kept for the next call
  with the same tree (one copy is kept: the API edits photo after photo with the same
  weights, and copying them to every device each time would cost more than the edit)."""
  if split is None:
    return tree
  key = (id(tree), split.devices)
  held = _REPLICAS.get("entry")
  if held is None or held[0] != key or held[1] is not tree:
    held = (key, tree, jax.device_put(tree, split.replicated()))
    _REPLICAS["entry"] = held   # another thread's tree may replace it: ours is returned
  return held[2]
