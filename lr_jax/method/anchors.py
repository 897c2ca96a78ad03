"""Anchor points and square box proposals on the patch grid.

Conventions used throughout lr_jax:
  * Coordinates are (row, col) -- never (x, y). Row indexes the vertical axis
    (image height), col the horizontal axis (image width).
  * A box is (top, left, height, width) in token/patch units of the grid
    (16x16 for MaskGIT at 256 px). Patch (r, c) covers the continuous square
    [r, r + 1) x [c, c + 1); a box covers [top, top + height) x
    [left, left + width). `to_pixels` converts to pixel units.

The official Learnable_Regions code used the anchor (row, col) as (x, y),
transposing every box against the attention map. Here the anchor's first
coordinate is always the row, and `box_proposals` puts it in the `top`/`height`
slots.
"""
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
GridSize = Union[int, Tuple[int, int]]

DEFAULT_SIZES: Tuple[int, ...] = (3, 5, 7, 9, 11, 13, 15)


def _grid_hw(grid: GridSize) -> Tuple[int, int]:
  """Returns (rows, cols) of a grid given as an int or a pair."""
  if isinstance(grid, (int, np.integer)):
    rows, cols = int(grid), int(grid)
  else:
    try:
      rows, cols = (int(g) for g in grid)
    except (TypeError, ValueError) as e:
      raise ValueError(f"grid must be an int or (rows, cols), got {grid!r}") from e
  if rows < 1 or cols < 1:
    raise ValueError(f"grid sizes must be positive, got {(rows, cols)}")
  return rows, cols


def valid_corners(valid: Array | None, grid: GridSize) -> Tuple[Array, Array, Array, Array]:
  """(y1, x1, y2, x2) float32 of the valid areas (..., 4) (top, left, height, width)
  in tokens (`lr_common.canvas`); None: the whole grid."""
  if valid is None:
    rows, cols = _grid_hw(grid)
    valid = jnp.asarray([0, 0, rows, cols])
  valid = jnp.asarray(valid, jnp.float32)
  if valid.shape[-1:] != (4,):
    raise ValueError(f"valid must have shape (..., 4), got {valid.shape}")
  top, left, height, width = jnp.moveaxis(valid, -1, 0)
  return top, left, top + height, left + width


def top_k_anchors(attention: Array, k: int, valid: Array | None = None) -> Array:
  """Returns the (row, col) of the `k` highest-scoring patches.

  Args:
    attention: (h, w) or (..., h, w) attention map (e.g. DINO [CLS] attention
      reshaped to the patch grid, row-major).
    k: number of anchors (static Python int), 1 <= k <= h * w.
    valid: optional (..., 4) (top, left, height, width) token area per map (the
      photo on a padded canvas): patches outside it are never picked, whatever their
      score (with fewer valid patches than k, the surplus anchors are moved onto the
      nearest valid patch).

  Returns:
    int32 array (..., k, 2) of distinct (row, col) positions, highest score
    first (ties broken towards the lower flat index, i.e. row-major order).
    jit/vmap friendly (k must be static).
  """
  attention = jnp.asarray(attention)
  if attention.ndim < 2:
    raise ValueError(
        f"attention must have shape (..., h, w), got {attention.shape}")
  h, w = attention.shape[-2:]
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise ValueError(f"k must be a Python int, got {type(k).__name__}")
  if k < 1 or k > h * w:
    raise ValueError(f"k must be in [1, h*w={h * w}], got {k}")
  if valid is not None:
    y1, x1, y2, x2 = (v[..., None, None] for v in valid_corners(valid, (h, w)))
    r = jnp.arange(h, dtype=jnp.float32)[:, None]
    c = jnp.arange(w, dtype=jnp.float32)[None, :]
    inside = (r >= y1) & (r < y2) & (c >= x1) & (c < x2)
    attention = jnp.where(inside, attention, -jnp.inf)
  flat = attention.reshape(attention.shape[:-2] + (h * w,))
  _, idx = jax.lax.top_k(flat, int(k))
  rows = idx // w
  cols = idx % w
  if valid is not None:
    y1, x1, y2, x2 = (v[..., None].astype(jnp.int32) for v in valid_corners(valid, (h, w)))
    rows, cols = jnp.clip(rows, y1, y2 - 1), jnp.clip(cols, x1, x2 - 1)
  return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def box_proposals(anchors: Array,
                  sizes: Sequence[int] = DEFAULT_SIZES,
                  grid: GridSize = 16, valid: Array | None = None) -> Array:
  """Square boxes of each size centred on each anchor, clamped to the grid.

  A box of side `s` around anchor patch (r, c) starts at row
  `r - (s - 1) // 2`:
    * odd s: it covers rows r - (s-1)/2 .. r + (s-1)/2, centred on the patch;
    * even s: it covers rows r - s/2 + 1 .. r + s/2, i.e. the anchor patch is
      the upper-left one of the four central patches (one extra row below and
      one extra column to the right of the anchor).
  Columns follow the same rule. The box is then intersected with the grid, so
  it never leaves the image (boxes near the border become smaller rectangles).

  Args:
    anchors: (..., K, 2) (row, col) anchor patches, int or float.
    sizes: M box sides in patches (static), each >= 1.
    grid: grid size, int or (rows, cols).
    valid: optional (..., 4) token area (top, left, height, width) per image that
      the boxes are intersected with instead of the grid (the photo on a padded
      canvas; anchors must lie in it).

  Returns:
    float32 (..., K, M, 4) boxes (top, left, height, width) in patch units.
  """
  rows, cols = _grid_hw(grid)
  sizes = tuple(int(s) for s in sizes)
  if not sizes or min(sizes) < 1:
    raise ValueError(f"sizes must be a non-empty sequence of ints >= 1, got {sizes}")
  anchors = jnp.asarray(anchors)
  if anchors.ndim < 2 or anchors.shape[-1] != 2:
    raise ValueError(f"anchors must have shape (..., K, 2), got {anchors.shape}")
  anchors = anchors.astype(jnp.float32)
  s = jnp.asarray(sizes, jnp.float32)  # (M,)
  half_before = jnp.asarray([(v - 1) // 2 for v in sizes], jnp.float32)
  r = anchors[..., 0][..., None]  # (..., K, 1)
  c = anchors[..., 1][..., None]
  top = r - half_before
  left = c - half_before
  if valid is None:
    lo_r, lo_c, hi_r, hi_c = 0.0, 0.0, rows, cols
  else:
    lo_r, lo_c, hi_r, hi_c = (v[..., None, None] for v in valid_corners(valid, grid))
  y1 = jnp.clip(top, lo_r, hi_r)
  x1 = jnp.clip(left, lo_c, hi_c)
  y2 = jnp.clip(top + s, lo_r, hi_r)
  x2 = jnp.clip(left + s, lo_c, hi_c)
  return jnp.stack([y1, x1, y2 - y1, x2 - x1], axis=-1)


def to_pixels(boxes: Array, grid: GridSize, image_size: GridSize) -> Array:
  """Scales (top, left, height, width) boxes from grid units to pixels.

  Rows are scaled by image_rows / grid_rows, columns by image_cols / grid_cols.
  """
  g_rows, g_cols = _grid_hw(grid)
  i_rows, i_cols = _grid_hw(image_size)
  boxes = jnp.asarray(boxes)
  if boxes.shape[-1:] != (4,):
    raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
  sy = i_rows / g_rows
  sx = i_cols / g_cols
  scale = jnp.asarray([sy, sx, sy, sx], jnp.float32)
  return boxes.astype(jnp.float32) * scale


def box_corners(boxes: Array) -> Array:
  """(top, left, height, width) -> (y1, x1, y2, x2) along the last axis.

  (y1, x1) is the top-left corner, (y2, x2) = (top + height, left + width) the
  exclusive bottom-right corner. Note the (row, col) order, unlike
  torchvision's (x1, y1, x2, y2).
  """
  boxes = jnp.asarray(boxes)
  if boxes.shape[-1:] != (4,):
    raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
  top, left, height, width = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([top, left, top + height, left + width], axis=-1)


def random_boxes(rng: Array, shape: Tuple[int, ...], grid: int,
                 anchors: Array | None = None,
                 valid: Array | None = None) -> Tuple[Array, Array, Array]:
  """The paper's region baselines (Sec. 4.4, Table 2): boxes centred at anchors, with
  height and width uniform in [0, grid], clamped to the grid.

  With `valid` (an area (top, left, height, width) in tokens broadcastable to (*shape,
  4): the photo on a padded canvas), that area stands for the grid: random centres are
  uniform over it, sizes uniform in [0, its height] x [0, its width], boxes clamped to
  it (the whole grid gives the same draws as no `valid`).

  Args:
    rng: key of the draws.
    shape: leading shape of the boxes, e.g. (B, K).
    grid: tokens per side.
    anchors: (*shape, 2) anchor patches to centre on (the DINO anchors: the centre of
      patch (r, c) is (r + 0.5, c + 0.5)); None: centres uniform over the whole grid
      ("random anchor").

  Returns:
    (centres (*shape, 2) float, sizes (*shape, 2) float: the draws, and boxes (*shape,
    4) int32 (top, left, height, width): the smallest whole-token box around the drawn
    one, clamped to the grid, at least one token per side).
  """
  k_centre, k_size = jax.random.split(rng)
  if valid is None:
    low, extent = 0.0, grid
  else:
    y1, x1, y2, x2 = valid_corners(valid, grid)
    low = jnp.stack([y1, x1], -1)
    extent = jnp.stack([y2 - y1, x2 - x1], -1)
  if anchors is None:
    centres = jax.random.uniform(k_centre, shape + (2,)) * extent + low
  else:
    centres = jnp.asarray(anchors, jnp.float32) + 0.5
  sizes = jax.random.uniform(k_size, shape + (2,)) * extent
  start = jnp.clip(jnp.floor(centres - sizes / 2), low, low + extent - 1)
  end = jnp.clip(jnp.ceil(centres + sizes / 2), low + 1, low + extent)
  end = jnp.maximum(end, start + 1)
  boxes = jnp.concatenate([start, end - start], axis=-1).astype(jnp.int32)
  return centres, sizes, boxes
