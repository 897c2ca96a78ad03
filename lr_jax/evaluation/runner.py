"""Evaluation of region strategies: each (image, strategy) is edited, measured, recorded.

`evaluate(config, examples, strategies, out_dir)` is importable from notebooks; the
command is `lr_jax.evaluate`. Per pair it writes the edit's files under
`out_dir/edits/<strategy>/` and one JSON line in `out_dir/results.jsonl`, measured on
the written photo at its own resolution (`lr_jax.evaluation.metrics`); a rerun skips the
pairs already there. `lr_jax.evaluation.report` turns the lines into tables and pictures.
"""
from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image

from lr_common import output_files
from lr_common import pixels as pixels_lib
from lr_common.errors import UserError
from lr_jax.method import canvas as canvas_lib
from lr_jax import checkpointing
from lr_jax import dataset
from lr_jax.encoders import dino as dino_lib
from lr_jax.evaluation import metrics as edit_metrics
from lr_jax import inference
from lr_jax.files import manifest as manifest_lib
from lr_jax.evaluation import object_masks
from lr_jax.method import settings as settings_lib
from lr_jax.method import step as step_lib
from lr_jax import run_settings
from lr_jax.models import Built, Models, build_models

RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "evaluation.json"
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

def pair_key(index: int, example: manifest_lib.Example, strategy: str) -> str:
  """The identity of a result line: manifest row, image, prompt, strategy."""
  return f"{index}|{example.image_path}|{example.prompt}|{strategy}"


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
# The folder: settings, results, resuming.
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


def check_folder(out_dir: pathlib.Path, settings: dict) -> None:
  """The folder can be written and, if it holds an evaluation, it was made with these
  settings (results of other settings are never mixed in)."""
  output_files.check_folder(out_dir)
  path = out_dir / SETTINGS_FILE
  if not path.is_file():
    return
  try:
    before = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise EvaluationError(f"{path}: unreadable ({e}); move it away to start afresh") from None
  old, new = _flat(before), _flat(json.loads(json.dumps(settings)))
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if changed:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
    raise EvaluationError(f"{out_dir} holds an evaluation made with other settings "
                          f"({details}{', ...' if len(changed) > 8 else ''}); use another "
                          "--out, or the same settings to resume it")


def read_results(out_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The result lines of an evaluation folder (none if it has no results yet)."""
  path = pathlib.Path(out_dir) / RESULTS_FILE
  if not path.is_file():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except ValueError:
        raise EvaluationError(f"{path}: line {number} is not JSON; the file was edited by "
                              "hand? Remove that line to resume") from None
  return rows


def _finite(value: Any) -> Any:
  """JSON-safe: a NaN or infinite number becomes None."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def _write_results(out_dir: pathlib.Path, rows: list[dict[str, Any]]) -> None:
  """All lines at once, atomically: a kill leaves the old file or the new one."""
  text = "".join(json.dumps(_finite(r), allow_nan=False) + "\n" for r in rows)
  output_files.write_text(out_dir / RESULTS_FILE, text, overwrite=True)


def evaluate(config, examples: list[manifest_lib.Example],
             strategies: Sequence[str] = DEFAULT_STRATEGIES, out_dir: str | pathlib.Path = "",
             *, rgn_checkpoint: str | None = None, refine_steps: int = 0, seed: int = 0,
             built: Built | None = None, progress: bool = True) -> list[dict[str, Any]]:
  """Edits every example with every strategy, measures each edit, appends the lines to
  `out_dir/results.jsonl` (skipping pairs already there); returns all current lines.

  Everything that can be checked is checked before any model is built: the config,
  the strategies, the folder, the images and the object masks.
  """
  run = run_settings.parse(config)
  method = run.method
  strategies = check_strategies(strategies, rgn_checkpoint, refine_steps)
  out_dir = pathlib.Path(out_dir)
  settings = _settings(run, seed, rgn_checkpoint, refine_steps)
  check_folder(out_dir, settings)
  loaded = dataset.load_images(examples)
  masks = object_masks.load_masks(examples, [im.original.shape[:2] for im in loaded])
  if rgn_checkpoint:
    checkpointing.check_compatible(checkpointing.resolve_rgn_checkpoint(rgn_checkpoint)[0],
                                   run, checkpointing.rgn_keys(run))
  rows = read_results(out_dir)
  done = {r["key"] for r in rows}
  todo = [(i, s) for i in range(len(examples)) for s in strategies
          if pair_key(i, examples[i], s) not in done]
  current = {pair_key(i, ex, s) for i, ex in enumerate(examples) for s in strategies}
  if not todo:
    return [r for r in rows if r["key"] in current]
  out_dir.mkdir(parents=True, exist_ok=True)
  if not (out_dir / SETTINGS_FILE).is_file():
    output_files.write_text(out_dir / SETTINGS_FILE, json.dumps(settings, indent=2))
  built = build_models(run) if built is None else built
  if rgn_checkpoint:
    trained = checkpointing.load_rgn_params(rgn_checkpoint, built.models, run)
  else:
    trained = step_lib.init_train_state(built.models, method,
                                        jax.random.PRNGKey(run.seed)).params
  compiled = set()
  bar = tqdm.tqdm(total=len({i for i, _ in todo}), desc="evaluate", unit="image",
                  disable=not progress)
  for i in sorted({i for i, _ in todo}):
    features = source_features(built, loaded[i].original)
    for strategy in [s for j, s in todo if j == i]:
      start = time.perf_counter()
      outcome = inference.edit_examples(
          built, trained, [examples[i]], run, seed=seed,
          out_dir=out_dir / "edits" / strategy, progress=False, overwrite=True,
          loaded=[loaded[i]], strategy=strategy, start_index=i,
          refine_steps=refine_steps if strategy == "refine" else 0,
          checkpoint=rgn_checkpoint if strategy in ("rgn", "refine") else None)[0]
      seconds = time.perf_counter() - start
      rows.append({
          "key": pair_key(i, examples[i], strategy), "index": i,
          "image": str(examples[i].image_path), "prompt": examples[i].prompt,
          "source_prompt": outcome.record["source_prompt"],
          "conditioning": outcome.record["conditioning"], "strategy": strategy,
          "seed": seed, "seconds": seconds, "includes_compile": strategy not in compiled,
          "files": outcome.files,
          **measure(built, method.score, outcome, loaded[i].original, masks[i], features)})
      compiled.add(strategy)
      _write_results(out_dir, rows)
    bar.update(1)
  bar.close()
  return [r for r in rows if r["key"] in current]
