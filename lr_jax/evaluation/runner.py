"""Evaluation of region strategies: each (image, strategy) is edited, measured, recorded.

`evaluate(config, examples, strategies, out_dir)` is importable from notebooks; the
command is `lr_jax.evaluate`. Per pair it writes the edit's files under
`out_dir/edits/<strategy>/` and one JSON line in `out_dir/results.jsonl`, measured on
the written photo at its own resolution (`lr_jax.evaluation.metrics`). A pair is keyed by
what its result depends on (`lr_jax.evaluation.results`): a rerun skips the pairs already
there and redoes, saying so, those whose image, prompts or mask changed. One run at a
time writes a folder (`evaluate.lock`). `lr_jax.evaluation.report` turns the lines into
tables and pictures (`evaluate_and_report` does both). On several processes (`share`)
each edits its part of the pairs and process 0 merges (`lr_jax.evaluation.multihost`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image

from lr_common import folder_lock
from lr_common import json_files
from lr_common import output_files
from lr_common import pixels as pixels_lib
from lr_common import seeds
from lr_common.errors import UserError
from lr_common import canvas as canvas_lib
from lr_jax import checkpointing
from lr_jax import dataset
from lr_jax.encoders import dino as dino_lib
from lr_jax.evaluation import metrics as edit_metrics
from lr_jax import inference
from lr_jax.files import manifest as manifest_lib
from lr_jax.evaluation import object_masks
from lr_jax.evaluation import results as results_lib
from lr_jax.method import settings as settings_lib
from lr_jax.method import step as step_lib
from lr_jax import run_settings
from lr_jax.models import Built, Models, build_models

RESULTS_FILE = results_lib.RESULTS_FILE
SETTINGS_FILE = "evaluation.json"
LOCK_FILE = "evaluate.lock"
read_results = results_lib.read_results
DEFAULT_STRATEGIES = ("rgn", "search", "dino_random", "random")


class EvaluationError(UserError, ValueError):
  """Evaluation flags that do not fit together, or a folder made with other settings."""


def check_strategies(strategies: Sequence[str], rgn_checkpoint: str | None,
                     refine_steps: int) -> tuple[str, ...]:
  """The strategies, checked against the flags: `rgn` needs a checkpoint, `refine`
  refinement steps (a checkpoint, if given, is where refinement starts)."""
  strategies = tuple(dict.fromkeys(s.strip() for s in strategies if s.strip()))
  problems = [f"unknown strategy {s!r}" for s in strategies if s not in inference.STRATEGIES]
  if not strategies:
    problems.append("no strategy given")
  if "rgn" in strategies and not rgn_checkpoint:
    problems.append("strategy rgn needs --rgn_checkpoint (a trained RGN); drop rgn or give one")
  if "refine" in strategies and refine_steps <= 0:
    problems.append("strategy refine needs --refine_steps N (N > 0)")
  if refine_steps > 0 and "refine" not in strategies:
    problems.append("--refine_steps is only used by strategy refine")
  if rgn_checkpoint and not {"rgn", "refine"} & set(strategies):
    problems.append("--rgn_checkpoint is only used by strategies rgn and refine")
  if problems:
    raise EvaluationError("--strategies: " + "; ".join(problems) + f" (strategies: "
                          f"{', '.join(inference.STRATEGIES)})")
  return strategies


# ----------------------------------------------------------------------------
# The measuring models (CLIP image tower, DINO keys), compiled once per size.
# ----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _clip_embed(models: Models, frozen: Any, image: jax.Array) -> jax.Array:
  return step_lib.clip_images(models, frozen, image[None])[0][0]


@functools.partial(jax.jit, static_argnums=0)
def _dino_last_keys(models: Models, frozen: Any, image: jax.Array) -> jax.Array:
  """The last DINO block's attention keys (T, D) of one [0, 1] image, all heads."""
  mean = jnp.asarray(dino_lib.IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(dino_lib.IMAGENET_STD, jnp.float32)
  last = f"block_{models.dino.config.num_layers - 1}"
  params = frozen["dino"]
  _, state = models.dino.apply(
      {"params": params} if "params" not in params else params, ((image - mean) / std)[None],
      capture_intermediates=lambda m, name: m.scope.path == (last, "attn", "key"))
  return state["intermediates"][last]["attn"]["key"]["__call__"][0][0]


def _clip_canvas(image: np.ndarray, size: int) -> np.ndarray:
  """CLIP's own preprocessing on the host: the shorter side to `size` (bicubic), the
  centre square (so the jitted encoder sees one shape whatever the photo's size)."""
  height, width = image.shape[:2]
  if height <= width:
    out_hw = (size, max(size, int(width * size / height)))
  else:
    out_hw = (max(size, int(height * size / width)), size)
  resized = np.clip(pixels_lib.resize_channels(pixels_lib.to_float(image), out_hw,
                                               Image.Resampling.BICUBIC), 0.0, 1.0)
  top, left = int(round((out_hw[0] - size) / 2)), int(round((out_hw[1] - size) / 2))
  return resized[top:top + size, left:left + size]


def clip_embedding(built: Built, image: np.ndarray) -> np.ndarray:
  """CLIP image embedding (P,) of a photo of any size, uint8 or float in [0, 1]."""
  canvas = _clip_canvas(image, built.models.clip_image_size)
  return np.asarray(_clip_embed(built.models, {"clip": built.frozen["clip"]}, canvas))


def dino_self_similarity(built: Built, image: np.ndarray) -> np.ndarray:
  """(T, T) cosine self-similarity of the last DINO layer's keys ([CLS] and patches),
  on the photo resized to DINO's native square (as PIE-Bench's structure distance)."""
  size = built.models.dino.config.image_size
  canvas = pixels_lib.to_model_input(image, size)
  keys = _dino_last_keys(built.models, {"dino": built.frozen["dino"]}, canvas)
  return edit_metrics.self_similarity(np.asarray(keys))


# ----------------------------------------------------------------------------
# One (image, strategy) pair.
# ----------------------------------------------------------------------------

def source_features(built: Built, source: np.ndarray) -> dict[str, np.ndarray]:
  """What `measure` compares every edit of one photo with (computed once per photo)."""
  return {"clip": clip_embedding(built, source),
          "dino_self_similarity": dino_self_similarity(built, source)}


def measure(built: Built, score: settings_lib.ScoreSettings, outcome: inference.EditOutcome,
            source: np.ndarray, mask: np.ndarray | None,
            features: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """Every metric of one edit, on the written photo against the source photo (`score`:
  the quality score's weights; `features`: the photo's `source_features`, if already
  computed)."""
  record, result = outcome.record, outcome.result
  features = features or source_features(built, source)
  best = int(record.get("best_candidate", record.get("best_anchor")))
  texts = built.text_encoder([record["prompt"], record["source_prompt"]])
  edit_embed, source_embed = clip_embedding(built, result), features["clip"]
  metrics = edit_metrics.clip_scores(edit_embed, source_embed, texts[0], texts[1],
                                     score.alpha, score.beta)
  window = record.get("window") or {}
  editor_box = (window["masked_box_tlhw_pixels_original"] if window.get("used")
                else record["masked_boxes_tlhw_pixels_original"][best])   # what was regenerated
  metrics.update(edit_metrics.background_metrics(
      result, source, ~edit_metrics.box_mask(result.shape, [editor_box])))
  metrics["structure_distance"] = edit_metrics.structure_distance(
      features["dino_self_similarity"], dino_self_similarity(built, result))
  metrics["edited_area_fraction"] = edit_metrics.changed_fraction(result, source)
  chosen = record["boxes_tlhw_pixels_original"][best]
  regions = None
  if mask is not None:
    editor = built.models.editor
    lay = canvas_lib.layout(result.shape, editor.image_size, editor.box_grid,
                            record["canvas"]["canvas"])
    vt, vl, vh, vw = lay.valid_tlhw_tokens   # the photo's tokens (not the padding)
    attention = np.asarray(outcome.outputs.regions.attention)[vt:vt + vh, vl:vl + vw]
    top_cell = np.add(np.unravel_index(np.argmax(attention), attention.shape), (vt, vl))
    anchors = {"top_anchor": canvas_lib.token_centres_to_original(top_cell, lay),
               "chosen_anchor": record["anchors_rc_pixels_original"][best]}
    regions = edit_metrics.region_metrics(mask, chosen, anchors)
    outside = {f"{k}_outside_object": v for k, v in
               edit_metrics.background_metrics(result, source, ~mask).items()}
    metrics.update(outside)
  return {"metrics": metrics, "regions": regions, "chosen_box_tlhw_pixels": chosen,
          "editor_box_tlhw_pixels": editor_box}


# ----------------------------------------------------------------------------
# The folder: settings, outputs, one writer, resuming.
# ----------------------------------------------------------------------------

def _settings(run: run_settings.Run, seed: int, rgn_checkpoint: str | None,
              refine_steps: int) -> dict:
  return {"config": run.as_dict(), "seed": seed,
          "rgn_checkpoint": str(rgn_checkpoint) if rgn_checkpoint else None,
          "refine_steps": refine_steps}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: value}


def output_paths(out_dir: pathlib.Path, examples: list[manifest_lib.Example],
                 strategies: Sequence[str]) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(files, folders) an evaluation writes in `out_dir`."""
  files = [out_dir / n for n in (RESULTS_FILE, SETTINGS_FILE, LOCK_FILE, "summary.md",
                                 "summary.csv", "summary.png")]
  folders = [out_dir / "sheets", out_dir / "edits"] + [out_dir / "edits" / s for s in strategies]
  for i, ex in enumerate(examples):
    files.append(out_dir / "sheets" / f"{i:03d}_{pathlib.Path(ex.image_path).stem}.png")
    for s in strategies:
      files += inference.output_names(out_dir / "edits" / s, i, ex).values()
  return files, folders


def check_folder(out_dir: pathlib.Path, settings: dict,
                 examples: list[manifest_lib.Example] | None = None,
                 strategies: Sequence[str] = ()) -> None:
  """The folder and every file the evaluation writes there can be written and, if it
  holds an evaluation, it was made with these settings (results of other settings are
  never mixed in)."""
  output_files.check_folder(out_dir)
  files, folders = output_paths(out_dir, examples or [], strategies)
  for folder in folders:
    output_files.check_folder(folder)
  output_files.check_outputs(files, overwrite=True)
  path = out_dir / SETTINGS_FILE
  if not path.is_file():
    return
  before = json_files.read_json(path, dict, "the settings of the evaluation in that folder",
                                "move it away to start afresh")
  old, new = _flat(before), _flat(json.loads(json.dumps(settings)))
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if changed:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
    raise EvaluationError(f"{out_dir} holds an evaluation made with other settings "
                          f"({details}{', ...' if len(changed) > 8 else ''}); use another "
                          "--out, or the same settings to resume it")


def locked(out_dir: str | pathlib.Path):
  """The evaluation folder held by this process for the block (`evaluate.lock`); a
  second run on the folder is refused, naming the holder."""
  return folder_lock.held(out_dir, LOCK_FILE, doing="evaluated", flag="--out",
                          error=EvaluationError)


def _rgn_step(rgn_checkpoint: str | None) -> int | None:
  """The checkpoint step an RGN strategy loads (the newest when a workdir is given)."""
  if not rgn_checkpoint:
    return None
  workdir, step = checkpointing.resolve_rgn_checkpoint(rgn_checkpoint)
  if step is None:
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    step = max(steps, default=None)
  return step


@dataclasses.dataclass
class Plan:
  """A checked evaluation, before any model is built: what to do and with what."""
  run: run_settings.Run
  method: settings_lib.Method
  examples: list[manifest_lib.Example]
  strategies: tuple[str, ...]
  out_dir: pathlib.Path
  settings: dict[str, Any]
  loaded: list[Any]
  masks: list[np.ndarray | None]
  wanted: dict[tuple[int, str], dict[str, Any]]   # (index, strategy) -> key, inputs
  rgn_checkpoint: str | None
  refine_steps: int
  seed: int


def plan(config, examples: list[manifest_lib.Example], strategies: Sequence[str],
         out_dir: str | pathlib.Path, *, rgn_checkpoint: str | None = None,
         refine_steps: int = 0, seed: int = 0) -> Plan:
  """Checks everything that can be checked before any model is built (the config, the
  seed, the strategies, the folder and its outputs, the images, the object masks, the
  checkpoint) and keys every pair by what its result depends on. Writes nothing."""
  run = run_settings.parse(config)
  method = run.method
  seed = seeds.check_seed(seed, "--seed")   # any integer: lr_common.seeds
  strategies = check_strategies(strategies, rgn_checkpoint, refine_steps)
  out_dir = pathlib.Path(out_dir)
  settings = _settings(run, seed, rgn_checkpoint, refine_steps)
  check_folder(out_dir, settings, examples, strategies)
  loaded = dataset.load_images(examples)
  masks = object_masks.load_masks(examples, [im.original.shape[:2] for im in loaded])
  if rgn_checkpoint:
    checkpointing.check_compatible(checkpointing.resolve_rgn_checkpoint(rgn_checkpoint)[0],
                                   run, checkpointing.rgn_keys(run))
  step = _rgn_step(rgn_checkpoint)
  settings_id = results_lib.settings_sha1(settings)
  wanted = {}
  for i, ex in enumerate(examples):
    content = (results_lib.array_sha1(loaded[i].original), results_lib.array_sha1(masks[i]))
    for s in strategies:
      inputs = results_lib.pair_inputs(ex, *content, s, step)
      wanted[(i, s)] = {"key": results_lib.pair_key(i, s, inputs, settings_id),
                        "inputs": inputs}
  return Plan(run, method, examples, strategies, out_dir, settings, loaded, masks, wanted,
              rgn_checkpoint, refine_steps, seed)


def evaluate(config, examples: list[manifest_lib.Example],
             strategies: Sequence[str] = DEFAULT_STRATEGIES, out_dir: str | pathlib.Path = "",
             *, rgn_checkpoint: str | None = None, refine_steps: int = 0, seed: int = 0,
             built: Built | None = None, progress: bool = True) -> list[dict[str, Any]]:
  """Edits every example with every strategy, measures each edit, adds the lines to
  `out_dir/results.jsonl` (skipping pairs already there with the same inputs and
  settings); returns the lines of this manifest and these strategies, in file order.

  Everything that can be checked is checked before any model is built (`plan`); the
  folder is held by this run meanwhile (`locked`). One process of several:
  `lr_jax.evaluation.multihost.evaluate`.
  """
  checked = plan(config, examples, strategies, out_dir, rgn_checkpoint=rgn_checkpoint,
                 refine_steps=refine_steps, seed=seed)
  checked.out_dir.mkdir(parents=True, exist_ok=True)
  with locked(checked.out_dir):
    return run(checked, built, progress)[0]


def evaluate_and_report(config, examples: list[manifest_lib.Example],
                        strategies: Sequence[str], out_dir: str | pathlib.Path, *,
                        rgn_checkpoint: str | None = None, refine_steps: int = 0,
                        seed: int = 0, built: Built | None = None, progress: bool = True
                        ) -> tuple[list[dict[str, Any]], dict[str, pathlib.Path]]:
  """`evaluate`, then the report of its lines (`report_new`), the folder held
  throughout; returns the lines and the summary files."""
  checked = plan(config, examples, strategies, out_dir, rgn_checkpoint=rgn_checkpoint,
                 refine_steps=refine_steps, seed=seed)
  checked.out_dir.mkdir(parents=True, exist_ok=True)
  with locked(checked.out_dir):
    rows, new = run(checked, built, progress)
    files = report_new(checked, rows, new)
  return rows, files


def report_new(p: Plan, rows: list[dict[str, Any]], new: list[tuple[int, str]]
               ) -> dict[str, pathlib.Path]:
  """The report of a folder's lines (`lr_jax.evaluation.report`: summary files, and the
  sheets of the images with new results)."""
  from lr_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  return report.write_report(p.out_dir, rows, p.strategies, {i for i, _ in new})


def stored_pairs(p: Plan, stored: results_lib.Stored, quiet: bool = False
                 ) -> tuple[list[dict[str, Any]], list[tuple[int, str]], list[tuple[int, str]]]:
  """(lines kept, pairs to do, pairs whose line comes from a process's share) of what
  the folder holds; says (unless `quiet`) which pairs are redone and why, and names
  moved images where they are now."""
  settings_id = results_lib.settings_sha1(p.settings)
  kept, todo, redo = results_lib.split(stored.rows, p.wanted, settings_id)
  for (i, s), why in ({} if quiet else redo).items():
    logging.warning("%s: %s (row %d), strategy %s is redone: %s.", RESULTS_FILE,
                    pathlib.Path(p.examples[i].image_path).name, i, s, why)
  current = {w["key"]: pair for pair, w in p.wanted.items()}
  for row in kept:   # a moved image (same content) keeps its result: name where it is now
    if row["key"] in current:
      row["image"] = str(p.examples[current[row["key"]][0]].image_path)
  shared = [current[r["key"]] for r in kept
            if r["key"] in stored.from_shares and r["key"] in current]
  return kept, todo, shared


def current_rows(p: Plan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The lines of the plan's pairs, in file order."""
  keys = {w["key"] for w in p.wanted.values()}
  return [r for r in rows if r["key"] in keys]


def run(p: Plan, built: Built | None = None, progress: bool = True
        ) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
  """Runs a checked plan in its folder (held by the caller: `locked`); returns the lines
  of the plan's pairs (file order) and the pairs new since the last report (done now,
  or by the processes of a job that did not merge them: their shares are merged)."""
  check_folder(p.out_dir, p.settings)   # again: another run may have started the folder
  stored = results_lib.read_stored(p.out_dir, p.strategies)
  rows, todo, shared = stored_pairs(p, stored)
  skipped = len(p.wanted) - len(todo)
  images = len({i for i, _ in p.wanted})
  print(f"evaluate: {len(p.wanted)} pairs ({images} images x {len(p.strategies)} strategies); "
        + (f"{skipped} already in {p.out_dir / RESULTS_FILE} skipped, " if skipped else "")
        + (f"{len(todo)} to edit" if todo else "nothing to edit"), flush=True)
  if todo:
    edit_and_measure(p, rows, todo, built, progress, skipped)
  elif stored.files:
    results_lib.write_results(p.out_dir, rows)
  results_lib.remove_shares(stored.files)   # now in results.jsonl
  return current_rows(p, rows), shared + todo


def write_settings(p: Plan) -> None:
  """The folder's settings file (`evaluation.json`), unless there already."""
  if not (p.out_dir / SETTINGS_FILE).is_file():
    output_files.write_text(p.out_dir / SETTINGS_FILE, json.dumps(p.settings, indent=2))


def edit_and_measure(p: Plan, rows: list[dict[str, Any]], todo: list[tuple[int, str]],
                     built: Built | None, progress: bool, skipped: int = 0,
                     path: pathlib.Path | None = None, total: int | None = None) -> None:
  """Edits and measures the pairs `todo`, adding each line to `rows` and rewriting the
  results file after each (with `path`, a process's share: that file, and the
  settings file is process 0's to write; `total`: the bar's pairs, done or not)."""
  examples, loaded, out_dir = p.examples, p.loaded, p.out_dir
  if path is None:
    write_settings(p)
  settings_id = results_lib.settings_sha1(p.settings)
  built = build_models(p.run) if built is None else built
  trained = checkpointing.rgn_params(p.rgn_checkpoint, built.models, p.run)
  compiled = set()
  # Over pairs (one edit each, minutes on a CPU), the skipped ones counted as done.
  bar = tqdm.tqdm(total=total or len(p.wanted), initial=skipped, unit="pair", disable=not progress,
                  desc=f"evaluate ({skipped} skipped)" if skipped else "evaluate",
                  dynamic_ncols=True)
  for i in sorted({i for i, _ in todo}):
    features = source_features(built, loaded[i].original)
    for strategy in [s for j, s in todo if j == i]:
      bar.set_postfix_str(f"{pathlib.Path(examples[i].image_path).name} {strategy}")
      start = time.perf_counter()
      outcome = inference.edit_examples(
          built, trained, [examples[i]], p.run, seed=p.seed,
          out_dir=out_dir / "edits" / strategy, progress=False, overwrite=True,
          loaded=[loaded[i]], strategy=strategy, start_index=i,
          refine_steps=p.refine_steps if strategy == "refine" else 0,
          checkpoint=p.rgn_checkpoint if strategy in ("rgn", "refine") else None)[0]
      seconds = time.perf_counter() - start
      wanted = p.wanted[(i, strategy)]
      rows.append({
          "key": wanted["key"], "index": i, "inputs": wanted["inputs"],
          "settings_sha1": settings_id,
          "image": str(examples[i].image_path), "prompt": examples[i].prompt,
          "source_prompt": outcome.record["source_prompt"],
          "conditioning": outcome.record["conditioning"], "strategy": strategy,
          "seed": p.seed, "seconds": seconds, "includes_compile": strategy not in compiled,
          "files": outcome.files,
          **measure(built, p.method.score, outcome, loaded[i].original, p.masks[i], features)})
      compiled.add(strategy)
      results_lib.write_lines(path or out_dir / RESULTS_FILE, rows)
      bar.update(1)
  bar.close()
