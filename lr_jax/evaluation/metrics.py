"""Per-edit measurements on the written photo (numpy, host side).

Standalone functions, composed by `lr_jax.evaluation.runner`:
  * CLIP similarities from embeddings: text-image, image-image, directional, and the
    quality score S of the method;
  * background preservation (MSE, PSNR, SSIM) on the pixels a boolean mask keeps;
  * the edited area fraction;
  * the DINO structure distance from two self-similarity matrices;
  * region metrics of a box against an object mask.
Images are (H, W, 3) uint8 or float32 in [0, 1]; boxes are (top, left, height, width)
in pixels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage import metrics as sk_metrics

from lr_common import pixels as pixels_lib

PSNR_CAP_DB = 100.0   # the PSNR of identical pixels (MSE 0), which would be infinite


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / max(float(np.linalg.norm(x)), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  """Cosine similarity of two vectors (0 when either is zero)."""
  return float(_unit(a) @ _unit(b))


def clip_scores(edit_embed: np.ndarray, source_embed: np.ndarray, text_embed: np.ndarray,
                source_text_embed: np.ndarray, alpha: float = 2.0,
                beta: float = 1.0) -> dict[str, float]:
  """CLIP text-image similarity (edit vs prompt), image-image similarity (edit vs
  source), directional similarity (the image change vs the text change) and the
  method's quality score S = alpha * t2i + beta * i2i."""
  t2i = cosine(edit_embed, text_embed)
  i2i = cosine(edit_embed, source_embed)
  image_change = _unit(edit_embed) - _unit(source_embed)
  text_change = _unit(text_embed) - _unit(source_text_embed)
  return {"clip_t2i": t2i, "clip_i2i": i2i,
          "clip_directional": cosine(image_change, text_change),
          "quality_S": alpha * t2i + beta * i2i}


def box_mask(shape: Sequence[int], boxes: Sequence[Sequence[int]]) -> np.ndarray:
  """(H, W) bool: True inside any of the boxes (clipped to the image)."""
  mask = np.zeros(tuple(shape[:2]), bool)
  for top, left, height, width in boxes:
    top, left = max(int(top), 0), max(int(left), 0)
    mask[top:max(int(top + height), top), left:max(int(left + width), left)] = True
  return mask


def _float(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  return pixels_lib.to_float(image) if image.dtype == np.uint8 else image.astype(np.float32)


def background_metrics(result: np.ndarray, source: np.ndarray,
                       keep: np.ndarray) -> dict[str, float | None]:
  """MSE, PSNR (dB, data range 1, capped at PSNR_CAP_DB) and SSIM over the pixels
  where `keep` (H, W) is True; None each when no pixel is kept.

  SSIM is scikit-image's (7x7 uniform window, per channel, averaged) on both images
  with the other pixels set to 0, as PIE-Bench masks them, averaged over the kept
  pixels: an unchanged background scores 1 even next to the edit."""
  keep = np.asarray(keep, bool)
  if result.shape != source.shape or keep.shape != result.shape[:2]:
    raise ValueError(f"result {result.shape}, source {source.shape} and mask {keep.shape} "
                     "must have the same (H, W)")
  if not keep.any():
    return {"bg_mse": None, "bg_psnr": None, "bg_ssim": None}
  a, b = _float(result), _float(source)
  mse = float(np.mean(np.square(a[keep].astype(np.float64) - b[keep])))
  psnr = PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else float(-10 * np.log10(mse))
  ssim = None
  if min(a.shape[:2]) >= 7:   # SSIM's window needs 7 pixels per side
    hidden = ~keep[..., None]
    _, ssim_map = sk_metrics.structural_similarity(
        np.where(hidden, 0.0, a), np.where(hidden, 0.0, b), channel_axis=-1, data_range=1.0,
        full=True)
    ssim = float(ssim_map.mean(axis=-1)[keep].mean())
  return {"bg_mse": mse, "bg_psnr": psnr, "bg_ssim": ssim}


def changed_fraction(result: np.ndarray, source: np.ndarray) -> float:
  """Share of the pixels where any channel of the written photo differs from the source
  (compared in the result's dtype)."""
  result = np.asarray(result)
  source = np.asarray(source)
  if source.dtype != result.dtype:
    source = pixels_lib.to_uint8(source) if result.dtype == np.uint8 else _float(source)
  changed = 0
  for top, bottom in pixels_lib.strips(len(result)):
    changed += int(np.any(result[top:bottom] != source[top:bottom], axis=-1).sum())
  return changed / float(result.shape[0] * result.shape[1])


def self_similarity(tokens: np.ndarray) -> np.ndarray:
  """(T, D) tokens -> (T, T) cosine self-similarity."""
  unit = np.asarray(tokens, np.float64)
  unit = unit / np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
  return unit @ unit.T


def structure_distance(source_sim: np.ndarray, edit_sim: np.ndarray) -> float:
  """PIE-Bench's structure distance: the mean squared difference of two DINO
  self-similarity matrices (of the last layer's keys; 0 = the same structure)."""
  return float(np.mean(np.square(np.asarray(source_sim, np.float64) - edit_sim)))


def mask_bbox(mask: np.ndarray) -> list[int] | None:
  """[top, left, height, width] of the True pixels of an (H, W) mask (None: empty)."""
  rows, cols = np.flatnonzero(np.any(mask, 1)), np.flatnonzero(np.any(mask, 0))
  if not rows.size:
    return None
  return [int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two (top, left, height, width) boxes."""
  top, left = max(a[0], b[0]), max(a[1], b[1])
  bottom, right = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
  inter = max(bottom - top, 0) * max(right - left, 0)
  union = a[2] * a[3] + b[2] * b[3] - inter
  return float(inter / union) if union > 0 else 0.0


def region_metrics(mask: np.ndarray, box: Sequence[int],
                   anchors: dict[str, Sequence[float]]) -> dict[str, float | bool | None]:
  """How a chosen box (pixels) sits on an object mask (H, W) bool.

  box_iou_mask_bbox: IoU with the mask's bounding box; mask_covered: share of the
  mask's pixels inside the box; box_on_mask: share of the box's pixels on the mask;
  `<name>_in_mask` for each anchor (row, col) in pixels: whether it falls on the mask.
  """
  mask = np.asarray(mask, bool)
  inside = box_mask(mask.shape, [box])
  area_mask, area_box = int(mask.sum()), int(inside.sum())
  overlap = int((mask & inside).sum())
  bbox = mask_bbox(mask)
  out = {"box_iou_mask_bbox": box_iou(box, bbox) if bbox else None,
         "mask_covered": overlap / area_mask if area_mask else None,
         "box_on_mask": overlap / area_box if area_box else None}
  for name, (row, col) in anchors.items():
    r, c = int(np.floor(row)), int(np.floor(col))
    out[f"{name}_in_mask"] = bool(0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]
                                  and mask[r, c])
  return out
