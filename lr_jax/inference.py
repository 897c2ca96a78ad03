"""Inference: pick a box per anchor with the RGN, edit all K in one call, keep the best.

Importable from notebooks: `edit_examples(...)` returns the results and, given an
output folder, writes per image the edited photo (original resolution), a sheet
picture and a JSON record.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
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
from lr_common import canvas as canvas_lib
from lr_jax import checkpointing
from lr_jax import dataset
from lr_jax import hosts
from lr_jax.files import manifest as manifest_lib
from lr_jax.method import given_boxes
from lr_jax.method import settings as settings_lib
from lr_jax.method import sharding
from lr_jax.files import sheets
from lr_jax.method import step as step_lib
from lr_jax.method import window as window_lib
from lr_jax import run_settings
from lr_jax import user_boxes
from lr_jax.models import Built, build_models


@dataclasses.dataclass
class EditOutcome:
  example: manifest_lib.Example
  result: np.ndarray             # (H, W, 3) uint8 at the input's own resolution (as written)
  outputs: step_lib.Inference    # `step.infer`'s results for this image (numpy, no batch axis)
  record: dict[str, Any]         # what the JSON file holds
  files: dict[str, str]          # written files by kind
  canvas: np.ndarray | None = None            # (S, S, 3) the input on the editor's canvas
  layout: canvas_lib.Layout | None = None     # where the photo lies on that canvas
  number: int = 0                             # the example's index (file names, keys)

  def candidate_image(self, i: int) -> np.ndarray:
    """Candidate i's edit composited into the original at its resolution (uint8; the
    kept candidate's whole-canvas edit, before any window edit)."""
    original = images_lib.load_image(self.example.image_path).original
    return canvas_lib.composite(original, self.outputs.edit.images[i],
                                self.outputs.edit.pixel_mask[i], self.layout, dtype=np.uint8,
                                box_tokens=self.outputs.edit.masked_boxes[i])


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
           seed: int, train_step=None, split: step_lib.Split = None, frozen=None):
  """The official per-image mode: a few Adam steps of the RGN on this image alone;
  with `split`, each step's K x M edits spread over its devices (`frozen`: the frozen
  weights already replicated there, else `built.frozen`)."""
  if steps <= 0:
    return rgn_params
  # Placed as the step's outputs will be (the default device, or replicated on the
  # split's devices): one compile.
  state = step_lib.new_train_state(rgn_params, method.optim)
  state = jax.device_put(state, split.replicated() if split else None)
  train_step = train_step or step_lib.make_train_step(built.models, method, donate=False,
                                                      split=split)
  frozen = built.frozen if frozen is None else frozen
  rng = seeds.prng_key(seed)
  for _ in range(steps):
    state, _ = train_step(state, frozen, batch, rng)
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
      # The feather stops within this box: the kept (grown) box plus at most
      # canvas.FEATHER_LIMIT of its side, in the written photo's pixels.
      "feather_limit": _feather_record(out, best, lay, window),
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


def _feather_record(out: step_lib.Inference, best: int, lay, window: window_lib.Plan):
  if window.used:
    return {"fraction": canvas_lib.FEATHER_LIMIT, "applies_to": "the window edit"}
  (top, left, h, w), (mr, mc) = canvas_lib.feather_limit(out.edit.masked_boxes[best], lay)
  height, width = lay.original_hw
  t, l = max(top - mr, 0), max(left - mc, 0)
  return {"fraction": canvas_lib.FEATHER_LIMIT,
          "tlhw_pixels_original": [t, l, min(top + h + mr, height) - t,
                                   min(left + w + mc, width) - l]}


def _sheet_title(prompt: str, conditioning: str) -> str:
  """One title: the prompt and what the editor made of it, once each (a free-text editor's
  conditioning already quotes the prompt)."""
  return conditioning if repr(prompt) in conditioning else f"{prompt!r} -> {conditioning}"


def _slug(text: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40] or "edit"


def edit_examples(built: Built, rgn_params, examples: list[manifest_lib.Example],
                  config, *, seed: int = 0, out_dir: str | pathlib.Path | None = None,
                  refine_steps: int = 0, checkpoint: str | None = None,
                  progress: bool = True, overwrite: bool = False,
                  loaded: list[images_lib.LoadedImage] | None = None,
                  strategy: str = "rgn", start_index: int = 0,
                  boxes: list[list[tuple[int, int, int, int]]] | None = None,
                  strategy_reason: str | None = None, tagged_names: bool = False,
                  overwrite_flag: str = "--overwrite",
                  box_request: dict | None = None,
                  devices: list[Any] | None = None) -> list[EditOutcome]:
  """Edits each example; returns the outcomes and writes them to `out_dir` if given
  (an existing result is never replaced unless `overwrite`). Example i is number
  `start_index + i` of its manifest: its edit key and file names follow that number,
  so editing a manifest in parts gives the results of editing it whole.

  Images run one at a time through one compiled `infer` (inputs are put on the
  editor's canvas first, so different original sizes never recompile); with window
  mode (`lr_jax.method.window`) the kept box is edited once more in a window of the original.
  `config`: a ConfigDict or a parsed `run_settings.Run`. strategy "box": `boxes[i]` are
  example i's token boxes (`user_boxes.to_tokens`), edited without region selection.
  `tagged_names`: file names carry strategy and seed (`output_names`).
  The candidates of an image are split over `devices` (default: all of this host's) in
  chunks of at most `config.infer.max_edits_per_device` each (`sharding.candidate_split`);
  on one device without a cap all are edited at once, as always."""
  run = run_settings.parse(config)
  method = run.method
  split = sharding.candidate_split(run.infer.max_edits_per_device, devices)
  frozen = sharding.replicated_once(built.frozen, split)   # once per model, not per image
  loaded = dataset.load_images(examples) if loaded is None else loaded
  prepared = dataset.prepare(built, examples, loaded=loaded, canvas=method.region.canvas)
  if strategy == "box":
    infer_boxes = given_boxes.make_infer_boxes(built.models, method, split)
  else:
    infer = step_lib.make_infer(built.models, method,
                                "rgn" if strategy == "refine" else strategy, split)
  train_step = (step_lib.make_train_step(built.models, method, donate=False, split=split)
                if refine_steps > 0 else None)
  out_dir = pathlib.Path(out_dir) if out_dir else None
  results = []
  for i, ex in enumerate(tqdm.tqdm(examples, desc="edit", disable=not progress)):
    batch = prepared.batch(np.asarray([i]))
    number = start_index + i
    rng = jax.random.fold_in(seeds.prng_key(seed), number)
    params = refine(rgn_params, built, batch, method, refine_steps, seed + number, train_step,
                    split, frozen)
    if strategy == "box":
      given = np.asarray(boxes[i], np.float32)[None]
      found = infer_boxes(frozen, batch, given, rng)
    else:
      found = infer(params, frozen, batch, rng)
    out = jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(found))
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
                                    lay, dtype=np.uint8, box_tokens=out.edit.masked_boxes[best])
    record = _record(ex, prepared, i, out, seed, run, built, checkpoint,
                     pixels_lib.changed_region(result, original), window, number)
    record["window"].update(window_lib.masked_record(window, window_masked))
    record["strategy"] = strategy
    if strategy_reason:
      record["strategy_reason"] = strategy_reason
    if strategy == "box":
      record["given_boxes_tlhw_tokens"] = [list(b) for b in boxes[i]]
      record["given_boxes_tlhw_pixels_original"] = canvas_lib.boxes_to_original(
          np.asarray(boxes[i]), lay)
      if box_request:
        record["given_boxes_as_asked"] = box_request
    outcome = EditOutcome(ex, result, out, record, {}, prepared.images[i], lay, number)
    if out_dir is not None:
      names = output_names(out_dir, number, ex, *((strategy, seed) if tagged_names else ()))
      write_outcome(outcome, names, overwrite, window, overwrite_flag)
    results.append(outcome)
  return results


def write_outcome(outcome: EditOutcome, names: dict[str, pathlib.Path], overwrite: bool = False,
                  window: window_lib.Plan | None = None, flag: str = "--overwrite") -> None:
  """Writes an outcome's edited photo, sheet and JSON record to `names` (`output_names`);
  an existing file is replaced only with `overwrite` (else the error names `flag`)."""
  files = {k: str(v) for k, v in names.items()}
  output_files.check_outputs([pathlib.Path(f) for f in files.values()], overwrite, flag)
  with output_files.atomic_path(files["edited"], overwrite, flag) as tmp:
    images_lib.save_image(tmp, outcome.result)
  window_tlhw = None
  if window is not None and window.used:
    window_tlhw = window.window_tlhw
  elif window is None and outcome.record.get("window", {}).get("used"):
    window_tlhw = outcome.record["window"]["window_tlhw_pixels_original"]
  with output_files.atomic_path(files["sheet"], overwrite, flag) as tmp:
    sheets.inference_sheet(tmp, image=outcome.canvas, outputs=outcome.outputs,
                           title=_sheet_title(outcome.example.prompt,
                                              outcome.record["conditioning"]),
                           layout=outcome.layout, result=sheets.preview(outcome.result),
                           window=window_tlhw)
  outcome.record["files"] = files
  outcome.files.clear()
  outcome.files.update(files)
  output_files.write_text(files["record"], json.dumps(outcome.record, indent=2), overwrite)


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
                            np.asarray(out.pixel_mask[0, 0]),
                            box_tokens=np.asarray(out.masked_boxes[0, 0]))
  return result, np.asarray(out.masked_boxes[0, 0]).tolist()


def output_names(out_dir: str | pathlib.Path, index: int, example: manifest_lib.Example,
                 strategy: str | None = None, seed: int | None = None
                 ) -> dict[str, pathlib.Path]:
  """The files the edit of example `index` writes: edited photo, sheet, JSON record.

  `<index>_<image stem>_<prompt>[_<strategy>_seed<seed>]`: `lr_jax.edit` and the API
  name the strategy and seed, so runs with other settings sit side by side in one folder;
  an evaluation keeps one folder per strategy and its seed in its settings."""
  stem = f"{index:03d}_{pathlib.Path(example.image_path).stem}_{_slug(example.prompt)}"
  if strategy is not None:
    stem += f"_{strategy}_seed{seed}"
  out_dir = pathlib.Path(out_dir)
  return {"edited": out_dir / f"{stem}_edited.png", "sheet": out_dir / f"{stem}_sheet.png",
          "record": out_dir / f"{stem}.json"}


def check_outputs(out_dir: str | pathlib.Path | None, examples: list[manifest_lib.Example],
                  overwrite: bool = False, strategy: str | None = None, seed: int | None = None,
                  flag: str = "--overwrite") -> None:
  """Before any work: `out_dir` can be written, and no earlier result would be replaced
  (unless `overwrite`). With `strategy`, the names carry it and `seed` (`output_names`)."""
  if out_dir is None:
    return
  output_files.check_folder(out_dir)
  tags = (strategy, seed) if strategy is not None else ()
  output_files.check_outputs(
      [p for i, ex in enumerate(examples) for p in output_names(out_dir, i, ex, *tags).values()],
      overwrite, flag)


STRATEGIES = ("rgn", "refine") + tuple(x for x in step_lib.STRATEGIES if x != "rgn")
ALL_STRATEGIES = STRATEGIES + ("box",)


class StrategyError(UserError, ValueError):
  """A region strategy that does not fit the other flags."""


def _arg(name: str, value: str, python: bool) -> str:
  """How the user writes an argument: `--name value` on the command line, `name=value`
  in Python."""
  if python:
    return f"{name}={value!r}" if name in ("strategy", "rgn_checkpoint") else f"{name}={value}"
  return f"--{name} {value}" if value else f"--{name}"


def choose_strategy(strategy: str | None, rgn_checkpoint: str | None, refine_steps: int,
                    boxes: bool = False, python: bool = False) -> tuple[str, str]:
  """The region strategy and why: the one named, else "box" with boxes, "refine" with
  refinement steps, "rgn" with a checkpoint, else "search".

  "rgn": the trained RGN's box per anchor (needs a checkpoint); "refine": the RGN fitted
  to each image first (refinement steps, from a checkpoint or from scratch, the paper's
  per-image mode); "search": every proposal edited and scored, the best kept (K x M
  edits, no training); "random", "dino_random": the paper's baselines; "box": the
  user's boxes, no region selection. Errors name command-line flags, or Python
  arguments with `python`."""
  say = lambda name, value="": _arg(name, value, python)
  if strategy is None:
    if boxes:
      strategy, reason = "box", "boxes given: no region selection"
    elif refine_steps > 0:
      strategy, reason = "refine", "refine_steps given: the RGN fitted to each image first"
    elif rgn_checkpoint:
      strategy, reason = "rgn", "rgn_checkpoint given: the trained RGN's box per anchor"
    else:
      strategy, reason = "search", ("no rgn_checkpoint or refine_steps: every proposal "
                                    "edited and scored (an untrained RGN would pick "
                                    "random boxes)")
  else:
    reason = "asked for"
  if strategy not in ALL_STRATEGIES:
    raise StrategyError(f"{'strategy' if python else '--strategy'} must be one of "
                        f"{', '.join(ALL_STRATEGIES)}, got {strategy!r}")
  if strategy == "rgn" and not rgn_checkpoint:
    raise StrategyError(
        f"{say('strategy', 'rgn')} needs a trained RGN: pass {say('rgn_checkpoint', 'DIR')} "
        f"(a training workdir), or use {say('strategy', 'search')} (every proposal edited "
        f"and scored, no training)")
  if strategy == "refine" and refine_steps <= 0:
    raise StrategyError(f"{say('strategy', 'refine')} needs {say('refine_steps', 'N')} (N > 0)")
  if strategy != "refine" and refine_steps > 0:
    raise StrategyError(f"{say('refine_steps', 'N')} is for {say('strategy', 'refine')}, "
                        f"not {strategy}")
  if strategy not in ("rgn", "refine") and rgn_checkpoint:
    raise StrategyError(f"{say('strategy', strategy)} uses no RGN: drop "
                        f"{say('rgn_checkpoint', 'DIR')}")
  box_arg = say("box", "(top, left, height, width)" if python else "top,left,height,width")
  if boxes and strategy != "box":
    raise StrategyError(f"{box_arg} is for {say('strategy', 'box')} (no region selection), "
                        f"not {strategy}")
  if strategy == "box" and not boxes:
    raise StrategyError(f"{say('strategy', 'box')} needs {box_arg}")
  return strategy, reason


def resolve_strategy(strategy: str | None, rgn_checkpoint: str | None,
                     refine_steps: int) -> str:
  """`choose_strategy`'s strategy (no boxes, command-line wording)."""
  return choose_strategy(strategy, rgn_checkpoint, refine_steps)[0]


def given_boxes_on_canvas(run: run_settings.Run, loaded: list[images_lib.LoadedImage],
                          boxes, unit: str = "pixels", name: str = "--box"
                          ) -> list[list[tuple[int, int, int, int]]]:
  """Each image's token boxes on its canvas for the user's `boxes` (checked: raises
  `user_boxes.BoxError`); uses only the image sizes, no model."""
  wanted = user_boxes.normalize(boxes, name)
  editor = run.editor
  return [user_boxes.to_tokens(
      wanted, unit, canvas_lib.layout(image.original.shape[:2], editor.image_size,
                                      editor.box_grid, run.method.region.canvas),
      name, pathlib.Path(image.path).name if image.path else "the photo") for image in loaded]


def run_edit(config, examples: list[manifest_lib.Example], *, out_dir=None,
             rgn_checkpoint: str | None = None, refine_steps: int = 0, seed: int = 0,
             built: Built | None = None, progress: bool = True,
             overwrite: bool = False, strategy: str | None = None,
             boxes=None, box_unit: str = "pixels",
             share: hosts.Share = hosts.SINGLE) -> list[EditOutcome]:
  """Builds the models (unless given), loads or initialises the RGN, edits the examples
  with the region strategy (`choose_strategy`; `boxes`: the user's, in `box_unit`, the
  same for every example). File names carry strategy and seed (`output_names`).

  With `share` (`lr_jax.hosts`: one of several processes making the same call) this
  process edits its block of the examples (`hosts.block`; numbered, named and seeded as
  in the whole manifest) and returns their outcomes; every process checks everything
  first and all stop together if one finds a problem."""
  run, strategy, reason, part, loaded, token_boxes = hosts.on_every_process(
      share, _checked_edit, config, examples, out_dir, rgn_checkpoint, refine_steps, seed,
      overwrite, strategy, boxes, box_unit, share)
  if share.several:   # the same job everywhere: else the blocks would skip or repeat photos
    hosts.agree(None, share, same=_job_identity(
        run, examples, out_dir, rgn_checkpoint, refine_steps, seed, strategy, boxes, box_unit))
  if not part:   # more processes than examples
    return []
  built = build_models(run) if built is None else built
  rgn_params = checkpointing.rgn_params(rgn_checkpoint, built.models, run)
  return edit_examples(built, rgn_params, [examples[i] for i in part], run, seed=seed,
                       out_dir=out_dir, refine_steps=refine_steps, checkpoint=rgn_checkpoint,
                       progress=progress, overwrite=overwrite, loaded=loaded,
                       strategy=strategy, boxes=token_boxes, strategy_reason=reason,
                       tagged_names=True, start_index=part.start, box_request=None
                       if boxes is None else {"unit": box_unit, "tlhw": [
                           list(b) for b in user_boxes.normalize(boxes)]})


def _job_identity(run: run_settings.Run, examples: list[manifest_lib.Example], *args
                  ) -> dict[str, str]:
  """Digests of what every process of one edit job must share: the settings and flags,
  and the examples (photo names, prompts, class ids)."""
  digest = lambda value: hashlib.sha1(
      json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
  return {"settings (config and flags)": digest([run.as_dict(), *args]),
          "examples (manifest)": digest([(pathlib.Path(ex.image_path).name, ex.prompt,
                                          ex.source_prompt, ex.class_id) for ex in examples])}


def _checked_edit(config, examples, out_dir, rgn_checkpoint, refine_steps, seed, overwrite,
                  strategy, boxes, box_unit, share):
  """`run_edit`'s checks, before any model loads: (run settings, strategy, why, this
  process's examples (a range), their images, their token boxes or None)."""
  run = run_settings.parse(config)   # bad settings fail before anything is read or loaded
  strategy, reason = choose_strategy(strategy, rgn_checkpoint, refine_steps,
                                     boxes is not None)
  check_outputs(out_dir, examples, overwrite, strategy, seed)   # ... and so do taken outputs
  part = hosts.block(len(examples), share)
  loaded = dataset.load_images([examples[i] for i in part])   # ... and bad images
  token_boxes = (given_boxes_on_canvas(run, loaded, boxes, box_unit)
                 if strategy == "box" else None)   # ... and bad boxes
  if rgn_checkpoint:   # a missing or mismatched checkpoint fails before any model loads
    checkpointing.check_compatible(checkpointing.resolve_rgn_checkpoint(rgn_checkpoint)[0],
                                   run, checkpointing.rgn_keys(run))
  return run, strategy, reason, part, loaded, token_boxes
