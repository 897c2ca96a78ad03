"""Object masks for the evaluation's region metrics: a mask image per manifest row, or
PIE-Bench's run-length masks. Every problem is found before any edit runs."""
from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from lr_common.errors import UserError
from lr_jax.files import manifest as manifest_lib
from lr_jax.files import pie_bench


class MaskError(UserError, ValueError):
  """An object mask that cannot be used (the message lists every one)."""


def _read_mask_image(path) -> np.ndarray:
  """White (grey >= 128) is the object; an image with transparency uses its alpha."""
  with Image.open(path) as image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
      return np.asarray(image.convert("RGBA"))[..., 3] >= 128
    return np.asarray(image.convert("L")) >= 128


def load_mask(example: manifest_lib.Example, image_hw: tuple[int, int]) -> np.ndarray | None:
  """(H, W) bool object mask of an example (None: it has none); it must have the
  image's size."""
  if example.mask_rle is not None:
    if tuple(image_hw) != pie_bench.MASK_SHAPE:
      raise MaskError(f"{example.image_path}: PIE-Bench masks are 512x512, the image is "
                      f"{image_hw[1]}x{image_hw[0]}")
    mask = pie_bench.decode_rle(example.mask_rle)
  elif example.mask_path is not None:
    try:
      mask = _read_mask_image(example.mask_path)
    except (OSError, UnidentifiedImageError) as e:
      raise MaskError(f"{example.mask_path}: cannot be read as a mask image ({e})") from None
    if mask.shape != tuple(image_hw):
      raise MaskError(f"{example.mask_path}: the mask is {mask.shape[1]}x{mask.shape[0]}, "
                      f"its image {example.image_path.name} is {image_hw[1]}x{image_hw[0]}")
  else:
    return None
  if not mask.any():
    where = example.mask_path or f"the run-length mask of {example.image_path.name}"
    raise MaskError(f"{where}: the mask is empty (no object pixel)")
  return mask


def load_masks(examples: list[manifest_lib.Example],
               image_hws: list[tuple[int, int]]) -> list[np.ndarray | None]:
  """Every example's mask, all problems reported together in one MaskError."""
  masks, problems = [], []
  for example, hw in zip(examples, image_hws):
    try:
      masks.append(load_mask(example, hw))
    except MaskError as e:
      problems.append(str(e))
      masks.append(None)
  if problems:
    raise MaskError(f"{len(problems)} unusable object mask(s):\n  " + "\n  ".join(problems))
  return masks
