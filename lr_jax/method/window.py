"""Window mode: the kept box edited once more at a finer scale, cut from the original.

On the whole-photo canvas one token covers (longer side / grid) original pixels: 250 x
250 of a 4000 x 3000 photo at 256 pixels and 16 tokens, so an edit there comes back
as a blurry patch. After the region is chosen on that canvas, a square window around
the kept box (`config.region.window_scale` x the box's longer side, at least the
editor's size, clamped to the photo) is cut from the original, put on its own canvas
(`lr_common.canvas`), the box is edited there in the window's token units (one more editor
call) and the result is composited back into the window's place at the original
resolution. Outside the edited box every pixel stays the input's.

`config.region.window`: "on", "off", or "auto": on when the window makes a token cover
at least `AUTO_MIN_GAIN` times fewer original pixels (per side) than the whole canvas,
on the "pad" canvas ("squeeze" keeps the old behaviour unless window mode is "on").
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from lr_common import pixels as pixels_lib
from lr_common import canvas as canvas_lib

AUTO_MIN_GAIN = 1.5


class Plan(NamedTuple):
  """Whether and where the kept box is edited again."""
  mode: str     # config.region.window
  used: bool
  window_tlhw: tuple[int, int, int, int]   # in original pixels
  layout: canvas_lib.Layout                # the window on its canvas
  box_tlhw_tokens: tuple[int, int, int, int]   # the kept box in the window's tokens
  gain: float   # whole-canvas / window original pixels per token (the coarser side)

  def record(self, whole: canvas_lib.Layout) -> dict:
    return {"mode": self.mode, "used": self.used,
            "window_tlhw_pixels_original": list(self.window_tlhw),
            "box_tlhw_tokens_window": list(self.box_tlhw_tokens),
            "original_pixels_per_token_rc": {
                "canvas": [round(v, 3) for v in whole.original_pixels_per_token()],
                "window": [round(v, 3) for v in self.layout.original_pixels_per_token()]},
            "gain": round(self.gain, 3)}


def window_around(box_px: Sequence[int], original_hw: Sequence[int], scale: float,
                  min_side: int = 1) -> tuple[int, int, int, int]:
  """(top, left, height, width) in original pixels: a square of side max(scale x the
  box's longer side, min_side), centred on the box, moved into the photo and cut to it
  where the photo is smaller. It always holds the box."""
  top, left, height, width = (int(v) for v in box_px)
  photo_h, photo_w = (int(v) for v in original_hw[:2])
  # Any finite scale: a side past the photo's is cut to the photo below anyway, so it is
  # capped before rounding (scale x side may be a float too large for an int).
  wanted = min(float(scale) * max(height, width), float(max(photo_h, photo_w, height, width)))
  side = max(math.ceil(wanted), int(min_side), height, width)

  def place(start, length, limit):
    extent = min(side, limit)
    lo = int(math.floor(start + length / 2 - extent / 2))
    lo = min(max(lo, 0), limit - extent)
    lo = min(lo, start)                                   # the box stays inside
    lo = max(lo, start + length - extent)
    return lo, extent

  (wt, wh), (wl, ww) = place(top, height, photo_h), place(left, width, photo_w)
  return wt, wl, wh, ww


def plan(box_px: Sequence[int], whole: canvas_lib.Layout, mode: str, scale: float) -> Plan:
  """The window of the kept box `box_px` (original pixels) chosen on the `whole` canvas."""
  window = window_around(box_px, whole.original_hw, scale, min_side=whole.size)
  lay = canvas_lib.layout(window[2:], whole.size, whole.grid, whole.canvas)
  local = (box_px[0] - window[0], box_px[1] - window[1], box_px[2], box_px[3])
  tokens = canvas_lib.original_box_to_tokens(local, lay)
  gain = max(whole.original_pixels_per_token()) / max(lay.original_pixels_per_token())
  # "auto" leaves the squeezed canvas as it always was.
  auto = gain >= AUTO_MIN_GAIN and whole.canvas == "pad"
  used = {"on": True, "off": False}.get(mode, auto)
  return Plan(mode, bool(used), window, lay, tokens, float(gain))


def masked_record(window: Plan, masked_tokens: Sequence[int] | None) -> dict:
  """The record of the box the editor regenerated in the window (None: no window edit),
  in window tokens and in original pixels."""
  if masked_tokens is None:
    return {"masked_box_tlhw_tokens_window": None, "masked_box_tlhw_pixels_original": None}
  top, left, h, w = canvas_lib.boxes_to_original(np.asarray(masked_tokens), window.layout)
  return {"masked_box_tlhw_tokens_window": [int(v) for v in masked_tokens],
          "masked_box_tlhw_pixels_original": [top + window.window_tlhw[0],
                                              left + window.window_tlhw[1], h, w]}


def window_canvas(original: np.ndarray, window: Plan) -> np.ndarray:
  """The window's (size, size, 3) float32 canvas, cut from the original."""
  top, left, h, w = window.window_tlhw
  return canvas_lib.to_canvas(original[top:top + h, left:left + w], window.layout)


def paste(original: np.ndarray, window: Plan, edited_canvas: np.ndarray,
          mask_canvas: np.ndarray, box_tokens=None) -> np.ndarray:
  """The original (as uint8) with the window's edit composited into its place (the
  feather bounded around `box_tokens`, the box regenerated in the window's tokens:
  `canvas.composite`)."""
  top, left, h, w = window.window_tlhw
  result = np.array(pixels_lib.to_uint8(original))   # a copy, also of uint8 input
  result[top:top + h, left:left + w] = canvas_lib.composite(
      original[top:top + h, left:left + w], edited_canvas, mask_canvas, window.layout,
      dtype=np.uint8, box_tokens=box_tokens)
  return result
