"""The models of the method, built from a config: DINO, CLIP, the editor, the RGN.

`build_models(config)` returns a `Models` (modules and static settings: a static
argument of the jitted steps, nothing else), the frozen parameters
`{"dino", "clip", "editor"}` and, for configs with a tokenizer, a host-side
`TextEncoder`. With `config.models == "tiny"` every model is a small random one
built offline; `build_random_models` gives the real sizes with random values.
"""
from __future__ import annotations

import dataclasses
import logging
import textwrap
from typing import Any, NamedTuple

import jax
import ml_collections

from lr_common import seeds
from lr_common.errors import UserError
from lr_jax import run_settings
from lr_jax.encoders import hf_files
from lr_jax.encoders import hf_weights
from lr_jax.method.bundle import Models  # pylint: disable=unused-import (re-exported)
from lr_jax.encoders.text_encoder import TextEncoder

MODEL_KINDS = run_settings.MODEL_KINDS


class Built(NamedTuple):
  models: Models
  frozen: dict[str, Any]             # {"dino", "clip", "editor"} parameters
  text_encoder: TextEncoder | None   # None when CLIP has no tokenizer (random models)


def build_models(config: ml_collections.ConfigDict | run_settings.Run) -> Built:
  """`build` for a ConfigDict (parsed first) or a parsed `Run`: notebooks and tests."""
  return build(run_settings.parse(config))


def build(run: run_settings.Run) -> Built:
  """Loads every frozen model of a run, or makes it with random weights: models "tiny",
  or "random" (`build_random_models`: the real sizes). A pretrained model that is
  missing or unusable is reported with every other in one WeightsError."""
  kind, name = run.models.kind, run.editor.name
  if kind == "official":
    loaded, problems = _load_official(run)
  else:
    dino_config, clip_config = hf_weights.random_encoder_configs(kind, run.models.dino_repo)
    rng = seeds.prng_key(run.seed + 1000)
    dino, clip = hf_weights.init_encoders(dino_config, clip_config, rng)
    loaded = {"dino": dino, "clip": clip,
              name: run.editor_module.build(run.config, kind, jax.random.fold_in(rng, 2))}
    problems = {}
  if problems:
    from lr_jax import weights  # pylint: disable=import-outside-toplevel
    details = "\n".join(textwrap.fill(f"[{k}] {_first_sentence(e)}", 96, initial_indent="  ",
                                       subsequent_indent="    ", break_on_hyphens=False,
                                       break_long_words=False) for k, e in problems.items())
    raise hf_weights.WeightsError(
        f"Pretrained weights are missing or unusable ({', '.join(problems)}).\n"
        + weights.fetch_help(run, keys=tuple(problems))
        + "\nOr pass a folder per model: --config.dino.repo=DIR, --config.clip.repo=DIR,\n"
        + "--config.editor.cache_dir=DIR (MaskGIT) or --config.editor.repo=DIR (aMUSEd,\n"
        + "Stable Diffusion).\n"
        + f"What failed:\n{details}")
  dino, clip, (editor, editor_params) = loaded["dino"], loaded["clip"], loaded[name]
  text = TextEncoder(clip.model, clip.params, clip.tokenizer) if clip.tokenizer else None
  return Built(Models(dino=dino.model, clip=clip.model, editor=editor),
               {"dino": dino.params, "clip": clip.params, "editor": editor_params}, text)


def build_random_models(config: ml_collections.ConfigDict | run_settings.Run) -> Built:
  """The config's models at their real sizes with random weights (for benchmarks):
  `hf_weights.random_encoder_configs` and the editor's "random" build; no tokenizer, so
  texts must come as embeddings. A tiny config gives its tiny models."""
  run = run_settings.parse(config)
  if run.models.kind == "tiny":
    return build(run)
  return build(dataclasses.replace(run, models=dataclasses.replace(run.models, kind="random")))


def _load_official(run: run_settings.Run) -> tuple[dict[str, Any], dict[str, Exception]]:
  """The pretrained models by name ("dino", "clip", the editor's), and what failed: every
  file is read first (what a missing download breaks), then each model converted."""
  name = run.editor.name
  logging.info("Loading DINO from %s, CLIP from %s, editor %s", run.models.dino_repo,
               run.models.clip_repo, name)
  loaded, problems = {}, {}
  dino_files = clip_files = None
  try:
    dino_files = hf_files.read_model_files(run.models.dino_repo,
                                           default_repo=hf_weights.HF_DINO_REPO)
  except UserError as e:
    problems["dino"] = e
  try:
    clip_files = hf_files.read_model_files(run.models.clip_repo, with_tokenizer=True,
                                           default_repo=hf_weights.HF_CLIP_REPO)
  except UserError as e:
    problems["clip"] = e
  try:
    loaded[name] = run.editor_module.build(run.config, "official", None)
  except UserError as e:
    problems[name] = e
  try:
    if dino_files is not None:
      loaded["dino"] = hf_weights.dino_from_files(dino_files)
  except UserError as e:
    problems["dino"] = e
  try:
    if clip_files is not None:
      loaded["clip"] = hf_weights.clip_from_files(clip_files)
  except UserError as e:
    problems["clip"] = e
  return loaded, problems


def _first_sentence(error: Exception) -> str:
  """The reason of a loader's error, without the download hints `fetch_help` replaces."""
  text = str(error)
  for marker in (" On a machine with network access", " Without network access",
                 "\nIf a repo offers only"):
    text = text.split(marker)[0]
  text = " ".join(text.split())
  return text if len(text) <= 400 else text[:397] + "..."
