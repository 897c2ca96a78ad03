"""Inference: pick a box per anchor with the RGN, edit all K in one call, keep the best.

Importable from notebooks: `edit_examples(...)` returns the results and, given an
output folder, writes per image the edited photo (original resolution), a sheet
picture and a JSON record.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import logging
import pathlib
import platform
from typing import Any

import jax
import numpy as np
import tqdm

from lr_common import image_files as images_lib
from lr_common import output_files
from lr_common.errors import UserError
from lr_common import pixels as pixels_lib
from lr_common import seeds
from lr_jax.method import canvas as canvas_lib
from lr_jax import checkpointing
from lr_jax import dataset
from lr_jax.files import manifest as manifest_lib
from lr_jax.method import settings as settings_lib
from lr_jax.files import sheets
from lr_jax.method import step as step_lib
from lr_jax.method import window as window_lib
from lr_jax import run_settings
from lr_jax.models import Built, build_models


@dataclasses.dataclass
class EditOutcome:
  example: manifest_lib.Example
  result: np.ndarray             # (H, W, 3) uint8 at the input's own resolution (as written)
  outputs: step_lib.Inference    # `step.infer`'s results for this image (numpy, no batch axis)
  record: dict[str, Any]         # what the JSON file holds
  files: dict[str, str]          # written files by kind


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
  """Package versions for the records (looked up once per process)."""
  out = {"python": platform.python_version()}
  for pkg in ("lr_jax", "jax", "jaxlib", "flax", "optax"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = "unknown"
  return out


def refine(rgn_params, built: Built, batch, method: settings_lib.Method, steps: int,
           seed: int, train_step=None):
  """The official per-image mode: a few Adam steps of the RGN on this image alone."""
  if steps <= 0:
    return rgn_params
  # On the default device, placed as the step's outputs will be: one compile.
  state = jax.device_put(step_lib.new_train_state(rgn_params, method.optim))
  train_step = train_step or step_lib.make_train_step(built.models, method, donate=False)
  rng = seeds.prng_key(seed)
  for _ in range(steps):
    state, _ = train_step(state, built.frozen, batch, rng)
  return state.params


def _record(ex, prepared, i, out: step_lib.Inference, seed, run: run_settings.Run,
            built: Built, checkpoint, changed_region, window: window_lib.Plan, number):
  editor = built.models.editor
  lay = prepared.layouts[i]
  best = int(out.best)
  return {
      "image": str(ex.image_path), "prompt": ex.prompt,
      **prepared.cond_records[i],   # MaskGIT: "class" with the top 5
      "conditioning": prepared.summaries[i],
      "source_prompt": prepared.source_prompts[i],
      "anchors_rc_tokens": out.candidates.anchors.tolist(),
      "anchors_rc_pixels_original": canvas_lib.token_centres_to_original(out.candidates.anchors,
                                                                         lay),
      "chosen_box_index": out.chosen.tolist(),
      "boxes_tlhw_tokens": out.boxes.tolist(),
      "boxes_tlhw_pixels_original": canvas_lib.boxes_to_original(out.boxes, lay),
      # What the editor regenerates (MaskGIT: each box grown by editor.grow_tokens, clamped).
      "masked_boxes_tlhw_tokens": out.edit.masked_boxes.tolist(),
      "masked_boxes_tlhw_pixels_original": canvas_lib.boxes_to_original(
          out.edit.masked_boxes, lay),
      # Where the photo lies on the canvas that DINO, the editor and CLIP saw.
      "canvas": lay.record(),
      # The kept box edited again in a window of the original (`lr_jax.method.window`).
      "window": window.record(lay),
      # Outside this box the written photo is the input, pixel for pixel.
      "changed_region_tlhw_pixels_original": changed_region,
      "scores": {"S": out.scores.score.tolist(), "s_t2i": out.scores.t2i.tolist(),
                 "s_i2i": out.scores.i2i.tolist(), "alpha": run.method.score.alpha,
                 "beta": run.method.score.beta, "top_t2i": run.method.score.top_t2i,
                 "computed_on": "the candidate edits on the whole-photo canvas (a window "
                                "edit is not scored)"},
      # The kept candidate's index (a candidate, not an anchor: "search" has K x M);
      # `best_anchor` is its old name, kept one release for readers of old records.
      "best_candidate": best, "best_anchor": best, "seed": seed, "image_index": number,
      "edit_rng": f"fold_in({seeds.describe(seed)}, {number})",
      "model_image_size": editor.image_size,
      **editor.record(), "models": run.models.kind,
      "rgn_checkpoint": str(checkpoint) if checkpoint else None,
      "versions": dict(_versions()),
  }


def _slug(text: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40] or "edit"


def edit_examples(built: Built, rgn_params, examples: list[manifest_lib.Example],
                  config, *, seed: int = 0, out_dir: str | pathlib.Path | None = None,
                  refine_steps: int = 0, checkpoint: str | None = None,
                  progress: bool = True, overwrite: bool = False,
                  loaded: list[images_lib.LoadedImage] | None = None,
                  strategy: str = "rgn", start_index: int = 0) -> list[EditOutcome]:
  """Edits each example; returns the outcomes and writes them to `out_dir` if given
  (an existing result is never replaced unless `overwrite`). Example i is number
  `start_index + i` of its manifest: its edit key and file names follow that number,
  so editing a manifest in parts gives the results of editing it whole.

  Images run one at a time through one compiled `infer` (inputs are put on the
  editor's canvas first, so different original sizes never recompile); with window
  mode (`lr_jax.method.window`) the kept box is edited once more in a window of the original.
  `config`: a ConfigDict or a parsed `run_settings.Run`."""
  run = run_settings.parse(config)
  method = run.method
  loaded = dataset.load_images(examples) if loaded is None else loaded
  prepared = dataset.prepare(built, examples, loaded=loaded, canvas=method.region.canvas)
  infer = step_lib.make_infer(built.models, method, "rgn" if strategy == "refine" else strategy)
  train_step = (step_lib.make_train_step(built.models, method, donate=False)
                if refine_steps > 0 else None)
  out_dir = pathlib.Path(out_dir) if out_dir else None
  results = []
  for i, ex in enumerate(tqdm.tqdm(examples, desc="edit", disable=not progress)):
    batch = prepared.batch(np.asarray([i]))
    number = start_index + i
    rng = jax.random.fold_in(seeds.prng_key(seed), number)
    params = refine(rgn_params, built, batch, method, refine_steps, seed + number, train_step)
    out = jax.tree.map(lambda x: np.asarray(x)[0],
                       jax.device_get(infer(params, built.frozen, batch, rng)))
    best = int(out.best)
    original = loaded[i].original   # uint8 for 8-bit files
    lay = prepared.layouts[i]
    window = window_lib.plan(canvas_lib.boxes_to_original(out.boxes[best], lay), lay,
                             method.region.window, method.region.window_scale)
    window_masked = None
    if window.used:
      result, window_masked = _window_edit(built, original, window, batch, rng)
    else:
      result = canvas_lib.composite(original, out.edit.images[best], out.edit.pixel_mask[best],
                                    lay, dtype=np.uint8)
    record = _record(ex, prepared, i, out, seed, run, built, checkpoint,
                     pixels_lib.changed_region(result, original), window, number)
    record["window"].update(window_lib.masked_record(window, window_masked))
    record["strategy"] = strategy
    files = {}
    if out_dir is not None:
      files = {k: str(v) for k, v in output_names(out_dir, number, ex).items()}
      with output_files.atomic_path(files["edited"], overwrite) as tmp:
        images_lib.save_image(tmp, result)
      with output_files.atomic_path(files["sheet"], overwrite) as tmp:
        sheets.inference_sheet(tmp, image=prepared.images[i], outputs=out,
                               title=f"{ex.prompt!r} -> {prepared.summaries[i]}",
                               layout=lay, result=sheets.preview(result),
                               window=window.window_tlhw if window.used else None)
      record["files"] = files
      output_files.write_text(files["record"], json.dumps(record, indent=2), overwrite)
    results.append(EditOutcome(ex, result, out, record, files))
  return results


_WINDOW_EDIT = 0x3D17   # folded into the image's key for its window edit


def _window_edit(built: Built, original: np.ndarray, window: window_lib.Plan, batch,
                 rng) -> tuple[np.ndarray, list[int]]:
  """The kept box edited in its window (one editor call), pasted into the original; and
  the box the editor regenerated (window tokens)."""
  image = window_lib.window_canvas(original, window)[None]
  boxes = np.asarray(window.box_tlhw_tokens, np.int32)[None, None]
  edit = step_lib.make_edit(built.models)
  out = jax.device_get(edit({"editor": built.frozen["editor"]}, image, boxes, batch["cond"],
                            jax.random.fold_in(rng, _WINDOW_EDIT)))
  result = window_lib.paste(original, window, np.asarray(out.images[0, 0]),
                            np.asarray(out.pixel_mask[0, 0]))
  return result, np.asarray(out.masked_boxes[0, 0]).tolist()


def output_names(out_dir: str | pathlib.Path, index: int,
                 example: manifest_lib.Example) -> dict[str, pathlib.Path]:
  """The files the edit of example `index` writes: edited photo, sheet, JSON record."""
  stem = f"{index:03d}_{pathlib.Path(example.image_path).stem}_{_slug(example.prompt)}"
  out_dir = pathlib.Path(out_dir)
  return {"edited": out_dir / f"{stem}_edited.png", "sheet": out_dir / f"{stem}_sheet.png",
          "record": out_dir / f"{stem}.json"}


def check_outputs(out_dir: str | pathlib.Path | None, examples: list[manifest_lib.Example],
                  overwrite: bool = False) -> None:
  """Before any work: `out_dir` can be written, and no earlier result would be replaced
  (unless `overwrite`)."""
  if out_dir is None:
    return
  output_files.check_folder(out_dir)
  output_files.check_outputs(
      [p for i, ex in enumerate(examples) for p in output_names(out_dir, i, ex).values()],
      overwrite)


STRATEGIES = ("rgn", "refine") + tuple(x for x in step_lib.STRATEGIES if x != "rgn")


class StrategyError(UserError, ValueError):
  """A region strategy that does not fit the other flags."""


def resolve_strategy(strategy: str | None, rgn_checkpoint: str | None,
                     refine_steps: int) -> str:
  """The region strategy: the one named, else "refine" with refinement steps, else "rgn".

  "rgn": the trained RGN's box per anchor (`--rgn_checkpoint`; without one the RGN is
  untrained); "refine": the RGN fitted to each image first (`--refine_steps N`, from a
  checkpoint or from scratch, the paper's per-image mode); "search": every proposal
  edited and scored, the best kept (K x M edits, no training); "random",
  "dino_random": the paper's baselines (random-size boxes around random / DINO anchors).
  """
  if strategy is None:
    strategy = "refine" if refine_steps > 0 else "rgn"
  if strategy not in STRATEGIES:
    raise StrategyError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
  if strategy == "refine" and refine_steps <= 0:
    raise StrategyError("--strategy=refine needs --refine_steps N (N > 0)")
  if strategy != "refine" and refine_steps > 0:
    raise StrategyError(f"--refine_steps is for --strategy=refine, not {strategy}")
  if strategy not in ("rgn", "refine") and rgn_checkpoint:
    raise StrategyError(f"--strategy={strategy} uses no RGN: drop --rgn_checkpoint")
  return strategy


def run_edit(config, examples: list[manifest_lib.Example], *, out_dir=None,
             rgn_checkpoint: str | None = None, refine_steps: int = 0, seed: int = 0,
             built: Built | None = None, progress: bool = True,
             overwrite: bool = False, strategy: str | None = None) -> list[EditOutcome]:
  """Builds the models (unless given), loads or initialises the RGN, edits the examples
  with the region strategy (`resolve_strategy`)."""
  run = run_settings.parse(config)   # bad settings fail before anything is read or loaded
  method = run.method
  strategy = resolve_strategy(strategy, rgn_checkpoint, refine_steps)
  check_outputs(out_dir, examples, overwrite)   # ... and so do unwritable or taken outputs
  loaded = dataset.load_images(examples)   # bad images fail before any model loads
  if rgn_checkpoint:   # a missing or mismatched checkpoint fails before any model loads
    checkpointing.check_compatible(checkpointing.resolve_rgn_checkpoint(rgn_checkpoint)[0],
                                   run, checkpointing.rgn_keys(run))
  built = build_models(run) if built is None else built
  if rgn_checkpoint:
    rgn_params = checkpointing.load_rgn_params(rgn_checkpoint, built.models, run)
  else:
    if strategy == "rgn":
      logging.warning("No --rgn_checkpoint and no refinement steps: the boxes are chosen "
                      "by an untrained RGN.")
    rgn_params = step_lib.init_train_state(built.models, method,
                                           seeds.prng_key(run.seed)).params
  return edit_examples(built, rgn_params, examples, run, seed=seed, out_dir=out_dir,
                       refine_steps=refine_steps, checkpoint=rgn_checkpoint,
                       progress=progress, overwrite=overwrite, loaded=loaded,
                       strategy=strategy)
