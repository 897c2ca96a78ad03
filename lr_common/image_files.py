"""Image input/output: loading with clear errors and saving. Resizing to the model
size and compositing an edit back are `lr_common.pixels`.

A loaded image keeps its full resolution compactly (`LoadedImage.original`): uint8
for 8-bit files, float32 RGB in [0, 1] only where 8 bits cannot hold the values
(16-bit, 32-bit and float files, transparency composited over white). As floats the
pixels are (H, W, 3) in [0, 1] (`LoadedImage.pixels`), as the rest of lr_jax expects
(NHWC once batched). Decoded files are converted a strip of rows at a time.
"""
from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lr_common import pixels as pixels_lib
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

  original: (H, W, 3), EXIF orientation already applied; uint8 (v stands for
    v / 255) for 8-bit sources without transparency (RGB, grayscale, palette,
    1-bit, CMYK, opaque RGBA), else float32 in [0, 1] (16-bit, 32-bit and float
    sources; transparency composited over white). A 10000x10000 photo holds 300 MB.
    `lr_common.pixels` resizes and composites either kind without a float copy.
  path: the file it came from.
  original_mode: the PIL mode of the file ("RGB", "L", "I;16", "CMYK", ...).
  notes: human-readable conversions that were applied (empty for plain RGB).
  """
  original: np.ndarray
  path: pathlib.Path
  original_mode: str
  notes: list[str]

  @property
  def pixels(self) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1]. For a uint8 `original` this is a new full-size
    array on every access (4 bytes per channel: 1.2 GB at 10000x10000); large images
    are better passed as `original` to `lr_common.pixels`."""
    return pixels_lib.to_float(self.original)

  @property
  def height(self) -> int:
    return int(self.original.shape[0])

  @property
  def width(self) -> int:
    return int(self.original.shape[1])


def _composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  alpha = alpha[..., None]
  return rgb * alpha + (1.0 - alpha)


def _rows(img: Image.Image, convert: Callable[[Image.Image], np.ndarray],
          dtype) -> np.ndarray:
  """(H, W, 3) `dtype` array filled a strip of rows at a time with `convert(strip)`."""
  width, height = img.size
  out = np.empty((height, width, 3), dtype)
  for top, bottom in pixels_lib.strips(height):
    out[top:bottom] = convert(img.crop((0, top, width, bottom)))
  return out


def _as_float_rgb(gray: np.ndarray) -> np.ndarray:
  gray = np.clip(gray.astype(np.float32), 0.0, 1.0)
  return np.repeat(gray[..., None], 3, axis=-1)


def _to_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
  """Converts a decoded PIL image of any common mode to `LoadedImage.original`.

  The float values are those of converting the whole image to float32 RGB in
  [0, 1] at once; uint8 is used wherever they are exactly v / 255.
  """
  mode = img.mode
  width, height = img.size
  if mode == "RGB":
    return _rows(img, np.asarray, np.uint8)
  if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
      mode == "P" and "transparency" in img.info):
    def rgba(strip: Image.Image) -> np.ndarray:
      if mode in ("RGBa", "La"):  # premultiplied alpha: undo it via PIL first
        strip = strip.convert("RGBA" if mode == "RGBa" else "LA")
      return np.asarray(strip.convert("RGBA"))
    opaque = all(np.all(rgba(img.crop((0, top, width, bottom)))[..., 3] == 255)
                 for top, bottom in pixels_lib.strips(height))
    if not opaque:
      notes.append(f"{mode} image with transparency composited over white")
    elif mode != "RGBA":
      notes.append(f"{mode} image converted to RGB (alpha was fully opaque)")
    if mode in ("LA", "La"):
      notes.append("grayscale image replicated to RGB")
    if opaque:  # rgb * 1 + 0: exactly the 8-bit values
      return _rows(img, lambda strip: rgba(strip)[..., :3], np.uint8)

    def over_white(strip: Image.Image) -> np.ndarray:
      values = rgba(strip).astype(np.float32) / 255.0
      rgb = _composite_over_white(values[..., :3], values[..., 3])
      return np.clip(rgb.astype(np.float32), 0.0, 1.0)
    return _rows(img, over_white, np.float32)
  if mode in ("L", "1", "P"):
    kind = {"L": "grayscale (L)", "1": "1-bit black/white",
            "P": "palette (P)"}[mode]
    notes.append(f"{kind} image converted to RGB")
    return _rows(img, lambda strip: np.asarray(strip.convert("RGB")), np.uint8)
  if mode.startswith("I;16"):
    notes.append(f"16-bit grayscale ({mode}) scaled by 1/65535 and "
                 "replicated to RGB")
    return _rows(img, lambda strip: _as_float_rgb(
        np.asarray(strip).astype(np.float32) / 65535.0), np.float32)
  if mode in ("I", "F"):
    lo, hi = np.inf, -np.inf
    for top, bottom in pixels_lib.strips(height):
      data = np.asarray(img.crop((0, top, width, bottom))).astype(np.float64)
      if not np.all(np.isfinite(data)):
        raise ValueError(f"{mode} image contains NaN or infinite values")
      lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
      scale = lambda data: data
      notes.append("float grayscale (F) in [0, 1] replicated to RGB")
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
      scale = lambda data: data / 65535.0
      notes.append("32-bit integer grayscale (I) with values in the 16-bit "
                   "range scaled by 1/65535 and replicated to RGB")
    else:
      scale = lambda data: ((data - lo) / (hi - lo) if hi > lo
                            else np.zeros_like(data))
      notes.append(f"{mode} grayscale with range [{lo:g}, {hi:g}] rescaled "
                   "min-max to [0, 1] and replicated to RGB")
    return _rows(img, lambda strip: _as_float_rgb(
        scale(np.asarray(strip).astype(np.float64))), np.float32)
  if mode == "CMYK":
    notes.append("CMYK image converted to RGB (naive conversion, no ICC)")
    return _rows(img, lambda strip: np.asarray(strip.convert("RGB")), np.uint8)
  try:
    converted = _rows(img, lambda strip: np.asarray(strip.convert("RGB")),
                      np.uint8)
  except (ValueError, OSError) as e:
    raise ValueError(f"unsupported image mode {mode!r}") from e
  notes.append(f"{mode} image converted to RGB")
  return converted


def _check_size(path: pathlib.Path, width: int, height: int, min_side: int,
                max_side: int) -> None:
  if min(width, height) < min_side or max(width, height) > max_side:
    raise ImageError(
        f"{path}: image is {width}x{height} (width x height); each side must "
        f"be between {min_side} and {max_side} pixels")


MIN_SIDE = 64        # pixels: a smaller photo cannot give the method's box proposals
MAX_SIDE = 10000     # pixels: a 10000 x 10000 photo already holds 300 MB


def load_image(path: str | pathlib.Path, min_side: int = MIN_SIDE,
               max_side: int = MAX_SIDE) -> LoadedImage:
  """Reads an image file at its original resolution (`LoadedImage.original`: uint8
  for 8-bit files, float32 RGB in [0, 1] where 8 bits cannot hold the values).

  Grayscale, palette, 1-bit, 16-bit, float, CMYK and transparent images are
  converted (transparency composited over white); EXIF orientation is applied.
  Each conversion is described in `notes`. The size limits are checked from the
  header, before any pixel is decoded. Besides the result, only the decoded PIL
  image and a strip of rows are held while converting.

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
    decoded = img
    try:
      decoded.load()
      orientation = decoded.getexif().get(_EXIF_ORIENTATION_TAG, 1)
      if orientation not in (1, None):
        decoded = ImageOps.exif_transpose(img)
        img.close()  # frees the unrotated copy
        notes.append(f"EXIF orientation {orientation} applied "
                     f"(now {decoded.size[0]}x{decoded.size[1]})")
    except (OSError, SyntaxError, EOFError, ValueError) as e:
      raise ImageError(
          f"{path}: image data is truncated or corrupt ({e})") from e
    try:
      original = _to_rgb(decoded, notes)
    except (OSError, ValueError) as e:
      raise ImageError(f"{path}: cannot convert to RGB ({e})") from e
    finally:
      decoded.close()
  if n_frames > 1:
    notes.append(f"used the first of {n_frames} frames")
  return LoadedImage(original=original, path=path, original_mode=original_mode,
                     notes=notes)


def save_image(path: str | pathlib.Path, pixels: np.ndarray) -> pathlib.Path:
  """Writes pixels (H, W, 3), (H, W, 1) or (H, W) to a file: uint8 as they are,
  floats in [0, 1] clipped and rounded to 8 bit (`lr_common.pixels.to_uint8`).

  The format follows the extension (PNG, JPEG at quality 95, BMP, TIFF, WEBP);
  parent folders are created.
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
  if pixels.dtype != np.uint8 and not all(
      np.all(np.isfinite(pixels[top:bottom]))
      for top, bottom in pixels_lib.strips(len(pixels))):
    raise ValueError(f"{path}: pixels contain NaN or infinite values")
  data = np.ascontiguousarray(pixels_lib.to_uint8(pixels))
  path.parent.mkdir(parents=True, exist_ok=True)
  options = {"quality": 95} if fmt == "JPEG" else {}
  Image.fromarray(data).save(path, format=fmt, **options)
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


def load_images(paths: list[str | pathlib.Path]) -> list[LoadedImage]:
  """Loads every image; all unusable ones are reported together in one ImageError."""
  loaded, problems = [], []
  for path in paths:
    try:
      loaded.append(load_image(path))
    except ImageError as e:
      problems.append(str(e))
  if problems:
    raise ImageError("Some images cannot be used:\n  " + "\n  ".join(problems))
  return loaded
