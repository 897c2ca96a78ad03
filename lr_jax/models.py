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
from typing import Any, NamedTuple

import jax

from lr_common import seeds
from lr_common.errors import UserError
from lr_jax import editors
from lr_jax.encoders import hf_weights
from lr_jax.method import settings as settings_lib
from lr_jax.encoders.clip import CLIP
from lr_jax.editors.base import Editor
from lr_jax.method.rgn import RegionGenerationNetwork
from lr_jax.encoders.text_encoder import TextEncoder
from lr_jax.encoders.vit import ViT

MODEL_KINDS = ("official", "tiny")


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
  """Modules and static facts; parameters live in a separate `frozen` pytree."""
  dino: ViT
  clip: CLIP
  editor: Editor
  rgn: RegionGenerationNetwork

  @property
  def dino_dim(self) -> int:
    return self.dino.config.hidden_size

  @property
  def clip_image_size(self) -> int:
    return self.clip.config.vision.image_size


class Built(NamedTuple):
  models: Models
  frozen: dict[str, Any]             # {"dino", "clip", "editor"} parameters
  text_encoder: TextEncoder | None   # None when CLIP has no tokenizer (random models)


def check_config(config) -> settings_lib.Method:
  """Checks every setting before anything is loaded; returns the method settings."""
  if config.models not in MODEL_KINDS:
    raise settings_lib.SettingsError(
        f"config models must be one of {MODEL_KINDS}, got {config.models!r}")
  if "seed" in config and (isinstance(config.seed, bool) or not isinstance(config.seed, int)):
    raise settings_lib.SettingsError(f"config seed must be an integer, got {config.seed!r}")
  settings_lib.check_integers(config)   # any seed; every other integer within int32
  module = editors.of(config)
  module.check_config(config)
  settings_lib.check(config)
  method = settings_lib.method(config)
  method.region.check_grid(module.make(config).grid)
  return method


def build_models(config) -> Built:
  """Loads (or, for config.models == 'tiny', randomly builds) every frozen model."""
  method = check_config(config)
  rng = seeds.prng_key(config.seed + 1000)
  editor_module = editors.of(config)
  if config.models == "tiny":
    dino = hf_weights.init_dino(hf_weights.tiny_dino_config(), jax.random.fold_in(rng, 0))
    clip = hf_weights.init_clip(hf_weights.tiny_clip_config(), jax.random.fold_in(rng, 1))
    editor, editor_params = editor_module.build(config, "tiny", jax.random.fold_in(rng, 2))
  else:
    dino, clip, (editor, editor_params) = _load_official(config, editor_module)
  return _assemble(method, dino, clip, editor, editor_params)


def build_random_models(config) -> Built:
  """The config's models at their real sizes with random weights (for benchmarks).

  CLIP ViT-B/16 and DINO ViT-B/16 (B/8 if config.dino.repo names a /8 model) as the
  hub configs define them; no tokenizer, so texts must come as embeddings.
  """
  if config.models == "tiny":
    return build_models(config)
  method = check_config(config)
  rng = seeds.prng_key(config.seed + 1000)
  patch = 8 if "vitb8" in config.dino.repo or "b8" in config.dino.repo.split("/")[-1] else 16
  dino = hf_weights.init_dino(hf_weights.dino_config_from_json({"patch_size": patch}),
                              jax.random.fold_in(rng, 0))
  clip_cfg = hf_weights.clip_config_from_json(
      {"vision_config": {"patch_size": 16}, "text_config": {"eos_token_id": 2},
       "projection_dim": 512})
  clip = hf_weights.init_clip(clip_cfg, jax.random.fold_in(rng, 1))
  editor, editor_params = editors.of(config).build(config, "random", jax.random.fold_in(rng, 2))
  return _assemble(method, dino, clip, editor, editor_params)


def _load_official(config, editor_module):
  """Loads the pretrained models, reporting every missing one in one error."""
  logging.info("Loading DINO from %s, CLIP from %s, editor %s", config.dino.repo,
               config.clip.repo, config.editor.name)
  loaded, problems = {}, []
  loaders = {
      "dino": (lambda: hf_weights.load_dino(config.dino.repo), "--config.dino.repo=DIR"),
      "clip": (lambda: hf_weights.load_clip(config.clip.repo), "--config.clip.repo=DIR"),
      config.editor.name: (lambda: editor_module.build(config, "official", None), None),
  }
  for name, (load, flag) in loaders.items():
    try:
      loaded[name] = load()
    except UserError as e:
      problems.append(f"[{name}] {e}" + (f"\nThen run with {flag}." if flag else ""))
  if problems:
    raise hf_weights.WeightsError(
        "Pretrained weights are missing or unusable:\n\n" + "\n\n".join(problems))
  return loaded["dino"], loaded["clip"], loaded[config.editor.name]


def _assemble(method: settings_lib.Method, dino, clip, editor: Editor, editor_params) -> Built:
  models = Models(dino=dino.model, clip=clip.model, editor=editor, rgn=method.rgn.module())
  frozen = {"dino": dino.params, "clip": clip.params, "editor": editor_params}
  text = TextEncoder(clip.model, clip.params, clip.tokenizer) if clip.tokenizer else None
  return Built(models, frozen, text)
