"""The models of the method, built from a config: DINO, CLIP, the editor, the RGN.

`build_models(config)` returns a `Models` (modules and static settings: a static
argument of the jitted steps, nothing else), the frozen parameters
`{"dino", "clip", "editor"}` and, for configs with a tokenizer, a host-side
`TextEncoder`. With `config.models == "tiny"` every model is a small random one
built offline; `build_random_models` gives the real sizes with random values.
"""
from __future__ import annotations

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
from lr_jax.method import settings as settings_lib
from lr_jax.method.bundle import Models  # pylint: disable=unused-import (re-exported)
from lr_jax.editors.base import Editor
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
  """Loads (or, for models "tiny", randomly builds) every frozen model of a run."""
  if run.models.kind == "official":
    dino, clip, (editor, editor_params) = _load_official(run)
  else:
    rng = seeds.prng_key(run.seed + 1000)
    dino, clip = hf_weights.init_encoders(hf_weights.tiny_dino_config(),
                                          hf_weights.tiny_clip_config(), rng)
    editor, editor_params = run.editor_module.build(run.config, "tiny",
                                                    jax.random.fold_in(rng, 2))
  models = Models(dino=dino.model, clip=clip.model, editor=editor, rgn=run.method.rgn.module())
  return Built(models, {"dino": dino.params, "clip": clip.params, "editor": editor_params},
               TextEncoder(clip.model, clip.params, clip.tokenizer) if clip.tokenizer else None)


def build_random_models(config: ml_collections.ConfigDict | run_settings.Run) -> Built:
  """The config's models at their real sizes with random weights (for benchmarks).

  CLIP ViT-B/16 and DINO ViT-B/16 (B/8 if the DINO repo names a /8 model) as the hub
  configs define them; no tokenizer, so texts must come as embeddings.
  """
  run = run_settings.parse(config)
  if run.models.kind == "tiny":
    return build(run)
  rng = seeds.prng_key(run.seed + 1000)
  repo = run.models.dino_repo
  patch = 8 if "vitb8" in repo or "b8" in repo.split("/")[-1] else 16
  clip_cfg = hf_weights.clip_config_from_json(
      {"vision_config": {"patch_size": 16}, "text_config": {"eos_token_id": 2},
       "projection_dim": 512})
  dino, clip = hf_weights.init_encoders(
      hf_weights.dino_config_from_json({"patch_size": patch}), clip_cfg, rng)
  editor, editor_params = run.editor_module.build(run.config, "random",
                                                  jax.random.fold_in(rng, 2))
  return _assemble(run.method, dino, clip, editor, editor_params)


def _load_official(run: run_settings.Run):
  """Loads the pretrained models, reporting every missing or unusable one in one error."""
  name = run.editor.name
  logging.info("Loading DINO from %s, CLIP from %s, editor %s", run.models.dino_repo,
               run.models.clip_repo, name)
  loaded, problems = {}, {}
  dino_files = clip_files = None
  try:   # first every file (what a missing download breaks), then every conversion
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
  return loaded["dino"], loaded["clip"], loaded[name]


def _first_sentence(error: Exception) -> str:
  """The reason of a loader's error, without the download hints `fetch_help` replaces."""
  text = str(error)
  for marker in (" On a machine with network access", " Without network access",
                 "\nIf a repo offers only"):
    text = text.split(marker)[0]
  text = " ".join(text.split())
  return text if len(text) <= 400 else text[:397] + "..."


def _assemble(method: settings_lib.Method, dino, clip, editor: Editor, editor_params) -> Built:
  models = Models(dino=dino.model, clip=clip.model, editor=editor, rgn=method.rgn.module())
  frozen = {"dino": dino.params, "clip": clip.params, "editor": editor_params}
  text = TextEncoder(clip.model, clip.params, clip.tokenizer) if clip.tokenizer else None
  return Built(models, frozen, text)
