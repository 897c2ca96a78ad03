"""The Python API: load the models once, then edit images from a notebook or a script.

  from lr_jax import api
  editor = api.load("tiny")                         # or "maskgit_imagenet256", a .py path
  result = editor.edit("cat.png", "a lion")         # strategy="search" by default
  result.image                                      # (H, W, 3) uint8, the input's size
  [(c.score, c.box_pixels) for c in result.candidates]
  result.save("edits/")                             # edited photo, sheet, JSON record

`load` builds the models once; every `edit` reuses them and their compiled functions
(one compile per strategy and number of boxes). Errors name the Python arguments
(`strategy=`, `box=`, `overwrite=True`), not the command-line flags.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import tempfile
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from lr_common import canvas as canvas_lib
from lr_common import image_files as images_lib
from lr_common.errors import UserError
from lr_jax import checkpointing
from lr_jax import editors
from lr_jax import inference
from lr_jax import notebook
from lr_jax import run_settings
from lr_jax import user_boxes
from lr_jax.files import manifest as manifest_lib
from lr_jax.models import Built, build_models

BoxError = user_boxes.BoxError
StrategyError = inference.StrategyError


class ApiError(UserError, ValueError):
  """A bad argument to the API."""


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One candidate edit: its score, its box and what the editor regenerated."""
  index: int
  score: float                                 # S, the score the pick maximises
  t2i: float                                   # CLIP text-to-image part
  i2i: float                                   # CLIP image-to-image part
  box_pixels: tuple[int, int, int, int]        # top, left, height, width in the photo
  box_tokens: tuple[float, float, float, float]
  masked_box_pixels: tuple[int, int, int, int]  # the box grown as the editor regenerated it


@dataclasses.dataclass
class EditResult:
  """What `Editor.edit` returns."""
  image: np.ndarray               # (H, W, 3) uint8: the edited photo at the input's size
  best: int                       # the kept candidate
  candidates: list[Candidate]
  record: dict[str, Any]          # what the JSON record holds
  outcome: inference.EditOutcome  # the full outputs (`outcome.outputs`: step.Inference)

  @property
  def anchors_pixels(self) -> list[tuple[float, float]]:
    """DINO's K anchors: the (row, col) of their tokens' centres in the photo's pixels
    (the "box" strategy has none of its own: the cell at each box's centre)."""
    anchors = self.outcome.outputs.regions.anchors
    return [tuple(a) for a in canvas_lib.token_centres_to_original(anchors, self.outcome.layout)]

  @property
  def proposals_pixels(self) -> list[list[tuple[int, int, int, int]]]:
    """Every proposal, per anchor: K lists of M (top, left, height, width) boxes in the
    photo's pixels (the "box" strategy: each box is its own one proposal)."""
    boxes = canvas_lib.boxes_to_original(self.outcome.outputs.regions.boxes, self.outcome.layout)
    return [[tuple(b) for b in per_anchor] for per_anchor in boxes]

  @property
  def unchanged_outside(self) -> tuple[int, int, int, int]:
    """(top, left, height, width) in the photo's pixels: every pixel outside this box is
    the input's, byte for byte (the kept box as the editor regenerated it plus its
    bounded feather; with a window edit, the window)."""
    limit = self.record["feather_limit"]
    if "tlhw_pixels_original" in limit:
      return tuple(limit["tlhw_pixels_original"])
    return tuple(self.record["window"]["window_tlhw_pixels_original"])

  def candidate_image(self, i: int) -> np.ndarray:
    """Candidate i's edit composited into the photo (uint8, the input's size)."""
    return self.outcome.candidate_image(i)

  def save(self, folder: str | os.PathLike, overwrite: bool = False) -> dict[str, str]:
    """Writes the edited photo, the sheet and the JSON record to `folder` (names carry
    image, prompt, strategy and seed); returns {kind: path}. An existing file is
    replaced only with overwrite=True."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = inference.output_names(folder, self.outcome.number, self.outcome.example,
                                   self.record["strategy"], self.record["seed"])
    inference.write_outcome(self.outcome, names, overwrite, flag="overwrite=True")
    return dict(self.outcome.files)


def _config(config: str | os.PathLike | ml_collections.ConfigDict,
            editor: str | None) -> ml_collections.ConfigDict:
  if isinstance(config, ml_collections.ConfigDict):
    return config
  text = str(config)
  if text.endswith(".py") or os.sep in text or "/" in text:
    path = pathlib.Path(text).expanduser()
    if not path.is_file():
      raise ApiError(f"config={text!r}: no such file")
    spec = importlib.util.spec_from_file_location(f"lr_jax_api_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None)
  if editor is not None:
    if editor not in editors.available():
      raise ApiError(f"editor must be one of {', '.join(editors.available())}, got {editor!r}")
    official, tiny = editors.configs(editor)
    text = {"tiny": tiny, "official": official}.get(text, text)
  return notebook.load_config(text)


def _override(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """`section__field=value` or `**{"section.field": value}` into the config."""
  for key, value in overrides.items():
    path = key.replace("__", ".").split(".")
    node = config
    for part in path[:-1]:
      if part not in node:
        raise ApiError(f"{key}=: the config has no section {part!r}")
      node = node[part]
    if path[-1] not in node:
      raise ApiError(f"{key}=: the config has no field {path[-1]!r} in "
                     f"{'.'.join(path[:-1]) or 'the top level'}")
    node[path[-1]] = value


def load(config: str | os.PathLike | ml_collections.ConfigDict = "tiny",
         editor: str | None = None, **overrides: Any) -> "Editor":
  """Parses the config and builds its models once.

  config: a name in configs/ ("tiny", "maskgit_imagenet256", "amused", ...; with
  `editor`, "tiny" and "official" pick that editor's configs), a path to a config file,
  or a ConfigDict. overrides: config fields, `region__window="off"` or
  `**{"region.window": "off"}`.
  """
  cfg = _config(config, editor)
  if editor is not None and cfg.editor.name != editor:
    raise ApiError(f"config {config!r} uses editor {cfg.editor.name!r}, not editor={editor!r}")
  _override(cfg, overrides)
  run = run_settings.parse(cfg)
  return Editor(run, build_models(run))


class Editor:
  """Loaded models and their compiled functions; `edit` as often as you like."""

  def __init__(self, run: run_settings.Run, built: Built):
    self.run = run
    self.built = built
    self._rgn: dict[str | None, Any] = {}

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config

  def _rgn_params(self, checkpoint: str | None):
    if checkpoint not in self._rgn:
      self._rgn[checkpoint] = checkpointing.rgn_params(checkpoint, self.built.models, self.run)
    return self._rgn[checkpoint]

  def edit(self, image: str | os.PathLike | Image.Image | np.ndarray, prompt: str, *,
           strategy: str | None = None, box=None, box_unit: str = "pixels", seed: int = 0,
           rgn_checkpoint: str | None = None, refine_steps: int = 0,
           source_prompt: str | None = None, class_id: int | None = None) -> EditResult:
    """Edits `image` (a path, a PIL image or an (H, W, 3) array: uint8, or floats in
    [0, 1]) into `prompt`.

    strategy: None picks "box" with `box`, "refine" with `refine_steps`, "rgn" with
    `rgn_checkpoint`, else "search" (every proposal edited and scored). box: (top, left,
    height, width) in the photo's pixels (box_unit="tokens": box-grid cells), or a list of
    them (each a candidate).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
      raise ApiError(f"seed must be an integer, got {seed!r}")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
      raise ApiError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    if box_unit not in user_boxes.UNITS:
      raise ApiError(f"box_unit must be one of {', '.join(user_boxes.UNITS)}, got {box_unit!r}")
    strategy, reason = inference.choose_strategy(strategy, rgn_checkpoint, refine_steps,
                                                 box is not None, python=True)
    loaded = _load_image(image)
    example = manifest_lib.Example(loaded.path, _prompt(prompt), source_prompt or None, class_id)
    tokens = None
    if strategy == "box":
      tokens = inference.given_boxes_on_canvas(self.run, [loaded], box, box_unit, "box=")
    params = self._rgn_params(rgn_checkpoint)
    [outcome] = inference.edit_examples(
        self.built, params, [example], self.run, seed=seed, refine_steps=refine_steps,
        checkpoint=rgn_checkpoint, progress=False, loaded=[loaded], strategy=strategy,
        boxes=tokens, strategy_reason=reason, box_request=None if box is None else {
            "unit": box_unit, "tlhw": [list(b) for b in user_boxes.normalize(box, "box=")]})
    return _result(outcome)


def _prompt(prompt: Any) -> str:
  if not isinstance(prompt, str) or not prompt.strip():
    raise ApiError(f"prompt must be a non-empty string, got {prompt!r}")
  return prompt.strip()


def _load_image(image) -> images_lib.LoadedImage:
  """A path, a PIL image or an array as a LoadedImage (arrays and PIL images are written
  to a temporary PNG first, so records and sheets name a file)."""
  if isinstance(image, (str, os.PathLike)):
    path = pathlib.Path(image).expanduser()
    if not path.is_file():
      raise ApiError(f"image={str(image)!r}: no such file")
    return images_lib.load_image(path)
  if isinstance(image, np.ndarray):
    pixels = image
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
      raise ApiError(f"image must be an (H, W, 3) array, got shape {pixels.shape}")
    if pixels.dtype != np.uint8:
      if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 1:
        raise ApiError("image: a float array must hold values in [0, 1]")
      pixels = np.round(pixels.astype(np.float32) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
  if not isinstance(image, Image.Image):
    raise ApiError(f"image must be a path, a PIL image or an (H, W, 3) array, got "
                   f"{type(image).__name__}")
  folder = pathlib.Path(tempfile.mkdtemp(prefix="lr_jax_api_"))
  path = folder / "image.png"
  image.save(path)
  return images_lib.load_image(path)


def _result(outcome: inference.EditOutcome) -> EditResult:
  r = outcome.record
  scores = r["scores"]
  candidates = [Candidate(i, scores["S"][i], scores["s_t2i"][i], scores["s_i2i"][i],
                          tuple(r["boxes_tlhw_pixels_original"][i]),
                          tuple(r["boxes_tlhw_tokens"][i]),
                          tuple(r["masked_boxes_tlhw_pixels_original"][i]))
                for i in range(len(scores["S"]))]
  return EditResult(outcome.result, int(r["best_candidate"]), candidates, r, outcome)
