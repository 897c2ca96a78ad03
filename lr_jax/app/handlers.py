"""What the page does, as plain functions: open a photo, edit it, pick a candidate, re-edit
one box. No Gradio here: each function takes the session and plain values and returns a
`View` (what the page shows), or raises a `UserError` whose message the page displays.

A session holds the photo as uploaded (checked once, `lr_common.image_files`), the
current result (the base of a re-edit) and the last `api.EditResult`. Files go to the
session's own temporary folder, one numbered subfolder per step, so downloads of earlier
steps are never overwritten.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from lr_common import image_files as images_lib
from lr_common import pixels as pixels_lib
from lr_common.errors import UserError
from lr_jax import api
from lr_jax import samples as samples_lib
from lr_jax.files import sheets

# The photo size limits are `image_files.load_image`'s (pixels per side).
MIN_SIDE, MAX_SIDE = images_lib.MIN_SIDE, images_lib.MAX_SIDE
MAX_BOXES = 32                      # boxes of one edit from the page
STRATEGIES = ("search", "box")      # "rgn" too when the page has a trained RGN
BASES = ("current result", "original photo")
_BOX_COLOUR = (255, 196, 0)
_GALLERY_SIDE = 384                 # candidate previews: longer side in pixels

Progress = Callable[..., Any]       # progress(fraction, desc=...), as gr.Progress


class PageError(UserError, ValueError):
  """Something the page cannot do with what it was given."""


@dataclasses.dataclass
class Session:
  """One browser tab's state."""
  folder: pathlib.Path = dataclasses.field(
      default_factory=lambda: pathlib.Path(tempfile.mkdtemp(prefix="lr_jax_app_")))
  photo: pathlib.Path | None = None     # the photo as opened (checked)
  current: pathlib.Path | None = None   # the result shown: the base of a re-edit
  result: api.EditResult | None = None  # the last edit
  shown: int | None = None              # the candidate shown (None: the edit's result)
  candidates: tuple = (None, [], [])    # the last edit's sheet, gallery and table
  steps: int = 0

  def step_folder(self) -> pathlib.Path:
    self.steps += 1
    folder = self.folder / f"step{self.steps:03d}"
    folder.mkdir(parents=True)
    return folder


class View(NamedTuple):
  """What the page shows after a step."""
  annotator: dict | None        # {"image": path, "boxes": [...]}: the photo and the box
  result: str | None            # the current result at the photo's own size (PNG path)
  sheet: str | None             # anchors, proposals, candidates with scores, result
  gallery: list[tuple[str, str]]  # (preview path, caption) per candidate
  table: list[list[Any]]        # candidate, score S, t2i, i2i, box (top, left, height, width)
  downloads: list[str]          # the edited photo and its JSON record
  status: str                   # one line of markdown
  notes: tuple[str, ...] = ()   # what the user should know (shown as warnings)


def _quiet(fraction: float, desc: str | None = None) -> None:
  del fraction, desc


def limits_text() -> str:
  return f"JPEG, PNG, WebP, TIFF, BMP or GIF, {MIN_SIDE} to {MAX_SIDE} pixels a side"


def _annotator(image: pathlib.Path, box: Sequence[int] | None, label: str) -> dict:
  boxes = []
  if box is not None:
    top, left, height, width = (int(v) for v in box)
    boxes.append({"xmin": left, "ymin": top, "xmax": left + width, "ymax": top + height,
                  "label": label, "color": _BOX_COLOUR})
  return {"image": str(image), "boxes": boxes}


def open_photo(session: Session, path: str | pathlib.Path | None) -> View:
  """Checks an uploaded file (an image of MIN_SIDE..MAX_SIDE pixels a side) and shows it;
  the edit starts over from it."""
  if not path:
    raise PageError("no file: upload a photo or press 'Use the sample'")
  path = pathlib.Path(path)
  try:
    loaded = images_lib.load_image(path, MIN_SIDE, MAX_SIDE)
  except images_lib.ImageError as e:   # name the file as uploaded, not the server's copy
    raise PageError(str(e).replace(str(path), path.name)) from None
  if loaded.original.dtype != np.uint8 or path.suffix.lower() != ".png":
    # One decoded 8-bit PNG from here on: the editor, the annotator and the browser
    # read the same pixels.
    path = images_lib.save_image(session.step_folder() / f"{path.stem}.png",
                                 pixels_lib.to_uint8(loaded.original))
  session.photo = session.current = path
  session.result, session.shown, session.candidates = None, None, (None, [], [])
  notes = f" ({'; '.join(loaded.notes)})" if loaded.notes else ""
  return View(_annotator(path, None, ""), str(path), None, [], [], [],
              f"Opened **{path.name}**, {loaded.width}x{loaded.height} pixels{notes}. "
              "Type a prompt and press Edit (strategy box: draw a box first).")


def open_sample(session: Session) -> View:
  """The sample photo that ships with the repository's samples (scikit-image's cat)."""
  [first, *_] = samples_lib.sample_examples()
  return open_photo(session, first.image_path)


def _boxes(annotator: Mapping[str, Any] | None) -> list[tuple[int, int, int, int]]:
  """The annotator's boxes as (top, left, height, width) in the photo's pixels (at most
  MAX_BOXES: each is an edit, and the page may be public)."""
  boxes = (annotator or {}).get("boxes") or []
  if len(boxes) > MAX_BOXES:
    raise PageError(f"at most {MAX_BOXES} boxes at once, got {len(boxes)}")
  out = []
  for box in boxes:
    try:
      xmin, ymin, xmax, ymax = (box[k] for k in ("xmin", "ymin", "xmax", "ymax"))
      out.append(tuple(int(round(float(v))) for v in (ymin, xmin, ymax - ymin, xmax - xmin)))
    except (KeyError, TypeError, ValueError, OverflowError):
      raise PageError(f"a box needs finite numbers xmin, ymin, xmax, ymax, got {box!r}") from None
  return out


def forget(session: "Session | None") -> None:
  """Removes a session's files (Gradio calls this when the tab's state expires)."""
  if session is not None:
    shutil.rmtree(session.folder, ignore_errors=True)


def _seed(seed: Any) -> int:
  if isinstance(seed, float) and seed.is_integer():
    seed = int(seed)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise PageError(f"the seed must be a whole number, got {seed!r}")
  return seed


def _prompt(prompt: Any) -> str:
  if not isinstance(prompt, str) or not prompt.strip():
    raise PageError("the prompt is empty: type what the photo should show, e.g. 'a lion'")
  return prompt.strip()


def _editor(editors: Mapping[str, api.Editor], name: str | None) -> api.Editor:
  if name is None and len(editors) == 1:
    name = next(iter(editors))
  if name not in editors:
    raise PageError(f"editor must be one of {', '.join(editors)}, got {name!r}")
  return editors[name]


def _need_photo(session: Session) -> None:
  if session.photo is None:
    raise PageError("no photo yet: upload one or press 'Use the sample'")


def _caption(c: api.Candidate, best: int) -> str:
  kept = " (kept)" if c.index == best else ""
  return f"#{c.index}{kept} S={c.score:.3f} t2i={c.t2i:.3f} i2i={c.i2i:.3f}"


def _write_png(path: pathlib.Path, pixels: np.ndarray) -> str:
  return str(images_lib.save_image(path, pixels))


def _show(session: Session, result: api.EditResult, files: Mapping[str, str], folder: pathlib.Path,
          status: str, progress: Progress) -> View:
  """The page after an edit: the result with its kept box, the sheet, every candidate."""
  progress(0.8, desc="Drawing the candidates")
  gallery = []
  for c in result.candidates:
    preview = sheets.preview(result.candidate_image(c.index), _GALLERY_SIDE)
    gallery.append((_write_png(folder / f"candidate{c.index:02d}.png", preview),
                    _caption(c, result.best)))
  table = [[c.index, round(c.score, 4), round(c.t2i, 4), round(c.i2i, 4),
            ", ".join(str(v) for v in c.box_pixels)] for c in result.candidates]
  session.result, session.shown = result, None
  session.candidates = (files["sheet"], gallery, table)
  session.current = pathlib.Path(files["edited"])
  kept = result.candidates[result.best]
  return View(_annotator(session.current, kept.box_pixels, f"#{kept.index}"),
              files["edited"], *session.candidates, [files["edited"], files["record"]],
              status, _prompt_notes(result.record))


def _prompt_notes(record: Mapping[str, Any]) -> tuple[str, ...]:
  """A warning when MaskGIT took the prompt as the nearest ImageNet class by CLIP (no
  class has its name)."""
  match = record.get("class")
  if not match or match.get("method") != "clip":
    return ()
  return (f"{record['prompt']!r} names no ImageNet class: MaskGIT edits it as the nearest "
          f"one by CLIP, {match['name']!r}",)


def _run(editor: api.Editor, image: pathlib.Path, prompt: str, folder: pathlib.Path,
         progress: Progress, **kwargs) -> tuple[api.EditResult, dict[str, str]]:
  progress(0.1, desc="Editing (the first edit of its kind compiles)")
  result = editor.edit(image, prompt, **kwargs)
  progress(0.6, desc="Writing the result, the sheet and the record")
  return result, result.save(folder)


def edit(session: Session, editors: Mapping[str, api.Editor], editor_name: str | None,
         prompt: str, strategy: str, annotator: Mapping[str, Any] | None, seed: Any,
         rgn_checkpoint: str | None = None, progress: Progress = _quiet) -> View:
  """Edits the photo as opened: "search" (every proposal edited and scored), "box" (the
  annotator's boxes, each a candidate) or "rgn" (the trained RGN, with a checkpoint)."""
  _need_photo(session)
  editor = _editor(editors, editor_name)
  prompt, seed = _prompt(prompt), _seed(seed)
  kwargs: dict[str, Any] = {"strategy": strategy, "seed": seed}
  if strategy == "box":
    kwargs["box"] = _boxes(annotator)
    if not kwargs["box"]:
      raise PageError("strategy box needs a box: draw one on the photo")
  elif strategy == "rgn":
    if not rgn_checkpoint:
      raise PageError("strategy rgn needs a trained RGN: start the page with --rgn_checkpoint DIR")
    kwargs["rgn_checkpoint"] = rgn_checkpoint
  elif strategy not in STRATEGIES:
    raise PageError(f"strategy must be one of {', '.join(STRATEGIES + ('rgn',))}, "
                    f"got {strategy!r}")
  folder = session.step_folder()
  result, files = _run(editor, session.photo, prompt, folder, progress, **kwargs)
  r = result.record
  status = (f"**{r['strategy']}**: {len(result.candidates)} candidates, kept #{result.best} "
            f"(S={result.candidates[result.best].score:.3f}); {r['conditioning']}. "
            "Pick another candidate, or move the box and re-edit it.")
  return _show(session, result, files, folder, status, progress)


def pick(session: Session, index: Any) -> View:
  """Shows candidate `index` of the last edit as the result (the base of a re-edit); the
  download is that candidate's photo with the record saying which was picked."""
  result = session.result
  if result is None:
    raise PageError("no edit yet: press Edit first")
  if isinstance(index, float) and index.is_integer():
    index = int(index)
  if isinstance(index, bool) or not isinstance(index, int) or not (
      0 <= index < len(result.candidates)):
    raise PageError(f"candidate must be a number in 0..{len(result.candidates) - 1}, "
                    f"got {index!r}")
  folder = session.step_folder()
  pixels = result.candidate_image(index)
  stem = f"candidate{index:02d}"
  edited = _write_png(folder / f"{stem}_edited.png", pixels)
  original = images_lib.load_image(session.photo).original
  record = dict(result.record, page={
      "picked_candidate": index, "kept_by_the_method": result.best,
      "changed_region_tlhw_pixels_original": pixels_lib.changed_region(pixels, original),
      "note": "the picked candidate's whole-canvas edit; the scores are the method's"})
  (folder / f"{stem}.json").write_text(json.dumps(record, indent=2))
  session.current, session.shown = pathlib.Path(edited), index
  c = result.candidates[index]
  return View(_annotator(session.current, c.box_pixels, f"#{index}"), edited,
              *session.candidates, [edited, str(folder / f"{stem}.json")],
              f"Showing candidate **#{index}** (S={c.score:.3f}, box {list(c.box_pixels)}). "
              "Move its box and re-edit, or download it.")


def reedit(session: Session, editors: Mapping[str, api.Editor], editor_name: str | None,
           prompt: str, annotator: Mapping[str, Any] | None, seed: Any,
           base: str = BASES[0], progress: Progress = _quiet) -> View:
  """Edits one box again, the annotator's (moved, resized or drawn): one `edit` with the
  "box" strategy, no region search. base "current result" keeps the earlier edits (only
  the box and its feather change); "original photo" starts from the photo as opened."""
  _need_photo(session)
  editor = _editor(editors, editor_name)
  prompt, seed = _prompt(prompt), _seed(seed)
  boxes = _boxes(annotator)
  if len(boxes) != 1:
    raise PageError(f"re-edit needs exactly one box on the photo, got {len(boxes)}")
  if base not in BASES:
    raise PageError(f"base must be one of {', '.join(BASES)}, got {base!r}")
  folder = session.step_folder()
  # The base under the photo's name, so the files say what they are.
  image = folder / f"{session.photo.stem}_base.png"
  shutil.copyfile(session.current if base == BASES[0] else session.photo, image)
  result, files = _run(editor, image, prompt, folder, progress, strategy="box", box=boxes[0],
                       seed=seed)
  t, l, h, w = result.unchanged_outside
  status = (f"Re-edited box {list(boxes[0])} on the {base} (S="
            f"{result.candidates[0].score:.3f}); nothing outside rows {t}..{t + h - 1}, "
            f"columns {l}..{l + w - 1} changed.")
  return _show(session, result, files, folder, status, progress)
