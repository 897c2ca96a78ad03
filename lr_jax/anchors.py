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


def top_k_anchors(attention: Array, k: int) -> Array:
  """Returns the (row, col) of the `k` highest-scoring patches.

  Args:
    attention: (h, w) or (..., h, w) attention map (e.g. DINO [CLS] attention
      reshaped to the patch grid, row-major).
    k: number of anchors (static Python int), 1 <= k <= h * w.

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
  flat = attention.reshape(attention.shape[:-2] + (h * w,))
  _, idx = jax.lax.top_k(flat, int(k))
  rows = idx // w
  cols = idx % w
  return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def box_proposals(anchors: Array,
                  sizes: Sequence[int] = DEFAULT_SIZES,
                  grid: GridSize = 16) -> Array:
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
  y1 = jnp.clip(top, 0.0, rows)
  x1 = jnp.clip(left, 0.0, cols)
  y2 = jnp.clip(top + s, 0.0, rows)
  x2 = jnp.clip(left + s, 0.0, cols)
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
                 anchors: Array | None = None) -> Tuple[Array, Array, Array]:
  """The paper's region baselines (Sec. 4.4, Table 2): boxes centred at anchors, with
  height and width uniform in [0, grid], clamped to the grid.

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
  if anchors is None:
    centres = jax.random.uniform(k_centre, shape + (2,)) * grid
  else:
    centres = jnp.asarray(anchors, jnp.float32) + 0.5
  sizes = jax.random.uniform(k_size, shape + (2,)) * grid
  start = jnp.clip(jnp.floor(centres - sizes / 2), 0, grid - 1)
  end = jnp.clip(jnp.ceil(centres + sizes / 2), 1, grid)
  end = jnp.maximum(end, start + 1)
  boxes = jnp.concatenate([start, end - start], axis=-1).astype(jnp.int32)
  return centres, sizes, boxes
