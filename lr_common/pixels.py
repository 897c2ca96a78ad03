"""Resizing to the model's square and compositing an edit back at the input's size.

Full-resolution pixels are (H, W, 3) float32 in [0, 1] or, compactly, uint8, where a
value v stands for float32(v) / 255 (what `lr_common.image_files.load_image` keeps for
8-bit files). Both give the same numbers: a uint8 image is converted to float a strip of
rows at a time (`STRIP_ROWS`), never as a whole, so a 10000x10000 photo costs its 300 MB
rather than 1.2 GB per float copy.

PIL in float ("F") mode, channel by channel; shared by `python -m maskgit.edit` and
lr_jax. Pixels where the upsampled blend mask is 0 stay bit-identical to the input.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

STRIP_ROWS = 256  # rows converted at a time: temporaries stay a strip, not a frame

_U8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def strips(count: int, rows: int | None = None) -> Iterator[tuple[int, int]]:
  """[start, stop) ranges covering range(count) in steps of `rows` (`STRIP_ROWS`)."""
  rows = STRIP_ROWS if rows is None else rows
  for start in range(0, count, rows):
    yield start, min(start + rows, count)


def check_rgb(name: str, pixels: np.ndarray) -> np.ndarray:
  """(H, W, 3) pixels as float32 (no copy when they already are)."""
  return _check_image(name, pixels, keep_uint8=False)


def _check_image(name: str, pixels: np.ndarray, keep_uint8: bool = True
                 ) -> np.ndarray:
  pixels = np.asarray(pixels)
  if pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"{name} must have shape (H, W, 3), got {pixels.shape}")
  if pixels.shape[0] < 1 or pixels.shape[1] < 1:
    raise ValueError(f"{name} is empty: shape {pixels.shape}")
  if keep_uint8 and pixels.dtype == np.uint8:
    return pixels
  return pixels.astype(np.float32, copy=False)


def to_float(pixels: np.ndarray) -> np.ndarray:
  """uint8 -> float32 v / 255 (a new array); other dtypes as float32 (no copy when
  already float32). Any shape."""
  pixels = np.asarray(pixels)
  if pixels.dtype == np.uint8:
    return _U8_TO_FLOAT[pixels]
  return pixels.astype(np.float32, copy=False)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Float pixels in [0, 1] -> uint8 as they are written to files: rounded
  `clip(x, 0, 1) * 255` in float32, a strip of rows at a time. uint8 is returned as is.
  Any shape of at least one axis."""
  pixels = np.asarray(pixels)
  if pixels.dtype == np.uint8:
    return pixels
  out = np.empty(pixels.shape, np.uint8)
  for start, stop in strips(len(pixels)):
    part = np.array(pixels[start:stop], dtype=np.float32)
    np.clip(part, 0.0, 1.0, out=part)
    np.multiply(part, np.float32(255.0), out=part)
    np.round(part, out=part)
    out[start:stop] = part
  return out


def _channel_image(pixels: np.ndarray, channel: int) -> Image.Image:
  """One channel of (H, W, 3) uint8 or float pixels as a PIL "F" image, filled a strip
  at a time (no full-size float array besides the image itself)."""
  height, width = pixels.shape[:2]
  image = Image.new("F", (width, height))
  for top, bottom in strips(height):
    part = np.ascontiguousarray(to_float(pixels[top:bottom, :, channel]))
    image.paste(Image.fromarray(part), (0, top))
  return image


def _image_rows(image: Image.Image, top: int, bottom: int) -> np.ndarray:
  """Rows [top, bottom) of a PIL "F" image as a writable float32 array."""
  return np.array(image.crop((0, top, image.width, bottom)), dtype=np.float32)


def _resize_plane(plane: np.ndarray, out_hw: tuple[int, int],
                  resample: Image.Resampling,
                  box: tuple[float, float, float, float] | None = None
                  ) -> Image.Image:
  out_h, out_w = out_hw
  return Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
      (out_w, out_h), resample, box=box)


def resize_channels(pixels: np.ndarray, out_hw: tuple[int, int],
                     resample: Image.Resampling,
                     box: tuple[float, float, float, float] | None = None
                     ) -> np.ndarray:
  """Resizes (h, w, C) float32 per channel with PIL in float ("F") mode.

  `box` = (left, top, right, bottom) is the source region in input pixels; PIL
  then produces exactly that window of the full-size resize.
  """
  return np.stack([np.asarray(_resize_plane(pixels[..., c], out_hw, resample, box))
                   for c in range(pixels.shape[-1])], axis=-1)


def to_model_input(pixels: np.ndarray, size: int = 256) -> np.ndarray:
  """Resizes a whole (H, W, 3) image (float32 in [0, 1] or uint8) to (size, size, 3)
  float32 for the model.

  The resize is anisotropic (the aspect ratio is NOT kept: the whole photo is
  squeezed into the square so that a box on the model grid maps back to the
  original by scaling rows by H/size and columns by W/size); `resize_image` does it.
  The geometry-preserving canvas is `lr_common.canvas`.
  """
  if int(size) < 1:
    raise ValueError(f"size must be positive, got {size}")
  return resize_image(pixels, (int(size), int(size)))


def resize_image(pixels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Resizes a whole (H, W, 3) image (float32 in [0, 1] or uint8) to (h, w, 3) float32.

  PIL's bicubic filter in float precision, which widens its kernel when shrinking
  (antialiased); values are clipped back to [0, 1]. A uint8 image gives exactly the
  numbers of its float32 version (v / 255), without a full-size float copy.
  """
  pixels = _check_image("pixels", pixels)
  out_h, out_w = (int(v) for v in out_hw)
  if out_h < 1 or out_w < 1:
    raise ValueError(f"out_hw must be positive, got {out_hw}")
  out = np.empty((out_h, out_w, 3), np.float32)
  for c in range(3):
    channel = _channel_image(pixels, c)
    out[..., c] = np.asarray(channel.resize((out_w, out_h), Image.Resampling.BICUBIC))
    channel.close()
  return np.clip(out, 0.0, 1.0, out=out)


def _support_window(nonzero: np.ndarray, small: int, big: int
                    ) -> tuple[int, int]:
  """Output index range [lo, hi) whose bilinear upsample can touch `nonzero`."""
  idx = np.flatnonzero(nonzero)
  scale = big / small
  # Output pixel i samples input coordinate (i + 0.5) / scale - 0.5 and reads
  # the two neighbouring input pixels; one extra input pixel of margin.
  lo = int(np.floor((idx[0] - 1) * scale)) - 1
  hi = int(np.ceil((idx[-1] + 2) * scale)) + 1
  return max(lo, 0), min(hi, big)


def composite_window(mask_small: np.ndarray, out_hw: tuple[int, int]
                     ) -> tuple[int, int, int, int] | None:
  """(top, bottom, left, right) of the (H, W) = `out_hw` pixels that
  `composite_to_original` computes for this model-size mask (None: all-zero mask).
  Outside it the upsampled mask is exactly 0."""
  mask_small = np.asarray(mask_small)
  if mask_small.ndim == 3 and mask_small.shape[-1] == 1:
    mask_small = mask_small[..., 0]
  rows_nonzero = np.any(mask_small > 0, axis=1)
  if not np.any(rows_nonzero):
    return None
  cols_nonzero = np.any(mask_small > 0, axis=0)
  top, bottom = _support_window(rows_nonzero, mask_small.shape[0], out_hw[0])
  left, right = _support_window(cols_nonzero, mask_small.shape[1], out_hw[1])
  return top, bottom, left, right


def _full_copy(original: np.ndarray, dtype: np.dtype) -> np.ndarray:
  if original.dtype == dtype:
    return original.copy()
  out = np.empty(original.shape, dtype)
  for top, bottom in strips(len(original)):
    part = original[top:bottom]
    out[top:bottom] = to_uint8(part) if dtype == np.uint8 else to_float(part)
  return out


def limit_weights(count: int, start: int, stop: int, margin: int) -> np.ndarray:
  """(count,) float32 weights of a feather limit along one axis: 1 on [start, stop) and up
  to margin // 2 pixels past it, then a linear ramp that reaches 0 at `margin` pixels
  past it (and stays 0 beyond)."""
  index = np.arange(count)
  past = np.maximum(np.maximum(start - index, index - (stop - 1)), 0)
  half = margin // 2
  ramp = (margin - past) / max(margin - half, 1)
  return np.where(past <= half, 1.0, np.clip(ramp, 0.0, 1.0)).astype(np.float32)


def composite_to_original(original: np.ndarray, edited_small: np.ndarray,
                          mask_small: np.ndarray, dtype=None,
                          limit: tuple[tuple[int, int, int, int], tuple[int, int]] | None = None
                          ) -> np.ndarray:
  """Blends a model-size edit into the full-resolution original.

  The edit (s_h, s_w, 3) is upsampled to (H, W) bicubically and the (feathered)
  mask (s_h, s_w) or (s_h, s_w, 1) bilinearly (no overshoot, so it stays in
  [0, 1] and is exactly 0 far from the edited region). The blend is
  `edit * m + original * (1 - m)` in float32 (the upsampled edit is clipped to
  [0, 1] first; a uint8 original counts as v / 255).

  `original` is (H, W, 3) float32 in [0, 1] or uint8. The result has `dtype`
  (default: the original's): float32, or uint8 rounded as `to_uint8` (the numbers
  `image_files.save_image` writes for the float result). Pixels whose upsampled
  mask is 0 are bit-identical to `original` (for a float original and a uint8
  result: to `to_uint8(original)`). Only the mask's bounding window
  (`composite_window`) is computed, a strip of rows at a time, so small edits on
  large photos are cheap and no float copy of the frame is made.

  `limit` = ((top, left, height, width), (margin_rows, margin_cols)) in original pixels
  bounds the feather: the upsampled mask is multiplied by `limit_weights` along each axis,
  so no pixel `margin` or more rows (columns) past the box changes, and where the mask is
  already 0 wherever a weight is below 1 the result is the same as without a limit.
  """
  original = _check_image("original", original)
  out_dtype = original.dtype if dtype is None else np.dtype(dtype)
  if out_dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
    raise ValueError(f"dtype must be uint8 or float32, got {out_dtype}")
  edited_small = check_rgb("edited_small", edited_small)
  mask_small = np.asarray(mask_small, dtype=np.float32)
  if mask_small.ndim == 3 and mask_small.shape[-1] == 1:
    mask_small = mask_small[..., 0]
  if mask_small.shape != edited_small.shape[:2]:
    raise ValueError(
        f"mask_small must have shape {edited_small.shape[:2]} or "
        f"{edited_small.shape[:2] + (1,)} to match edited_small, got "
        f"{np.shape(mask_small)}")
  if not (np.all(np.isfinite(mask_small)) and np.all(np.isfinite(edited_small))):
    raise ValueError("edited_small and mask_small must be finite")
  mask_small = np.clip(mask_small, 0.0, 1.0)
  height, width = original.shape[:2]
  small_h, small_w = mask_small.shape
  result = _full_copy(original, out_dtype)
  window = composite_window(mask_small, (height, width))
  if window is None:
    return result
  top, bottom, left, right = window
  if limit is not None:
    (box_t, box_l, box_h, box_w), (margin_r, margin_c) = limit
    top, bottom = max(top, box_t - margin_r), min(bottom, box_t + box_h + margin_r)
    left, right = max(left, box_l - margin_c), min(right, box_l + box_w + margin_c)
    if top >= bottom or left >= right:
      return result
    row_weights = limit_weights(height, box_t, box_t + box_h, margin_r)[top:bottom, None]
    col_weights = limit_weights(width, box_l, box_l + box_w, margin_c)[None, left:right]
  # Source window in input coordinates that yields exactly the output window.
  box = (left * small_w / width, top * small_h / height,
         right * small_w / width, bottom * small_h / height)
  window_hw = (bottom - top, right - left)
  mask = _resize_plane(mask_small, window_hw, Image.Resampling.BILINEAR, box)
  for c in range(3):
    edit = _resize_plane(edited_small[..., c], window_hw, Image.Resampling.BICUBIC,
                         box)
    for r0, r1 in strips(bottom - top):
      rows = slice(top + r0, top + r1)
      m = np.clip(_image_rows(mask, r0, r1), 0.0, 1.0)
      if limit is not None:
        m *= row_weights[r0:r1] * col_weights
      e = np.clip(_image_rows(edit, r0, r1), 0.0, 1.0)
      region = to_float(original[rows, left:right, c])
      # edit * m + region * (1 - m), written as region + m * (edit - region): where
      # m == 0 this adds exactly 0, so those pixels stay bit-identical.
      np.subtract(e, region, out=e)
      np.multiply(e, m, out=e)
      np.add(e, region, out=e)
      result[rows, left:right, c] = to_uint8(e) if out_dtype == np.uint8 else e
    edit.close()
  mask.close()
  return result


def changed_region(result: np.ndarray, original: np.ndarray) -> list[int] | None:
  """[top, left, height, width] bounding the pixels where `result` differs from
  `original` (None: none differs), compared a strip of rows at a time in `result`'s
  dtype (a float original is rounded by `to_uint8` for a uint8 result)."""
  result, original = np.asarray(result), np.asarray(original)
  if result.shape != original.shape:
    raise ValueError(f"result {result.shape} and original {original.shape} differ in "
                     "shape")
  rows = np.zeros(result.shape[0], bool)
  cols = np.zeros(result.shape[1], bool)
  for top, bottom in strips(len(result)):
    a, b = result[top:bottom], original[top:bottom]
    if a.dtype != b.dtype:
      b = to_uint8(b) if a.dtype == np.uint8 else to_float(b)
    changed = a != b
    if changed.ndim == 3:
      changed = np.any(changed, axis=-1)
    rows[top:bottom] = changed.any(1)
    cols |= changed.any(0)
  r, c = np.flatnonzero(rows), np.flatnonzero(cols)
  if not r.size:
    return None
  return [int(r[0]), int(c[0]), int(r[-1] - r[0] + 1), int(c[-1] - c[0] + 1)]
