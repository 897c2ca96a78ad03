"""PIE-Bench's `mapping_file.json` (as published with PnPInversion) as a manifest.

The file is a JSON object: id -> {"image_path" (relative to `annotation_images/`),
"original_prompt", "editing_prompt" (edited words in [brackets]), "mask" (run-length
pairs (start, length) over the 512 x 512 image in row-major order), ...}. Here
`editing_prompt` is the prompt, `original_prompt` the source prompt (brackets
removed), and the mask the object mask of the evaluation.

PIE-Bench's own decoder also marks the image border as mask (against annotation
slips at the edges); `decode_rle` does not, since a border would make every mask's
bounding box the whole image.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

MASK_SHAPE = (512, 512)
IMAGE_FOLDER = "annotation_images"


def is_mapping(data: Any) -> bool:
  """Whether a JSON value has the mapping file's layout."""
  return (isinstance(data, dict) and bool(data)
          and all(isinstance(v, dict) and "image_path" in v for v in data.values()))


def _text(value: Any) -> str:
  return " ".join(str(value).replace("[", " ").replace("]", " ").split())


def _image_path(relative: str, base: pathlib.Path) -> pathlib.Path:
  folder = base / IMAGE_FOLDER
  return ((folder if folder.is_dir() else base) / relative).resolve()


def entries(data: dict[str, Any], base: pathlib.Path
            ) -> list[tuple[str, dict[str, Any] | str]]:
  """(location, fields) per entry, or (location, problem) for a bad one. Fields:
  image_path, prompt, source_prompt, mask_rle."""
  out = []
  for key, entry in data.items():
    location = f"entry {key!r}"
    problems = [f"missing {k!r}" for k in ("image_path", "editing_prompt", "mask")
                if k not in entry]
    if "mask" in entry:
      problem = rle_problem(entry["mask"])
      if problem:
        problems.append(problem)
    if "editing_prompt" in entry and not _text(entry["editing_prompt"]):
      problems.append("editing_prompt is empty")
    if problems:
      out.append((location, "; ".join(problems)))
      continue
    source = _text(entry.get("original_prompt", "")) or None
    out.append((location, {"image_path": _image_path(str(entry["image_path"]), base),
                           "prompt": _text(entry["editing_prompt"]),
                           "source_prompt": source, "mask_rle": tuple(entry["mask"])}))
  return out


def rle_problem(rle: Any, shape: tuple[int, int] = MASK_SHAPE) -> str | None:
  """What is wrong with a run-length mask (None: nothing). Runs are (start, length)
  pairs of integers; a start must lie in the image (a run may end past it: it is cut)."""
  pixels = shape[0] * shape[1]
  if not (isinstance(rle, list) and len(rle) % 2 == 0 and all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rle)):
    return "mask must be an even-length list of non-negative integers (start, length pairs)"
  outside = [(pair, start) for pair, start in enumerate(rle[::2]) if start >= pixels]
  if outside:
    pair, start = outside[0]
    return (f"mask run {pair} starts at pixel {start}, outside the {shape[1]}x{shape[0]} "
            f"image (starts must be < {pixels})")
  return None


def decode_rle(rle: tuple[int, ...] | list[int],
               shape: tuple[int, int] = MASK_SHAPE) -> np.ndarray:
  """(H, W) bool mask from (start, length) pairs over the row-major flattened image
  (runs past the end are cut; Python integers of any size)."""
  size = shape[0] * shape[1]
  flat = np.zeros(size, bool)
  for start, length in zip(rle[::2], rle[1::2]):
    start = min(int(start), size)
    flat[start:min(start + int(length), size)] = True
  return flat.reshape(shape)
