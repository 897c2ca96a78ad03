"""Generator-neutral box editing: the pieces every editor shares.

Boxes are (top, left, height, width) on a square grid of `side` cells (a generator's
token or latent grid, or the region method's box grid). An editor regenerates what
is inside each box (grown by a few cells), then blends its output into the input
through the box mask, upsampled to pixels and Gaussian-feathered:
`out * m + input * (1 - m)`. Box (b, n) of a batch draws its randomness from
fold_in(fold_in(rng, b), n), so a box alone edits as it does in a batch.

Both `maskgit/` and `lr_jax` import this module; it imports neither.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lr_common.errors import UserError

Params = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class BoxError(UserError, ValueError):
  """A box is empty, inverted, malformed or entirely outside the token grid."""


def pixel_boxes_to_tokens(boxes_px, image_size: int, tokens_per_side: int) -> jax.Array:
  """Converts (top, left, height, width) pixel boxes to token boxes, rounding outward."""
  boxes_px = jnp.asarray(boxes_px, jnp.float32)
  scale = image_size / tokens_per_side
  top, left, height, width = jnp.moveaxis(boxes_px, -1, 0)
  t0 = jnp.floor(top / scale)
  l0 = jnp.floor(left / scale)
  t1 = jnp.ceil((top + height) / scale)
  l1 = jnp.ceil((left + width) / scale)
  return jnp.stack([t0, l0, t1 - t0, l1 - l0], axis=-1).astype(jnp.int32)


def validate_boxes(boxes, tokens_per_side: int) -> None:
  """Host-side check of concrete boxes; raises BoxError (a ValueError)."""
  boxes = np.asarray(boxes)
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise BoxError(f"Boxes must have a last axis of 4 (top, left, height, width), "
                   f"got shape {boxes.shape}.")
  if not np.all(np.isfinite(boxes)):
    raise BoxError("Boxes contain NaN or infinite values.")
  flat = boxes.reshape(-1, 4)
  for index, (top, left, height, width) in enumerate(flat.tolist()):
    position = tuple(int(i) for i in np.unravel_index(index, boxes.shape[:-1]))
    where = f"box {position} {flat[index].tolist()}"
    if height <= 0 or width <= 0:
      raise BoxError(f"{where} is empty or inverted (height and width must be > 0).")
    if (top >= tokens_per_side or left >= tokens_per_side or top + height <= 0
        or left + width <= 0):
      raise BoxError(f"{where} lies entirely outside the {tokens_per_side}x"
                     f"{tokens_per_side} token grid.")


def grown_boxes(boxes: jax.Array, tokens_per_side: int, grow: int = 0) -> jax.Array:
  """(..., 4) boxes grown by `grow` tokens on each side and clamped to the grid."""
  boxes = jnp.asarray(boxes)
  if isinstance(grow, int):   # past the grid is the whole grid; and no int32 overflow
    grow = min(grow, tokens_per_side)
  top, left, height, width = (boxes[..., i] for i in range(4))
  clamp = lambda x: jnp.clip(x, 0, tokens_per_side)
  t0, l0 = clamp(top - grow), clamp(left - grow)
  t1, l1 = clamp(top + height + grow), clamp(left + width + grow)
  return jnp.stack([t0, l0, t1 - t0, l1 - l0], axis=-1)


def box_token_mask(boxes: jax.Array, tokens_per_side: int, grow: int = 0) -> jax.Array:
  """Boolean (..., h, w) masks of the boxes grown by `grow`, clamped to the grid."""
  boxes = jnp.asarray(boxes)
  top, left, height, width = (
      grown_boxes(boxes, tokens_per_side, grow)[..., i, None] for i in range(4))
  grid = jnp.arange(tokens_per_side)
  rows = (grid >= top) & (grid < top + height)
  cols = (grid >= left) & (grid < left + width)
  # Empty or inverted boxes give empty masks even when grown.
  valid = (boxes[..., 2:3] > 0) & (boxes[..., 3:4] > 0)
  return rows[..., :, None] & cols[..., None, :] & valid[..., None]


def _feather_matrix(image_size: int, tokens_per_side: int, sigma: float) -> np.ndarray:
  """(image_size, tokens) matrix: nearest upsampling then Gaussian blur, edge-clamped."""
  scale = image_size // tokens_per_side
  upsample = np.zeros((image_size, tokens_per_side), np.float64)
  upsample[np.arange(image_size), np.arange(image_size) // scale] = 1.
  if sigma <= 0:
    return upsample.astype(np.float32)
  radius = int(np.ceil(3. * sigma))
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * (offsets / sigma)**2)
  weights /= weights.sum()
  blur = np.zeros((image_size, image_size), np.float64)
  for offset, weight in zip(offsets, weights):
    source = np.clip(np.arange(image_size) + offset, 0, image_size - 1)
    np.add.at(blur, (np.arange(image_size), source), weight)
  return (blur @ upsample).astype(np.float32)


def feather_sigma(image_size: int, feather: bool = True,
                  radius: float | None = None) -> float:
  """The Gaussian sigma of the blending mask in pixels: 0 without feathering, else
  `radius`, by default image_size // 16 - 1 (the official demo's)."""
  if not feather:
    return 0.
  return float(image_size // 16 - 1 if radius is None else radius)


def feathered_mask(token_mask: jax.Array, image_size: int, sigma: float) -> jax.Array:
  """(..., h, w) token masks -> (..., H, W, 1) float32 blending masks in [0, 1]: nearest
  upsampling to image_size, then a Gaussian blur of `sigma` pixels (edge-clamped)."""
  side = token_mask.shape[-1]
  matrix = jnp.asarray(_feather_matrix(image_size, side, float(sigma)))
  mask = jnp.einsum("ih,...hw,jw->...ij", matrix, token_mask.astype(jnp.float32),
                    matrix, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(mask, 0., 1.)[..., None]


def box_keys(rng: jax.Array, batch: int, num_boxes: int) -> jax.Array:
  """(batch, num_boxes) keys: fold_in(fold_in(rng, image), box)."""
  images = jnp.arange(batch)
  boxes = jnp.arange(num_boxes)
  per_box = lambda b: jax.vmap(lambda k: jax.random.fold_in(
      jax.random.fold_in(rng, b), k))(boxes)
  return jax.vmap(per_box)(images)


def cast_params(params: Params, dtype) -> Params:
  """Casts floating matrices/kernels (ndim >= 2) to `dtype`; keeps vectors."""
  if dtype == jnp.float32:
    return params
  cast = lambda x: (x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                    and x.ndim >= 2 else x)
  return jax.tree_util.tree_map(cast, params)


def as_typed_keys(rng: jax.Array) -> jax.Array:
  """Typed PRNG keys (raw uint32 keys are wrapped, their bits unchanged)."""
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(rng)


def per_box_keys(rngs: jax.Array, batch: int, num_boxes: int) -> jax.Array:
  """(batch, num_boxes) typed keys: `box_keys` of one key, or the given grid of keys."""
  keys = as_typed_keys(rngs)
  if keys.ndim == 0:
    return box_keys(keys, batch, num_boxes)
  if keys.shape != (batch, num_boxes):
    raise ValueError(f"rngs must be one key or ({batch}, {num_boxes}) keys, "
                     f"got key shape {keys.shape}.")
  return keys


def scale_boxes(boxes: jax.Array, factor: int) -> jax.Array:
  """Boxes on a grid -> the same boxes on a grid `factor` times finer (integer cells)."""
  return jnp.asarray(boxes) * factor


class Blended(NamedTuple):
  """What an editor hands back for B images x N boxes (see `blend`)."""
  images: jax.Array        # (B, N, S, S, 3) float32, clipped to [0, 1]
  pixel_mask: jax.Array    # (B, N, S, S, 1) float32 blend weight of the edit
  masked_boxes: jax.Array  # (B, N, 4) int32 boxes really regenerated, on the box grid


def blend(raw: jax.Array, images: jax.Array, cell_mask: jax.Array, sigma: float) -> tuple[
    jax.Array, jax.Array]:
  """(B, N, S, S, 3) generator output and (B, S, S, 3) inputs blended through the
  (B, N, h, w) cell masks, feathered with `sigma` pixels: (composite, pixel mask).
  The composite is not clipped (the official MaskGIT demo's is not)."""
  size = images.shape[-2]
  mask = feathered_mask(cell_mask, size, sigma)
  composite = raw * mask + images[:, None].astype(jnp.float32) * (1. - mask)
  return composite, mask


def finish(raw: jax.Array, images: jax.Array, boxes: jax.Array, side: int, grow: int,
           sigma: float, cell_mask: jax.Array | None = None) -> Blended:
  """The common ending of an edit: blend, clip to [0, 1], report the grown boxes.

  boxes: (B, N, 4) integer boxes on the `side` grid; cell_mask: the mask really
  regenerated (default: the boxes grown by `grow` on that grid)."""
  if cell_mask is None:
    cell_mask = box_token_mask(boxes, side, grow)
  composite, mask = blend(raw, images, cell_mask, sigma)
  return Blended(jnp.clip(composite, 0., 1.), mask,
                 grown_boxes(boxes, side, grow).astype(jnp.int32))


def round_boxes(boxes: jax.Array) -> jax.Array:
  """Boxes as the nearest integer cells (the method's boxes are floats on the grid)."""
  return jnp.round(boxes).astype(jnp.int32)
