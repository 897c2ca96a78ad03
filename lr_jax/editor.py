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

from lr_jax import dataset
from lr_common import image_files as images_lib
from lr_jax import manifest as manifest_lib
from lr_jax import sheets
from lr_jax import step as step_lib
from lr_jax.models import Models, build_models
from maskgit import editing
from lr_common import pixels as pixels_lib


@dataclasses.dataclass
class EditOutcome:
  example: manifest_lib.Example
  result: np.ndarray             # (H, W, 3) at the input's own resolution
  outputs: dict[str, np.ndarray] # model-size arrays of `step.infer` for this image
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


def refine(rgn_params, models: Models, frozen, batch, config, steps: int, seed: int,
           train_step=None):
  """The official per-image mode: a few Adam steps of the RGN on this image alone."""
  if steps <= 0:
    return rgn_params
  # On the default device, placed as the step's outputs will be: one compile.
  state = jax.device_put(step_lib.TrainState(
      np.zeros((), np.int32), rgn_params, step_lib.make_optimizer(config).init(rgn_params)))
  train_step = train_step or step_lib.make_train_step(models, config, donate=False)
  rng = jax.random.PRNGKey(seed)
  for _ in range(steps):
    state, _ = train_step(state, frozen, batch, rng)
  return state.params


def _tokens_to_pixels(boxes: np.ndarray, grid: int, original_shape) -> list:
  """(..., 4) token boxes (top, left, height, width) -> original-pixel boxes, rounded outward."""
  boxes = np.asarray(boxes, np.float64)
  sy, sx = original_shape[0] / grid, original_shape[1] / grid
  top = np.floor(boxes[..., 0] * sy)
  left = np.floor(boxes[..., 1] * sx)
  bottom = np.ceil((boxes[..., 0] + boxes[..., 2]) * sy)
  right = np.ceil((boxes[..., 1] + boxes[..., 3]) * sx)
  return np.stack([top, left, bottom - top, right - left], -1).astype(int).tolist()


def _changed_region(result: np.ndarray, original: np.ndarray) -> list[int] | None:
  """Bounding box (top, left, height, width) of the pixels where `result` != `original`."""
  changed = np.any(result != original, axis=-1)
  rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
  if not rows.size:
    return None
  return [int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)]


def _record(ex, prepared, i, out, seed, config, image_size, original_shape, checkpoint,
            changed_region):
  m = prepared.matches[i]
  grid = out["attention"].shape[-1]
  best = int(out["best"])
  edited = np.asarray(editing.grown_boxes(out["boxes"], grid, int(config.edit.grow_tokens)))
  return {
      "image": str(ex.image_path), "prompt": ex.prompt,
      "class": {"id": m.class_id, "name": m.name, "method": m.method,
                "top5": [list(t) for t in (m.top5 or [])]},
      "source_prompt": prepared.source_prompts[i],
      "anchors_rc_tokens": out["anchors"].tolist(),
      "chosen_box_index": out["chosen"].tolist(),
      "boxes_tlhw_tokens": out["boxes"].tolist(),
      "boxes_tlhw_pixels_original": _tokens_to_pixels(out["boxes"], grid, original_shape),
      # What MaskGIT regenerates: each box grown by config.edit.grow_tokens, clamped.
      "masked_boxes_tlhw_tokens": edited.tolist(),
      "masked_boxes_tlhw_pixels_original": _tokens_to_pixels(edited, grid, original_shape),
      # Outside this box the written photo is the input, pixel for pixel.
      "changed_region_tlhw_pixels_original": changed_region,
      "scores": {"S": out["scores"].tolist(), "s_t2i": out["s_t2i"].tolist(),
                 "s_i2i": out["s_i2i"].tolist(), "alpha": config.score.alpha,
                 "beta": config.score.beta},
      "best_anchor": best, "seed": seed, "image_index": i,
      "edit_rng": f"fold_in(PRNGKey({seed}), {i})", "model_image_size": image_size,
      "maskgit": config.maskgit.name, "models": config.models,
      "rgn_checkpoint": str(checkpoint) if checkpoint else None,
      "versions": dict(_versions()),
  }


def _slug(text: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40] or "edit"


def edit_examples(models: Models, frozen, rgn_params, examples: list[manifest_lib.Example],
                  config, *, seed: int = 0, out_dir: str | pathlib.Path | None = None,
                  refine_steps: int = 0, checkpoint: str | None = None,
                  progress: bool = True,
                  loaded: list[images_lib.LoadedImage] | None = None) -> list[EditOutcome]:
  """Edits each example; returns the outcomes and writes them to `out_dir` if given.

  Images run one at a time through one compiled `infer` (inputs are resized to the
  model size first, so different original sizes never recompile)."""
  loaded = dataset.load_images(examples) if loaded is None else loaded
  prepared = dataset.prepare(models, frozen, examples, loaded=loaded,
                             min_class_similarity=config.data.min_class_similarity)
  infer = step_lib.make_infer(models, config)
  train_step = (step_lib.make_train_step(models, config, donate=False)
                if refine_steps > 0 else None)
  out_dir = pathlib.Path(out_dir) if out_dir else None
  results = []
  for i, ex in enumerate(tqdm.tqdm(examples, desc="edit", disable=not progress)):
    batch = prepared.batch(np.asarray([i]))
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    params = refine(rgn_params, models, frozen, batch, config, refine_steps, seed + i,
                    train_step)
    out = jax.device_get(infer(params, frozen, batch, rng))
    out = {k: np.asarray(v)[0] for k, v in out.items()}
    best = int(out["best"])
    original = loaded[i].pixels
    result = pixels_lib.composite_to_original(
        original, out["candidates"][best], out["masks"][best])
    record = _record(ex, prepared, i, out, seed, config, models.maskgit.image_size,
                     original.shape, checkpoint, _changed_region(result, original))
    files = {}
    if out_dir is not None:
      stem = f"{i:03d}_{pathlib.Path(ex.image_path).stem}_{_slug(ex.prompt)}"
      files["edited"] = str(out_dir / f"{stem}_edited.png")
      files["sheet"] = str(out_dir / f"{stem}_sheet.png")
      files["record"] = str(out_dir / f"{stem}.json")
      images_lib.save_image(files["edited"], result)
      sheets.edit_sheet(
          files["sheet"], image=prepared.images[i], attention=out["attention"],
          anchors=out["anchors"], proposals=out["proposals"], chosen=out["chosen"],
          candidates=out["candidates"], scores=out["scores"],
          components={"t2i": out["s_t2i"], "i2i": out["s_i2i"]}, best=best,
          result=out["candidates"][best],
          title=f"{ex.prompt!r} -> class {record['class']['id']} ({record['class']['name']})")
      record["files"] = files
      pathlib.Path(files["record"]).write_text(json.dumps(record, indent=2))
    results.append(EditOutcome(ex, result, out, record, files))
  return results


def run_edit(config, examples: list[manifest_lib.Example], *, out_dir=None,
             rgn_checkpoint: str | None = None, refine_steps: int = 0, seed: int = 0,
             models: Models | None = None, frozen=None,
             progress: bool = True) -> list[EditOutcome]:
  """Builds the models (unless given), loads or initialises the RGN, edits the examples."""
  from lr_jax import trainer  # pylint: disable=g-import-not-at-top
  loaded = dataset.load_images(examples)   # bad images fail before any model loads
  if models is None:
    models, frozen = build_models(config)
  if rgn_checkpoint:
    rgn_params = trainer.load_rgn_params(rgn_checkpoint, models, config)
  else:
    if refine_steps <= 0:
      logging.warning("No --rgn_checkpoint and no refinement steps: the boxes are chosen "
                      "by an untrained RGN.")
    rgn_params = step_lib.init_train_state(models, config, jax.random.PRNGKey(config.seed)).params
  return edit_examples(models, frozen, rgn_params, examples, config, seed=seed,
                       out_dir=out_dir, refine_steps=refine_steps, checkpoint=rgn_checkpoint,
                       progress=progress, loaded=loaded)
