"""Boxes a user gives (`lr_jax.edit --box`, `api.Editor.edit(box=...)`), checked and put
on the editor's canvas.

A box is (top, left, height, width): in the photo's own pixels (unit "pixels"), or in
cells of the box grid on the editor's canvas (unit "tokens": the numbers of a record's
`boxes_tlhw_tokens`, padding included). A pixel box becomes the smallest token box that
covers it (`canvas.original_box_to_tokens`). Every check runs on the image sizes alone,
before any model loads.
"""
from __future__ import annotations

import math
from typing import Sequence

from lr_common.errors import UserError
from lr_common import canvas as canvas_lib

UNITS = ("pixels", "tokens")


class BoxError(UserError, ValueError):
  """A box that is not four numbers, is empty, or lies outside the photo."""


def _where(name: str, box) -> str:
  """How the user wrote the box: `--box 1,2,3,4` or `box=(1, 2, 3, 4)`."""
  if isinstance(box, str):
    return f"{name}{box!r}" if name.endswith("=") else f"{name} {box!r}"
  text = (", " if name.endswith("=") else ",").join(
      f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in box)
  return f"{name}({text})" if name.endswith("=") else f"{name} {text}"


def parse(spec: str, name: str = "--box") -> tuple[float, float, float, float]:
  """'top,left,height,width' -> four finite numbers."""
  parts = [p for p in str(spec).replace(" ", "").split(",") if p]
  try:
    values = [float(p) for p in parts]
  except ValueError:
    values = []
  if len(values) != 4 or not all(math.isfinite(v) for v in values):
    raise BoxError(f"{_where(name, spec)} must be four numbers: top,left,height,width")
  return tuple(values)


def normalize(boxes, name: str = "box") -> list[tuple[float, float, float, float]]:
  """One box (4 numbers or a 'top,left,height,width' string) or a list of them -> a list
  of 4-tuples of finite numbers."""
  if isinstance(boxes, str):
    return [parse(boxes, name)]
  items = list(boxes)
  if not items:
    raise BoxError(f"{name} is empty: give (top, left, height, width) or a list of them")
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
    items = [items]
  out = []
  for item in items:
    if isinstance(item, str):
      out.append(parse(item, name))
      continue
    values = list(item) if isinstance(item, (list, tuple)) else None
    if (values is None or len(values) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) for v in values)):
      raise BoxError(f"{_where(name, item)} must be four numbers: top, left, height, width")
    out.append(tuple(float(v) for v in values))
  return out


def to_tokens(boxes: Sequence[Sequence[float]], unit: str, lay: canvas_lib.Layout,
              name: str = "--box", image: str = "the photo") -> list[tuple[int, int, int, int]]:
  """The boxes as token boxes on `lay`'s canvas, each checked (raises BoxError)."""
  if unit not in UNITS:
    raise BoxError(f"box unit must be one of {', '.join(UNITS)}, got {unit!r}")
  height, width = lay.original_hw
  vt, vl, vh, vw = lay.valid_tlhw_tokens
  out = []
  for box in boxes:
    top, left, h, w = box
    where = _where(name, box)
    if h <= 0 or w <= 0:
      raise BoxError(f"{where} is empty (height and width must be > 0)")
    if unit == "pixels":
      if top < 0 or left < 0 or top + h > height or left + w > width:
        raise BoxError(f"{where} is not inside {image} ({width}x{height} pixels: top + "
                       f"height <= {height}, left + width <= {width}, no negative values)")
      out.append(tuple(int(v) for v in canvas_lib.original_box_to_tokens(box, lay)))
    else:
      if any(v != round(v) for v in box):
        raise BoxError(f"{where}: token boxes are whole cells")
      if top < vt or left < vl or top + h > vt + vh or left + w > vl + vw:
        raise BoxError(f"{where} is not inside the cells that show {image} (top,left,height,"
                       f"width {vt},{vl},{vh},{vw} on the {lay.grid}x{lay.grid} grid)")
      out.append(tuple(int(v) for v in box))
  return out
