"""Image input/output: loading with clear errors and saving. Resizing to the model
size and compositing an edit back are `lr_common.pixels`.

Pixels are float32 RGB in [0, 1], laid out (H, W, 3) (one image) as the rest of
lr_jax expects (NHWC once batched).
"""
from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lr_common.errors import UserError

SUPPORTED_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
)
_SAVE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageError(UserError, ValueError):
  """A file cannot be used as an input image (message names file and reason)."""


@dataclasses.dataclass
class LoadedImage:
  """An image at its original resolution.

  pixels: float32 (H, W, 3) in [0, 1], EXIF orientation already applied.
  path: the file it came from.
  original_mode: the PIL mode of the file ("RGB", "L", "I;16", "CMYK", ...).
  notes: human-readable conversions that were applied (empty for plain RGB).
  """
  pixels: np.ndarray
  path: pathlib.Path
  original_mode: str
  notes: list[str]

  @property
  def height(self) -> int:
    return int(self.pixels.shape[0])

  @property
  def width(self) -> int:
    return int(self.pixels.shape[1])


def _composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  alpha = alpha[..., None]
  return rgb * alpha + (1.0 - alpha)


def _alpha_note(alpha: np.ndarray, mode: str) -> str | None:
  if np.all(alpha >= 1.0):
    return None
  return f"{mode} image with transparency composited over white"


def _to_rgb_float(img: Image.Image, notes: list[str]) -> np.ndarray:
  """Converts a decoded PIL image of any common mode to float32 RGB [0, 1]."""
  mode = img.mode
  if mode == "RGB":
    return np.asarray(img, dtype=np.float32) / 255.0
  if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
      mode == "P" and "transparency" in img.info):
    if mode in ("RGBa", "La"):  # premultiplied alpha: undo it via PIL first
      img = img.convert("RGBA" if mode == "RGBa" else "LA")
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3]
    note = _alpha_note(alpha, mode)
    if note:
      notes.append(note)
    elif mode != "RGBA":
      notes.append(f"{mode} image converted to RGB (alpha was fully opaque)")
    if mode in ("LA", "La"):
      notes.append("grayscale image replicated to RGB")
    return _composite_over_white(rgba[..., :3], alpha).astype(np.float32)
  if mode in ("L", "1", "P"):
    kind = {"L": "grayscale (L)", "1": "1-bit black/white",
            "P": "palette (P)"}[mode]
    notes.append(f"{kind} image converted to RGB")
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
  if mode.startswith("I;16"):
    gray = np.asarray(img).astype(np.float32) / 65535.0
    notes.append(f"16-bit grayscale ({mode}) scaled by 1/65535 and "
                 "replicated to RGB")
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode in ("I", "F"):
    data = np.asarray(img).astype(np.float64)
    if not np.all(np.isfinite(data)):
      raise ValueError(f"{mode} image contains NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
      gray = data
      notes.append("float grayscale (F) in [0, 1] replicated to RGB")
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
      gray = data / 65535.0
      notes.append("32-bit integer grayscale (I) with values in the 16-bit "
                   "range scaled by 1/65535 and replicated to RGB")
    else:
      gray = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
      notes.append(f"{mode} grayscale with range [{lo:g}, {hi:g}] rescaled "
                   "min-max to [0, 1] and replicated to RGB")
    return np.repeat(gray.astype(np.float32)[..., None], 3, axis=-1)
  if mode == "CMYK":
    notes.append("CMYK image converted to RGB (naive conversion, no ICC)")
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
  try:
    converted = img.convert("RGB")
  except (ValueError, OSError) as e:
    raise ValueError(f"unsupported image mode {mode!r}") from e
  notes.append(f"{mode} image converted to RGB")
  return np.asarray(converted, dtype=np.float32) / 255.0


def _check_size(path: pathlib.Path, width: int, height: int, min_side: int,
                max_side: int) -> None:
  if min(width, height) < min_side or max(width, height) > max_side:
    raise ImageError(
        f"{path}: image is {width}x{height} (width x height); each side must "
        f"be between {min_side} and {max_side} pixels")


def load_image(path: str | pathlib.Path, min_side: int = 64,
               max_side: int = 10000) -> LoadedImage:
  """Reads an image file as float32 RGB in [0, 1] at its original resolution.

  Grayscale, palette, 1-bit, 16-bit, float, CMYK and transparent images are
  converted (transparency composited over white); EXIF orientation is applied.
  Each conversion is described in `notes`. The size limits are checked from the
  header, before any pixel is decoded.

  Raises:
    ImageError: missing file, not an image, truncated/corrupt data, or a side
      outside [min_side, max_side].
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise ImageError(f"{path}: file does not exist")
  if not path.is_file():
    raise ImageError(f"{path}: not a regular file")
  notes: list[str] = []
  try:
    with warnings.catch_warnings():
      # The side limits below replace PIL's pixel-count warning.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(path)
  except Image.DecompressionBombError as e:
    raise ImageError(
        f"{path}: image is far too large to decode ({e}); each side must be "
        f"between {min_side} and {max_side} pixels") from e
  except UnidentifiedImageError as e:
    raise ImageError(
        f"{path}: not a recognised image file (supported: "
        f"{', '.join(SUPPORTED_EXTENSIONS)})") from e
  except OSError as e:
    raise ImageError(f"{path}: cannot be read ({e})") from e
  with img:
    original_mode = img.mode
    width, height = img.size
    _check_size(path, width, height, min_side, max_side)
    n_frames = getattr(img, "n_frames", 1)
    try:
      img.load()
      orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
      if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        notes.append(f"EXIF orientation {orientation} applied "
                     f"(now {img.size[0]}x{img.size[1]})")
    except (OSError, SyntaxError, EOFError, ValueError) as e:
      raise ImageError(
          f"{path}: image data is truncated or corrupt ({e})") from e
    try:
      pixels = _to_rgb_float(img, notes)
    except (OSError, ValueError) as e:
      raise ImageError(f"{path}: cannot convert to RGB ({e})") from e
  if n_frames > 1:
    notes.append(f"used the first of {n_frames} frames")
  pixels = np.clip(np.ascontiguousarray(pixels, dtype=np.float32), 0.0, 1.0)
  return LoadedImage(pixels=pixels, path=path, original_mode=original_mode,
                     notes=notes)


def save_image(path: str | pathlib.Path, pixels: np.ndarray) -> pathlib.Path:
  """Writes float [0, 1] pixels (H, W, 3), (H, W, 1) or (H, W) to a file.

  The format follows the extension (PNG, JPEG at quality 95, BMP, TIFF, WEBP);
  parent folders are created. Values are clipped to [0, 1] and rounded to 8 bit.
  """
  path = pathlib.Path(path)
  fmt = _SAVE_FORMATS.get(path.suffix.lower())
  if fmt is None:
    raise ImageError(f"{path}: unsupported extension {path.suffix!r}; use one "
                     f"of {', '.join(sorted(_SAVE_FORMATS))}")
  pixels = np.asarray(pixels)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3)):
    raise ValueError(
        f"pixels must have shape (H, W, 3), (H, W, 1) or (H, W), got "
        f"{pixels.shape}")
  if not np.all(np.isfinite(pixels)):
    raise ValueError(f"{path}: pixels contain NaN or infinite values")
  data = np.round(np.clip(pixels.astype(np.float32), 0.0, 1.0) * 255.0)
  path.parent.mkdir(parents=True, exist_ok=True)
  options = {"quality": 95} if fmt == "JPEG" else {}
  Image.fromarray(data.astype(np.uint8)).save(path, format=fmt, **options)
  return path


def list_images(folder: str | pathlib.Path,
                extensions: Sequence[str] = SUPPORTED_EXTENSIONS
                ) -> list[pathlib.Path]:
  """Sorted image files (by extension, case-insensitive) directly in `folder`.

  Hidden files (leading '.') are skipped; sub-folders are not searched.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ImageError(f"{folder}: not an existing folder")
  wanted = {e.lower() for e in extensions}
  return sorted(p for p in folder.iterdir()
                if p.is_file() and not p.name.startswith(".")
                and p.suffix.lower() in wanted)
