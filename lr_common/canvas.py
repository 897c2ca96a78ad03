"""Where a photo lies in the editor's square: the canvas of DINO, the editor and CLIP.

Two canvases (`config.region.canvas` in lr_jax, `--canvas` of `python -m maskgit.edit`):

  * "pad" (default): the photo is resized keeping its aspect ratio so that its longer
    side fills the square, and the rest is filled by repeating the photo's edge pixels
    (`PADDING`). The padding before the photo (top or left) is a whole number of
    tokens, so the photo starts on a token boundary and is centred to within a token.
    The tokens that hold any photo pixel are the valid area: anchors and boxes stay in
    it.
  * "squeeze": the whole photo squeezed into the square (the aspect ratio is lost; the
    behaviour before the canvas setting existed).

A `Layout` is a pure function of (photo size, editor size, token grid, canvas), so the
host code recomputes it wherever it needs it; only `valid_tlhw_tokens` travels into the
jitted steps (a (B, 4) array in the batch, so photos of any size share one compile).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from lr_common import pixels as pixels_lib

CANVASES = ("pad", "squeeze")   # `config.region.canvas` in lr_jax; `--canvas` of maskgit.edit

# Edge padding, not reflect: reflecting copies the photo's border objects into the
# padding, where CLIP sees them twice (README: "Canvas").
PADDING = "edge"


class Layout(NamedTuple):
  """A photo of `original_hw` on the `size` x `size` canvas of a `grid` x `grid` editor."""
  canvas: str
  original_hw: tuple[int, int]
  size: int
  grid: int
  image_tlhw: tuple[int, int, int, int]          # the photo on the canvas, canvas pixels
  valid_tlhw_tokens: tuple[int, int, int, int]   # the tokens holding any photo pixel

  @property
  def token_pixels(self) -> float:
    """Canvas pixels per token side."""
    return self.size / self.grid

  def original_pixels_per_token(self) -> tuple[float, float]:
    """(rows, cols) of original pixels one token covers."""
    _, _, h, w = self.image_tlhw
    return (self.original_hw[0] * self.token_pixels / h,
            self.original_hw[1] * self.token_pixels / w)

  def record(self) -> dict:
    return {"canvas": self.canvas, "padding": PADDING if self.canvas == "pad" else None,
            "image_tlhw_pixels_canvas": list(self.image_tlhw),
            "valid_tlhw_tokens": list(self.valid_tlhw_tokens),
            "original_pixels_per_token_rc": [round(v, 3) for v in
                                             self.original_pixels_per_token()]}


def layout(original_hw: Sequence[int], size: int, grid: int, canvas: str = "pad") -> Layout:
  """The layout of a photo of (H, W) pixels on the canvas (see the module docstring)."""
  height, width = (int(v) for v in original_hw[:2])
  size, grid = int(size), int(grid)
  if canvas not in CANVASES:
    raise ValueError(f"canvas must be one of {CANVASES}, got {canvas!r}")
  if height < 1 or width < 1 or size < 1 or grid < 1 or size % grid:
    raise ValueError(f"bad layout request: photo {height}x{width}, size {size}, grid {grid}")
  if canvas == "squeeze":
    return Layout(canvas, (height, width), size, grid, (0, 0, size, size), (0, 0, grid, grid))
  longer = max(height, width)
  # Rounded to the nearest pixel, integers only: h = round(H * size / longer).
  h = max(1, (2 * height * size + longer) // (2 * longer))
  w = max(1, (2 * width * size + longer) // (2 * longer))
  token = size // grid
  rows, cols = -(-h // token), -(-w // token)           # tokens holding photo pixels
  top_t, left_t = (grid - rows) // 2, (grid - cols) // 2
  return Layout(canvas, (height, width), size, grid,
                (top_t * token, left_t * token, h, w), (top_t, left_t, rows, cols))


def to_canvas(pixels: np.ndarray, lay: Layout) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1] or uint8 -> the (size, size, 3) float32 canvas."""
  if lay.canvas == "squeeze":
    return pixels_lib.to_model_input(pixels, lay.size)
  top, left, h, w = lay.image_tlhw
  resized = pixels_lib.resize_image(pixels, (h, w))
  return np.pad(resized, ((top, lay.size - top - h), (left, lay.size - left - w), (0, 0)),
                mode=PADDING)


def canvases(photos: Sequence[np.ndarray], size: int, grid: int, canvas: str = "pad"
             ) -> tuple[np.ndarray, list[Layout]]:
  """The (N, size, size, 3) float32 canvases of (H, W, 3) photos and their layouts."""
  layouts = [layout(photo.shape, size, grid, canvas) for photo in photos]
  pixels = [to_canvas(photo, lay) for photo, lay in zip(photos, layouts)]
  return (np.stack(pixels).astype(np.float32) if pixels
          else np.zeros((0, size, size, 3), np.float32)), layouts


def valid_mask(lay: Layout) -> np.ndarray:
  """(size, size) bool: the canvas pixels that show the photo."""
  top, left, h, w = lay.image_tlhw
  mask = np.zeros((lay.size, lay.size), bool)
  mask[top:top + h, left:left + w] = True
  return mask


def boxes_to_original(boxes: np.ndarray, lay: Layout) -> list:
  """(..., 4) token boxes (top, left, height, width) -> original-pixel boxes, rounded
  outward and clipped to the photo (nested lists of ints)."""
  boxes = np.asarray(boxes, np.float64)
  height, width = lay.original_hw
  _, _, h, w = lay.image_tlhw
  # Offsets are whole tokens; original pixels per token = H / (photo rows in tokens).
  top_t, left_t = lay.valid_tlhw_tokens[:2]
  sy, sx = height / (h / lay.token_pixels), width / (w / lay.token_pixels)
  top = np.clip(np.floor((boxes[..., 0] - top_t) * sy), 0, height)
  left = np.clip(np.floor((boxes[..., 1] - left_t) * sx), 0, width)
  bottom = np.clip(np.ceil((boxes[..., 0] + boxes[..., 2] - top_t) * sy), 0, height)
  right = np.clip(np.ceil((boxes[..., 1] + boxes[..., 3] - left_t) * sx), 0, width)
  return np.stack([top, left, bottom - top, right - left], -1).astype(int).tolist()


def token_centres_to_original(cells_rc: np.ndarray, lay: Layout) -> list:
  """(..., 2) token cells (row, col) -> the (row, col) of their centres in original
  pixels (nested lists of floats)."""
  cells = np.asarray(cells_rc, np.float64) + 0.5
  height, width = lay.original_hw
  _, _, h, w = lay.image_tlhw
  top_t, left_t = lay.valid_tlhw_tokens[:2]
  rows = (cells[..., 0] - top_t) * (height / (h / lay.token_pixels))
  cols = (cells[..., 1] - left_t) * (width / (w / lay.token_pixels))
  return np.stack([rows, cols], -1).tolist()


def original_box_to_tokens(box_px: Sequence[int], lay: Layout) -> tuple[int, int, int, int]:
  """An original-pixel box (top, left, height, width) -> the smallest token box on this
  canvas that covers it, inside the valid area (an edge less than one canvas pixel past
  a token boundary is snapped to it: the box was itself rounded to pixels)."""
  height, width = lay.original_hw
  top, left, h, w = lay.image_tlhw
  t = lay.token_pixels
  vt, vl, vh, vw = lay.valid_tlhw_tokens
  def span(start, length, offset, scale, lo, count):
    a = math.floor((offset + start * scale + 1) / t)
    b = math.ceil((offset + (start + length) * scale - 1) / t)
    a = min(max(a, lo), lo + count - 1)
    return a, min(max(b, a + 1), lo + count) - a
  r0, rh = span(box_px[0], box_px[2], top, h / height, vt, vh)
  c0, cw = span(box_px[1], box_px[3], left, w / width, vl, vw)
  return r0, c0, rh, cw


# The feather of an edit reaches at most this fraction of the edited (grown) box's side
# past that box, in the written photo's pixels (README: "What changes outside the box").
FEATHER_LIMIT = 0.25


def feather_limit(box_tokens: Sequence[int], lay: Layout
                  ) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
  """(box, margins) in original pixels for `pixels.composite_to_original`'s `limit`: the
  token box (the grown box the editor regenerated) and FEATHER_LIMIT of its height and
  width (at least one pixel)."""
  box = tuple(boxes_to_original(np.asarray(box_tokens), lay))
  margins = tuple(max(1, math.ceil(FEATHER_LIMIT * side)) for side in box[2:])
  return box, margins


def composite(original: np.ndarray, edited_canvas: np.ndarray, mask_canvas: np.ndarray,
              lay: Layout, dtype=None, box_tokens: Sequence[int] | None = None) -> np.ndarray:
  """`pixels.composite_to_original` of the photo's part of a canvas-size edit: the
  padding is cut away first, so it never reaches the result. With `box_tokens` (the
  grown box the editor regenerated, tokens of this canvas) the feather is bounded in
  original pixels (`feather_limit`): nothing FEATHER_LIMIT x the box side or further past
  it changes, however much the canvas is scaled up."""
  top, left, h, w = lay.image_tlhw
  rows, cols = slice(top, top + h), slice(left, left + w)
  limit = None if box_tokens is None else feather_limit(box_tokens, lay)
  return pixels_lib.composite_to_original(original, np.asarray(edited_canvas)[rows, cols],
                                          np.asarray(mask_canvas)[rows, cols], dtype=dtype,
                                          limit=limit)
