"""Resizing to the model's square and compositing an edit back at the input's size.

PIL in float ("F") mode, channel by channel; shared by `python -m maskgit.edit` and
lr_jax. Pixels where the upsampled blend mask is 0 stay bit-identical to the input.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def check_rgb(name: str, pixels: np.ndarray) -> np.ndarray:
  pixels = np.asarray(pixels)
  if pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"{name} must have shape (H, W, 3), got {pixels.shape}")
  if pixels.shape[0] < 1 or pixels.shape[1] < 1:
    raise ValueError(f"{name} is empty: shape {pixels.shape}")
  return pixels.astype(np.float32, copy=False)


def resize_channels(pixels: np.ndarray, out_hw: tuple[int, int],
                     resample: Image.Resampling,
                     box: tuple[float, float, float, float] | None = None
                     ) -> np.ndarray:
  """Resizes (h, w, C) float32 per channel with PIL in float ("F") mode.

  `box` = (left, top, right, bottom) is the source region in input pixels; PIL
  then produces exactly that window of the full-size resize.
  """
  out_h, out_w = out_hw
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]),
                                 mode="F").resize((out_w, out_h), resample,
                                                  box=box))
      for c in range(pixels.shape[-1])
  ]
  return np.stack(channels, axis=-1)


def to_model_input(pixels: np.ndarray, size: int = 256) -> np.ndarray:
  """Resizes a whole (H, W, 3) image to (size, size, 3) for the model.

  The resize is anisotropic (the aspect ratio is NOT kept: the whole photo is
  squeezed into the square so that a box on the model grid maps back to the
  original by scaling rows by H/size and columns by W/size). It uses PIL's
  bicubic filter in float precision, which widens its kernel when shrinking
  (antialiased); values are clipped back to [0, 1].
  """
  pixels = check_rgb("pixels", pixels)
  if int(size) < 1:
    raise ValueError(f"size must be positive, got {size}")
  out = resize_channels(pixels, (size, size), Image.Resampling.BICUBIC)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


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


def composite_to_original(original: np.ndarray, edited_small: np.ndarray,
                          mask_small: np.ndarray) -> np.ndarray:
  """Blends a model-size edit into the full-resolution original.

  The edit (s_h, s_w, 3) is upsampled to (H, W) bicubically and the (feathered)
  mask (s_h, s_w) or (s_h, s_w, 1) bilinearly (no overshoot, so it stays in
  [0, 1] and is exactly 0 far from the edited region). Returns
  `edit * m + original * (1 - m)` as float32 (H, W, 3) (the upsampled edit is
  clipped to [0, 1] first); pixels whose upsampled
  mask is 0 are bit-identical to `original`. Only the mask's bounding window is
  computed, so small edits on large photos are cheap.
  """
  original = check_rgb("original", original)
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
  result = original.copy()
  rows_nonzero = np.any(mask_small > 0, axis=1)
  if not np.any(rows_nonzero):
    return result
  cols_nonzero = np.any(mask_small > 0, axis=0)
  top, bottom = _support_window(rows_nonzero, small_h, height)
  left, right = _support_window(cols_nonzero, small_w, width)
  # Source window in input coordinates that yields exactly the output window.
  box = (left * small_w / width, top * small_h / height,
         right * small_w / width, bottom * small_h / height)
  window_hw = (bottom - top, right - left)
  mask = resize_channels(mask_small[..., None], window_hw,
                          Image.Resampling.BILINEAR, box)
  mask = np.clip(mask, 0.0, 1.0)
  edit = resize_channels(edited_small, window_hw, Image.Resampling.BICUBIC,
                          box)
  edit = np.clip(edit, 0.0, 1.0)
  region = original[top:bottom, left:right]
  # edit * m + region * (1 - m), written as region + m * (edit - region) in
  # place: where m == 0 this adds exactly 0, so those pixels stay bit-identical.
  np.subtract(edit, region, out=edit)
  np.multiply(edit, mask, out=edit)
  np.add(edit, region, out=edit)
  result[top:bottom, left:right] = edit
  return result
