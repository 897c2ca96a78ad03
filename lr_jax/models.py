"""The frozen models of the method (DINO, CLIP, MaskGIT) and the trainable RGN, built from a config.

`build_models(config)` returns a `Models` (modules and settings, static under jit)
and the frozen parameters `{"dino", "clip", "vqgan", "transformer"}`. With
`config.models == "tiny"` every model is a small random one built offline.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax import dino as dino_lib
from lr_jax import hf_weights
from lr_jax import imagenet
from lr_jax import losses
from lr_jax.clip import CLIP
from lr_jax.rgn import RegionGenerationNetwork
from lr_jax.vit import ViT
from maskgit import checkpoints as maskgit_checkpoints
from maskgit import configs as maskgit_configs
from maskgit import editing
from maskgit.editing import EditConfig

_TEXT_BATCH = 50   # prompts per text-encoder call (fixed, so it compiles once)
_IMAGE_BATCH = 8   # images per zero-shot image-encoder call


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
  """Modules and settings; parameters live in a separate `frozen` pytree."""
  dino: ViT
  clip: CLIP
  tokenizer: Any
  maskgit: maskgit_configs.MaskGITConfig
  edit: EditConfig
  rgn: RegionGenerationNetwork

  def __post_init__(self):
    object.__setattr__(self, "_encode_text", jax.jit(self._text_embeds))
    object.__setattr__(self, "_encode_image", jax.jit(lambda p, x: self.clip_image(p, x)[0]))
    object.__setattr__(self, "_class_cache", {})
    object.__setattr__(self, "jit_cache", {})

  @property
  def dino_dim(self) -> int:
    return self.dino.config.hidden_size

  @property
  def clip_image_size(self) -> int:
    return self.clip.config.vision.image_size

  def num_classes(self) -> int:
    return self.maskgit.transformer.num_class

  # -- pure functions, used inside the jitted steps --------------------------
  def dino_features(self, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(patch features (B,g,g,D), [CLS] attention (B,g,g)) of images in [0, 1]."""
    return dino_lib.dino_features(self.dino, params, images)

  def clip_image(self, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(embeddings (B,P), last-layer tokens (B,1+N,D)) of images (B,H,W,3) in [0, 1]."""
    pixels = losses.clip_preprocess(images, size=self.clip_image_size, check_range=False)
    return self.clip.apply({"params": params}, pixels, method=CLIP.encode_image)

  def _text_embeds(self, params, input_ids, attention_mask):
    return self.clip.apply({"params": params}, input_ids, attention_mask,
                           method=CLIP.encode_text)

  # -- host helpers ------------------------------------------------------------
  def encode_texts(self, frozen: Any, prompts: Sequence[str]) -> np.ndarray:
    """CLIP text embeddings (N, P) of a list of prompts."""
    if self.tokenizer is None:
      raise ValueError("This CLIP has no tokenizer; load it with its tokenizer files.")
    out = []
    length = self.clip.config.text.max_positions
    for i in range(0, len(prompts), _TEXT_BATCH):
      chunk = list(prompts[i:i + _TEXT_BATCH])
      padded = chunk + [""] * (_TEXT_BATCH - len(chunk))
      tok = self.tokenizer(padded, padding="max_length", max_length=length, truncation=True,
                           return_tensors="np")
      emb = self._encode_text(frozen["clip"], jnp.asarray(tok["input_ids"], jnp.int32),
                              jnp.asarray(tok["attention_mask"], jnp.int32))
      out.append(np.asarray(emb)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.clip.config.projection_dim))

  def encode_images(self, frozen: Any, images: np.ndarray) -> np.ndarray:
    """CLIP image embeddings (N, P) of images (N, H, W, 3) in [0, 1]."""
    out = []
    for i in range(0, len(images), _IMAGE_BATCH):   # fixed batch: compiles once
      chunk = np.asarray(images[i:i + _IMAGE_BATCH], np.float32)
      padded = np.concatenate(
          [chunk, np.zeros((_IMAGE_BATCH - len(chunk),) + chunk.shape[1:], np.float32)])
      out.append(np.asarray(self._encode_image(frozen["clip"], padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.clip.config.projection_dim))

  def text_encoder(self, frozen: Any) -> Callable[[Sequence[str]], np.ndarray]:
    """The text encoder as a callable, one object per params (so its caches hit)."""
    key = id(frozen["clip"])
    if key not in self._class_cache:
      # Holds the CLIP weights only, not the whole frozen tree.
      self._class_cache[key] = functools.partial(self.encode_texts, {"clip": frozen["clip"]})
    return self._class_cache[key]

  def class_name_embeddings(self, frozen: Any) -> np.ndarray:
    """Unit CLIP embeddings (1000, P) of the ImageNet class names."""
    return np.asarray(imagenet.class_text_embeddings(self.text_encoder(frozen)))

  def model_label(self, class_id: int) -> int:
    """The MaskGIT class of an ImageNet class id. Tiny MaskGITs know fewer classes:
    they get `class_id % num_class` (their edits are noise anyway)."""
    n = self.num_classes()
    return class_id if n >= 1000 else class_id % n


def _edit_config(config) -> EditConfig:
  e = config.edit
  return EditConfig(start_iter=e.start_iter, num_iter=e.num_iter,
                    choice_temperature=e.choice_temperature, grow_tokens=e.grow_tokens,
                    dtype=e.dtype)


def _rgn(config) -> RegionGenerationNetwork:
  return RegionGenerationNetwork(conv_features=tuple(config.rgn.conv_features),
                                 dense_features=config.rgn.dense_features)


def build_models(config) -> tuple[Models, dict[str, Any]]:
  """Loads (or, for config.models == 'tiny', randomly builds) every frozen model."""
  mg = maskgit_configs.get_config(config.maskgit.name)
  if config.models == "tiny":
    rng = jax.random.PRNGKey(config.seed + 1000)
    dino = hf_weights.init_dino(hf_weights.tiny_dino_config(), jax.random.fold_in(rng, 0))
    clip = hf_weights.init_clip(hf_weights.tiny_clip_config(), jax.random.fold_in(rng, 1))
    vqgan, transformer = maskgit_checkpoints.init_params(mg, jax.random.fold_in(rng, 2))
  elif config.models == "official":
    dino, clip, vqgan, transformer = _load_official(config, mg)
  else:
    raise ValueError(f"config.models must be 'official' or 'tiny', got {config.models!r}")
  return _assemble(config, mg, dino, clip, vqgan, transformer)


def build_random_models(config) -> tuple[Models, dict[str, Any]]:
  """The config's models at their real sizes with random weights (for benchmarks).

  CLIP ViT-B/16 and DINO ViT-B/16 (B/8 if config.dino.repo names a /8 model) as the
  hub configs define them; no tokenizer, so texts must come as embeddings.
  """
  if config.models == "tiny":
    return build_models(config)
  mg = maskgit_configs.get_config(config.maskgit.name)
  rng = jax.random.PRNGKey(config.seed + 1000)
  patch = 8 if "vitb8" in config.dino.repo or "b8" in config.dino.repo.split("/")[-1] else 16
  dino = hf_weights.init_dino(hf_weights.dino_config_from_json({"patch_size": patch}),
                              jax.random.fold_in(rng, 0))
  clip_cfg = hf_weights.clip_config_from_json(
      {"vision_config": {"patch_size": 16}, "text_config": {"eos_token_id": 2},
       "projection_dim": 512})
  clip = hf_weights.init_clip(clip_cfg, jax.random.fold_in(rng, 1))
  vqgan, transformer = maskgit_checkpoints.init_params(mg, jax.random.fold_in(rng, 2))
  return _assemble(config, mg, dino, clip, vqgan, transformer)


def _load_official(config, mg):
  """Loads the three pretrained models, reporting every missing one in one error."""
  logging.info("Loading DINO from %s, CLIP from %s, MaskGIT %s", config.dino.repo,
               config.clip.repo, mg.name)
  loaded, problems = {}, []
  loaders = {
      "dino": lambda: hf_weights.load_dino(config.dino.repo),
      "clip": lambda: hf_weights.load_clip(config.clip.repo),
      "maskgit": lambda: maskgit_checkpoints.load_maskgit(
          mg, config.maskgit.tokenizer or None, config.maskgit.transformer or None,
          config.maskgit.cache_dir or None,
          hint="--config.maskgit.cache_dir=DIR, or --config.maskgit.tokenizer=PATH and "
               "--config.maskgit.transformer=PATH"),
  }
  for name, load in loaders.items():
    try:
      loaded[name] = load()
    except (hf_weights.WeightsError, maskgit_checkpoints.CheckpointError) as e:
      flag = {"dino": "--config.dino.repo=DIR", "clip": "--config.clip.repo=DIR"}.get(name)
      problems.append(f"[{name}] {e}" + (f"\nThen run with {flag}." if flag else ""))
  if problems:
    raise hf_weights.WeightsError(
        "Pretrained weights are missing or unusable:\n\n" + "\n\n".join(problems))
  return loaded["dino"], loaded["clip"], *loaded["maskgit"]


def _assemble(config, mg, dino, clip, vqgan, transformer):
  models = Models(dino=dino.model, clip=clip.model, tokenizer=clip.tokenizer, maskgit=mg,
                  edit=_edit_config(config), rgn=_rgn(config))
  if models.edit.dtype != "float32":
    # Cast once here, not inside every jitted edit (the cast there is then a no-op).
    dtype = editing.DTYPES[models.edit.dtype]
    transformer = editing.cast_params(transformer, dtype)
  frozen = {"dino": dino.params, "clip": clip.params, "vqgan": vqgan,
            "transformer": transformer}
  return models, frozen
