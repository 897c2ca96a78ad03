"""ROI-align on channels-last feature maps, with torchvision.ops.roi_align semantics.

Boxes are (top, left, height, width) in FEATURE-GRID units, (row, col) order.
For the DINO/MaskGIT 16x16 patch grid we pass patch-unit boxes with
`spatial_scale=1`: patch (r, c) covers [r, r+1) x [c, c+1), so a box that
covers patches r0..r1 is [r0, r1 + 1). The official Learnable_Regions code
passed patch-unit boxes with `spatial_scale=0.125` (as if they were pixels),
which squeezes every box into the top-left corner of the feature map; we do not.

Semantics (matching torchvision's CPU/CUDA kernel):
  * the box corners are multiplied by `spatial_scale`; with `aligned=True` half
    a cell is subtracted, so that continuous coordinate r + 0.5 (the centre of
    cell r) maps onto feature index r. We use `aligned=True` because our boxes
    use the continuous "cell r covers [r, r+1)" convention; `aligned=False`
    (legacy Detectron) also forces each ROI to be at least 1x1.
  * each of the output_size x output_size bins is averaged over
    sampling_ratio x sampling_ratio regularly spaced bilinear samples;
    `sampling_ratio <= 0` means ceil(roi_size / output_size) samples per axis,
    chosen per box (adaptive). We default to a fixed 2: it makes the cost
    static, and a 2x2 grid per bin already covers every cell of a 16x16 map for
    the box sizes we use (roi side <= 16 cells over 7 bins).
  * a sample with y < -1 or y > H (or the same for x) contributes 0; otherwise
    y is clamped below at 0, and a sample at or past the last row/column reads
    that row/column only (torchvision's bilinear_interpolate rules).

Implementation: bilinear sampling and bin averaging are separable, so each box
becomes a (output_size, H) row-weight matrix and a (output_size, W)
column-weight matrix, contracted with the features by two einsums. No Python
loops over boxes; differentiable w.r.t. features (and boxes almost everywhere).
"""
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def _axis_weights(start: Array, length: Array, size: int, output_size: int,
                  sampling_ratio: int, max_samples: int) -> Array:
  """Per-box interpolation+averaging weights along one axis.

  Args:
    start: (N,) ROI start (already scaled and offset) along the axis.
    length: (N,) ROI length along the axis.
    size: feature-map length along the axis.
    output_size: number of bins.
    sampling_ratio: fixed samples per bin, or <= 0 for adaptive.
    max_samples: static number of sample slots per bin.

  Returns:
    (N, output_size, size) weights: sum over samples of the 1-D bilinear
    weights, divided by the number of samples along this axis.
  """
  bin_size = length / output_size  # (N,)
  if sampling_ratio > 0:
    n_samples = jnp.full_like(length, float(sampling_ratio))
  else:
    n_samples = jnp.ceil(length / output_size)  # may be <= 0 -> no samples
  bins = jnp.arange(output_size, dtype=start.dtype)
  slots = jnp.arange(max_samples, dtype=start.dtype)
  safe_n = jnp.maximum(n_samples, 1.0)
  # (N, output_size, max_samples) sample coordinates.
  coord = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
           + (slots[None, None, :] + 0.5) * bin_size[:, None, None]
           / safe_n[:, None, None])
  used = slots[None, None, :] < n_samples[:, None, None]
  inside = (coord >= -1.0) & (coord <= size)
  coord = jnp.maximum(coord, 0.0)
  low = jnp.floor(coord).astype(jnp.int32)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  high = jnp.where(at_end, size - 1, low + 1)
  coord = jnp.where(at_end, low.astype(coord.dtype), coord)
  frac = coord - low.astype(coord.dtype)
  keep = (used & inside).astype(coord.dtype)
  w_low = (1.0 - frac) * keep
  w_high = frac * keep
  weights = (jax.nn.one_hot(low, size, dtype=coord.dtype) * w_low[..., None]
             + jax.nn.one_hot(high, size, dtype=coord.dtype) * w_high[..., None])
  # Sum over samples and divide by this axis' sample count; the product of the
  # two axes' counts is torchvision's `count` (max(count, 1) for empty grids
  # gives 0 either way because there are no samples).
  return weights.sum(axis=2) / safe_n[:, None, None]


@functools.partial(
    jax.jit,
    static_argnames=("output_size", "sampling_ratio", "aligned",
                     "max_adaptive_samples"))
def roi_align(features: Array,
              boxes: Array,
              output_size: int = 7,
              sampling_ratio: int = 2,
              aligned: bool = True,
              spatial_scale: float = 1.0,
              max_adaptive_samples: Optional[int] = None) -> Array:
  """ROI-align of boxes on one channels-last feature map.

  Args:
    features: (H, W, C) feature map.
    boxes: (N, 4) boxes (top, left, height, width) in feature-grid units
      (after `spatial_scale`), (row, col) order.
    output_size: side of the pooled output (7 as in the paper).
    sampling_ratio: bilinear samples per bin and axis; <= 0 for torchvision's
      adaptive ceil(roi_size / output_size).
    aligned: subtract half a cell (torchvision `aligned=True`); see module doc.
    spatial_scale: multiplies box coordinates (1.0 for grid-unit boxes).
    max_adaptive_samples: static cap on adaptive samples per bin and axis;
      defaults to what a box spanning the whole map (plus one cell) needs.
      Boxes needing more samples than the cap are under-sampled.

  Returns:
    (N, output_size, output_size, C) pooled features, dtype of `features`.
  """
  if features.ndim != 3:
    raise ValueError(f"features must be (H, W, C), got {features.shape}")
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be (N, 4), got {boxes.shape}")
  if output_size < 1:
    raise ValueError(f"output_size must be >= 1, got {output_size}")
  height, width, _ = features.shape
  dtype = jnp.promote_types(features.dtype, jnp.float32)
  boxes = boxes.astype(dtype)
  offset = 0.5 if aligned else 0.0
  top, left, box_h, box_w = (boxes[:, i] for i in range(4))
  y1 = top * spatial_scale - offset
  x1 = left * spatial_scale - offset
  y2 = (top + box_h) * spatial_scale - offset
  x2 = (left + box_w) * spatial_scale - offset
  roi_h = y2 - y1
  roi_w = x2 - x1
  if not aligned:
    roi_h = jnp.maximum(roi_h, 1.0)
    roi_w = jnp.maximum(roi_w, 1.0)
  if sampling_ratio > 0:
    max_samples = sampling_ratio
  elif max_adaptive_samples is not None:
    max_samples = int(max_adaptive_samples)
  else:
    max_samples = max(1, math.ceil((max(height, width) + 1) / output_size))
  row_w = _axis_weights(y1, roi_h, height, output_size, sampling_ratio,
                        max_samples)  # (N, P, H)
  col_w = _axis_weights(x1, roi_w, width, output_size, sampling_ratio,
                        max_samples)  # (N, Q, W)
  feats = features.astype(dtype)
  hi = jax.lax.Precision.HIGHEST
  cols = jnp.einsum("nqw,hwc->nqhc", col_w, feats, precision=hi)
  out = jnp.einsum("nph,nqhc->npqc", row_w, cols, precision=hi)
  return out.astype(features.dtype)


def roi_align_batched(features: Array,
                      boxes: Array,
                      output_size: int = 7,
                      sampling_ratio: int = 2,
                      aligned: bool = True,
                      spatial_scale: float = 1.0) -> Array:
  """ROI-align for a batch of feature maps and per-image anchor/size boxes.

  Args:
    features: (B, H, W, C).
    boxes: (B, K, M, 4) (top, left, height, width) grid-unit boxes, e.g. from
      `anchors.box_proposals` (any (B, ..., 4) works).

  Returns:
    (B, K, M, output_size, output_size, C).
  """
  if features.ndim != 4:
    raise ValueError(f"features must be (B, H, W, C), got {features.shape}")
  if boxes.ndim < 2 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
    raise ValueError(
        f"boxes must be (B, ..., 4) with B={features.shape[0]}, got {boxes.shape}")
  batch = boxes.shape[0]
  inner = boxes.shape[1:-1]
  flat = boxes.reshape(batch, -1, 4)
  fn = functools.partial(roi_align, output_size=output_size,
                         sampling_ratio=sampling_ratio, aligned=aligned,
                         spatial_scale=spatial_scale)
  out = jax.vmap(fn)(features, flat)
  return out.reshape((batch,) + inner + out.shape[2:])
