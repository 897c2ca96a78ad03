"""The data manifest: which images to edit, with which prompts.

A manifest is a JSON file (a list of objects), a JSON-lines file (one object
per line) or a CSV file with a header row. Keys / columns:

  image          path of the image, relative to the manifest's folder (required)
  prompt         the edit prompt, e.g. "a lion" (required, non-empty)
  source_prompt  a description of the input image (optional)
  class_id       an ImageNet class id for class-conditional MaskGIT (optional)
  mask           an object mask image (white = the object), relative like `image`;
                 only the evaluation reads it (optional)

A JSON object in PIE-Bench's `mapping_file.json` layout (`lr_jax.files.pie_bench`) is read
as well, with its run-length masks.

Problems are reported together in one ManifestError (every bad row, every
missing image), so a manifest can be fixed in one pass.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import pathlib
from typing import Any

from lr_common.errors import UserError
from lr_common import image_files as images
from lr_jax.files import pie_bench

IMAGENET_CLASSES = 1000   # lr_jax.encoders.imagenet.NUM_CLASSES (checked by the tests)
REQUIRED_KEYS = ("image", "prompt")
OPTIONAL_KEYS = ("source_prompt", "class_id", "mask")
ALLOWED_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS


class ManifestError(UserError, ValueError):
  """The manifest cannot be used (message lists every problem found)."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One image to edit. `image_path` is absolute (resolved against the
  manifest's folder)."""
  image_path: pathlib.Path
  prompt: str
  source_prompt: str | None = None
  class_id: int | None = None
  mask_path: pathlib.Path | None = None         # an object mask image (evaluation only)
  mask_rle: tuple[int, ...] | None = None       # PIE-Bench: (start, length) pairs, 512x512


def _unknown_key_message(key: str) -> str:
  close = difflib.get_close_matches(key, ALLOWED_KEYS, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return (f"unknown key {key!r}{hint}; allowed keys are "
          f"{', '.join(ALLOWED_KEYS)}")


def _parse_class_id(value: Any) -> int | None:
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  if isinstance(value, bool):
    raise ValueError(f"class_id must be an integer, got {value!r}")
  if isinstance(value, float):
    if not value.is_integer():
      raise ValueError(f"class_id must be an integer, got {value!r}")
    value = int(value)
  if isinstance(value, str):  # CSV cells; spreadsheets write whole numbers as "3.0"
    try:
      number = float(value.strip())
    except ValueError as e:
      raise ValueError(f"class_id must be an integer, got {value!r}") from e
    if not number.is_integer():
      raise ValueError(f"class_id must be an integer, got {value!r}")
    value = int(number)
  if not isinstance(value, int):
    raise ValueError(f"class_id must be an integer, got {value!r}")
  if not 0 <= value < IMAGENET_CLASSES:
    raise ValueError(f"class_id must be an ImageNet class in 0..{IMAGENET_CLASSES - 1}, "
                     f"got {value}")
  return value


def _optional_text(value: Any, key: str) -> str | None:
  if value is None:
    return None
  if not isinstance(value, str):
    raise ValueError(f"{key} must be a string, got {value!r}")
  value = value.strip()
  return value or None


def _record_to_example(record: Any, base: pathlib.Path) -> Example:
  """Validates one record (dict); raises ValueError with all its problems."""
  if not isinstance(record, dict):
    raise ValueError(f"expected an object with keys {', '.join(ALLOWED_KEYS)},"
                     f" got {type(record).__name__}")
  problems = [_unknown_key_message(k) for k in record if k not in ALLOWED_KEYS]
  problems += [f"missing required key {k!r}" for k in REQUIRED_KEYS
               if k not in record]
  image = record.get("image")
  if "image" in record and (not isinstance(image, str) or not image.strip()):
    problems.append(f"image must be a non-empty path, got {image!r}")
  prompt = record.get("prompt")
  if "prompt" in record and (not isinstance(prompt, str) or not prompt.strip()):
    problems.append(f"prompt must be a non-empty string, got {prompt!r}")
  source_prompt = class_id = None
  for key, parse in (("source_prompt",
                      lambda v: _optional_text(v, "source_prompt")),
                     ("class_id", _parse_class_id)):
    try:
      value = parse(record.get(key))
    except ValueError as e:
      problems.append(str(e))
      continue
    if key == "source_prompt":
      source_prompt = value
    else:
      class_id = value
  mask = record.get("mask")
  if mask is not None and not isinstance(mask, str):
    problems.append(f"mask must be a path, got {mask!r}")
  if problems:
    raise ValueError("; ".join(problems))
  mask = mask.strip() if mask else None
  return Example(image_path=_resolve(image, base), prompt=prompt.strip(),
                 source_prompt=source_prompt, class_id=class_id,
                 mask_path=_resolve(mask, base) if mask else None)


def _resolve(path: str, base: pathlib.Path) -> pathlib.Path:
  resolved = pathlib.Path(path.strip()).expanduser()
  return resolved if resolved.is_absolute() else (base / resolved).resolve()


def _read_records(path: pathlib.Path) -> list[tuple[str, Any]]:
  """Returns (location, record) pairs; location is used in messages."""
  suffix = path.suffix.lower()
  try:
    text = path.read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise ManifestError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); "
                        f"save the manifest as UTF-8") from None
  except OSError as e:
    raise ManifestError(f"{path}: cannot be read ({e.strerror or e})") from None
  if suffix == ".json":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ManifestError(f"{path}: invalid JSON ({e})") from e
    if isinstance(data, dict) and pie_bench.is_mapping(data):
      return [("pie_bench", data)]
    if not isinstance(data, list):
      raise ManifestError(f"{path}: the JSON manifest must be a list of "
                          f"objects, got {type(data).__name__}")
    return [(f"entry {i}", r) for i, r in enumerate(data)]
  if suffix == ".jsonl":
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      try:
        records.append((f"line {line_no}", json.loads(line)))
      except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: line {line_no}: invalid JSON ({e})") from e
    return records
  if suffix == ".csv":
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
      raise ManifestError(f"{path}: the CSV manifest has no header row; "
                          f"expected columns {', '.join(ALLOWED_KEYS)}")
    header = [h.strip() for h in header]
    problems = [_unknown_key_message(h) for h in header if h not in ALLOWED_KEYS]
    problems += [f"missing required column {k!r}" for k in REQUIRED_KEYS
                 if k not in header]
    if problems:
      raise ManifestError(f"{path}: bad CSV header: " + "; ".join(problems))
    reader.fieldnames = header
    records = []
    for row in reader:  # reader.line_num counts the header as line 1
      if None in row:
        raise ManifestError(f"{path}: line {reader.line_num}: more fields than "
                            f"header columns (quote fields holding commas)")
      if all(not (v or "").strip() for v in row.values()):
        continue
      records.append((f"line {reader.line_num}",
                      {k: v for k, v in row.items() if v is not None}))
    return records
  raise ManifestError(f"{path}: unsupported manifest type {path.suffix!r}; use "
                      ".json, .jsonl or .csv")


def read_manifest(path: str | pathlib.Path,
                  check_images: bool = True) -> list[Example]:
  """Reads a JSON / JSON-lines / CSV manifest into Examples (file order).

  Image paths are resolved against the manifest's folder. With check_images,
  every referenced image must exist (all missing ones are listed at once).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ManifestError(f"{path}: manifest file does not exist")
  base = path.resolve().parent
  examples, problems = [], []
  records = _read_records(path)
  if records and records[0][0] == "pie_bench":
    for location, fields in pie_bench.entries(records[0][1], base):
      if isinstance(fields, str):
        problems.append(f"  {location}: {fields}")
      else:
        examples.append(Example(**fields))
    records = []
  for location, record in records:
    try:
      examples.append(_record_to_example(record, base))
    except ValueError as e:
      problems.append(f"  {location}: {e}")
  if problems:
    raise ManifestError(f"{path}: {len(problems)} bad entr"
                        f"{'y' if len(problems) == 1 else 'ies'}:\n"
                        + "\n".join(problems))
  if not examples:
    raise ManifestError(f"{path}: the manifest has no entries")
  if check_images:
    missing = [str(p) for e in examples for p in (e.image_path, e.mask_path)
               if p is not None and not p.is_file()]
    if missing:
      raise ManifestError(f"{path}: {len(missing)} image file(s) not found:\n  "
                          + "\n  ".join(missing))
  return examples


def examples_from_folder(folder: str | pathlib.Path, prompt: str,
                         source_prompt: str | None = None,
                         class_id: int | None = None) -> list[Example]:
  """One Example per image file in `folder` (sorted), all with one prompt (which may be
  empty when `class_id` gives the class)."""
  prompt, source_prompt, class_id = _checked_texts(prompt, source_prompt, class_id)
  try:
    paths = images.list_images(folder)
  except images.ImageError as e:
    raise ManifestError(str(e)) from e
  if not paths:
    raise ManifestError(
        f"{folder}: no images found (extensions: "
        f"{', '.join(images.SUPPORTED_EXTENSIONS)})")
  return [Example(image_path=p.resolve(), prompt=prompt, source_prompt=source_prompt,
                  class_id=class_id) for p in paths]


def examples_from_path(path: str | pathlib.Path, prompt: str,
                       source_prompt: str | None = None,
                       class_id: int | None = None) -> list[Example]:
  """Examples for one image file, or for every image in a folder, with one prompt."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    return examples_from_folder(path, prompt, source_prompt, class_id)
  prompt, source_prompt, class_id = _checked_texts(prompt, source_prompt, class_id)
  if not path.is_file():
    raise ManifestError(f"image file {path} does not exist")
  return [Example(image_path=path.resolve(), prompt=prompt, source_prompt=source_prompt,
                  class_id=class_id)]


def _checked_texts(prompt: Any, source_prompt: Any, class_id: Any
                   ) -> tuple[str, str | None, int | None]:
  """(prompt, source_prompt, class_id) checked as a manifest row's, prompts stripped."""
  try:
    class_id = _parse_class_id(class_id)
    source_prompt = _optional_text(source_prompt, "source_prompt")
  except ValueError as e:
    raise ManifestError(str(e)) from e
  if not isinstance(prompt, str) or (not prompt.strip() and class_id is None):
    raise ManifestError(f"prompt must be a non-empty string (the edit text, e.g. 'a lion'; "
                        f"or give a class id), got {prompt!r}")
  return prompt.strip(), source_prompt, class_id
