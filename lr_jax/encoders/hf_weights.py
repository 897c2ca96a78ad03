"""Hugging Face CLIP / DINO checkpoints -> Flax parameters (strict, torch-free).

`load_clip` / `load_dino` accept a hub repo id or a local directory holding
`config.json` and `model.safetensors` (plus tokenizer files for CLIP); finding
and reading the files is `lr_jax.encoders.hf_files`. The converter maps every Flax
parameter to exactly one HF tensor and fails, listing every problem, on unused
tensors, missing tensors or wrong shapes. Tensors allowed to go unused (IGNORED_*):
  * `{text,vision}_model.embeddings.position_ids`: the integer buffer
    arange(T) that older CLIP hub files store; positions here are implicit.
  * `pooler.dense.{weight,bias}`: HF ViTModel's tanh pooler, present when a
    ViTModel is saved with add_pooling_layer=True; DINO features never use it
    (the facebook/dino-* checkpoints do not contain it).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders.clip import CLIP, CLIPConfig, TextConfig
from lr_jax.encoders.hf_files import (CLIP_TOKENIZER_FILES, WeightsError, download_hint,
                                      has_clip_tokenizer, read_clip_tokenizer,
                                      read_model_files, ModelFiles)
from lr_jax.encoders.vit import ACTIVATIONS, ViT, ViTConfig
from lr_common.random_params import draw_params

HF_CLIP_REPO = "openai/clip-vit-base-patch16"
HF_DINO_REPO = "facebook/dino-vitb16"  # the paper's default; "facebook/dino-vitb8" by config
IGNORED_CLIP = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")
IGNORED_DINO = re.compile(r"^(vit\.)?pooler\.dense\.(weight|bias)$")
TINY_VOCAB_SIZE = 514  # 256 byte symbols, the same with "</w>", then bos, eos.

# HF config defaults (transformers CLIPVisionConfig / CLIPTextConfig / ViTConfig).
_CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                             hidden_act="quick_gelu", layer_norm_eps=1e-5)
_CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                           num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_VIT_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12, image_size=224,
                     patch_size=16, num_channels=3, qkv_bias=True)


@dataclasses.dataclass
class ClipBundle:
  model: CLIP
  params: Any  # the Flax "params" tree: model.apply({"params": params}, ...)
  tokenizer: Any  # transformers.CLIPTokenizerFast
  config: CLIPConfig


@dataclasses.dataclass
class DinoBundle:
  model: ViT
  params: Any
  config: ViTConfig


# ----------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------

def _activation(name: str) -> str:
  if name not in ACTIVATIONS:
    raise WeightsError(f"unsupported hidden_act {name!r} (supported: {', '.join(ACTIVATIONS)})")
  return name


def _eos_token_id(value: Any) -> int:
  """The text config's eos_token_id (a list means its first entry)."""
  if isinstance(value, (list, tuple)) and value:
    value = value[0]
  if isinstance(value, bool) or not isinstance(value, int):
    raise WeightsError(f"text_config.eos_token_id must be an int, got {value!r}")
  return value


def clip_config_from_json(data: dict[str, Any]) -> CLIPConfig:
  """CLIPConfig from an HF CLIP config.json dict (legacy `*_config_dict` keys win, as in HF)."""
  vis = {**_CLIP_VISION_DEFAULTS, **(data.get("vision_config_dict") or data.get("vision_config") or {})}
  txt = data.get("text_config_dict") or data.get("text_config") or {}
  vision = ViTConfig(
      image_size=vis["image_size"], patch_size=vis["patch_size"], hidden_size=vis["hidden_size"],
      num_layers=vis["num_hidden_layers"], num_heads=vis["num_attention_heads"],
      mlp_dim=vis["intermediate_size"], layer_norm_eps=vis["layer_norm_eps"],
      activation=_activation(vis["hidden_act"]), pre_layernorm=True, final_norm="cls",
      patch_bias=False, num_channels=vis["num_channels"])
  return CLIPConfig(vision=vision, text=clip_text_config_from_json(txt),
                    projection_dim=data.get("projection_dim", 512),
                    logit_scale_init=data.get("logit_scale_init_value", 2.6592))


def clip_text_config_from_json(data: dict[str, Any]) -> TextConfig:
  """TextConfig from an HF CLIPTextConfig dict (CLIPModel's `text_config`, or the config.json
  of a CLIPTextModel / CLIPTextModelWithProjection); missing keys take HF's defaults."""
  txt = {**_CLIP_TEXT_DEFAULTS, **data}
  return TextConfig(
      vocab_size=txt["vocab_size"], max_positions=txt["max_position_embeddings"],
      hidden_size=txt["hidden_size"], num_layers=txt["num_hidden_layers"],
      num_heads=txt["num_attention_heads"], mlp_dim=txt["intermediate_size"],
      layer_norm_eps=txt["layer_norm_eps"], activation=_activation(txt["hidden_act"]),
      eos_token_id=_eos_token_id(txt.get("eos_token_id")))


def dino_config_from_json(data: dict[str, Any], pos_interpolation: str = "dino") -> ViTConfig:
  """ViTConfig from an HF ViT (DINO) config.json dict.

  pos_interpolation "dino" (default) resamples the position embeddings for
  other input sizes the way facebookresearch/dino does (scale factors with the
  +0.1 offset), as the method's DINO features are defined; "hf" follows HF
  ViTModel(interpolate_pos_encoding=True) (resize to the target grid).
  """
  cfg = {**_VIT_DEFAULTS, **data}
  if not cfg["qkv_bias"]:
    raise WeightsError("ViT configs with qkv_bias=false are not supported")
  return ViTConfig(
      image_size=cfg["image_size"], patch_size=cfg["patch_size"], hidden_size=cfg["hidden_size"],
      num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
      mlp_dim=cfg["intermediate_size"], layer_norm_eps=cfg["layer_norm_eps"],
      activation=_activation(cfg["hidden_act"]), pre_layernorm=False, final_norm="tokens",
      patch_bias=True, num_channels=cfg["num_channels"], pos_interpolation=pos_interpolation)


def tiny_clip_config() -> CLIPConfig:
  """A tiny random-weight CLIP (32 px, patch 8, width 32) matching `tiny_clip_tokenizer`."""
  vision = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4,
                     mlp_dim=64, layer_norm_eps=1e-5, activation="quick_gelu", pre_layernorm=True,
                     final_norm="cls", patch_bias=False)
  text = TextConfig(vocab_size=TINY_VOCAB_SIZE, max_positions=77, hidden_size=32, num_layers=2,
                    num_heads=4, mlp_dim=64, layer_norm_eps=1e-5, activation="quick_gelu",
                    eos_token_id=TINY_VOCAB_SIZE - 1)
  return CLIPConfig(vision=vision, text=text, projection_dim=16)


def tiny_dino_config() -> ViTConfig:
  """A tiny random-weight DINO-style ViT (32 px native, patch 8, width 32)."""
  return ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4,
                   mlp_dim=64, layer_norm_eps=1e-12, activation="gelu", pre_layernorm=False,
                   final_norm="tokens", patch_bias=True, pos_interpolation="dino")


def random_encoder_configs(kind: str, dino_repo: str = HF_DINO_REPO
                           ) -> tuple[ViTConfig, CLIPConfig]:
  """The (DINO, CLIP) configs of random-weight encoders: "tiny" (the tiny configs), or
  "random", the real sizes as the hub configs define them (CLIP ViT-B/16; DINO ViT-B/16,
  B/8 where `dino_repo` names a /8 model)."""
  if kind == "tiny":
    return tiny_dino_config(), tiny_clip_config()
  if kind != "random":
    raise ValueError(f"kind must be 'tiny' or 'random', got {kind!r}")
  patch = 8 if "vitb8" in dino_repo or "b8" in dino_repo.split("/")[-1] else 16
  clip = clip_config_from_json({"vision_config": {"patch_size": 16},
                                "text_config": {"eos_token_id": 2}, "projection_dim": 512})
  return dino_config_from_json({"patch_size": patch}), clip


# ----------------------------------------------------------------------------
# Tokenizers.
# ----------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
  """The 256 printable stand-ins of byte-level BPE, in byte order."""
  keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
  extra = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer(model_max_length: int = 77):
  """An offline CLIP tokenizer with no merges: one token per byte (514 ids, eos = 513)."""
  from transformers import CLIPTokenizerFast  # pylint: disable=import-outside-toplevel
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  vocab = {token: i for i, token in enumerate(tokens)}
  return CLIPTokenizerFast(vocab=vocab, merges=[], model_max_length=model_max_length)


def load_clip_tokenizer(directory: pathlib.Path, config: Any):
  """CLIPTokenizerFast from `directory`; the tiny tokenizer when it has none and the vocab fits.

  `config` is anything with a `.text` TextConfig (CLIPConfig, clip_text.ClipTextConfig).
  The files are checked (`hf_files.read_clip_tokenizer`).
  """
  if has_clip_tokenizer(directory):
    return read_clip_tokenizer(directory)
  return _tokenizer_without_files(directory, config, download_hint(
      HF_CLIP_REPO, CLIP_TOKENIZER_FILES, local_dir=directory))


def _tokenizer_without_files(directory: pathlib.Path, config: Any, hint: str):
  """The tiny tokenizer for a folder without tokenizer files when the vocab fits, else
  a WeightsError naming the files to fetch (`hint`)."""
  if config.text.vocab_size == TINY_VOCAB_SIZE:
    return tiny_clip_tokenizer(config.text.max_positions)
  raise WeightsError(f"no tokenizer files (tokenizer.json or vocab.json + merges.txt) in "
                     f"{directory}. {hint}")


# ----------------------------------------------------------------------------
# Strict conversion.
# ----------------------------------------------------------------------------

def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "linear":
    return shape[::-1]
  if kind == "conv":  # Flax (kh, kw, in, out) <- torch (out, in, kh, kw)
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "conv_transpose":  # Flax (kh, kw, in, out) <- torch ConvTranspose (in, out, kh, kw)
    return (shape[2], shape[3], shape[0], shape[1])
  if kind == "batch1":  # torch keeps a leading batch axis of 1
    return (1, 1) + shape if len(shape) == 1 else (1,) + shape
  return shape


def _to_flax(kind: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if kind == "linear":
    return array.T
  if kind == "conv":
    return array.transpose(2, 3, 1, 0)
  if kind == "conv_transpose":
    return array.transpose(2, 3, 0, 1)
  return array.reshape(shape)


def _leaf(path: tuple[str, ...], prefix: str) -> tuple[str, str]:
  """Dense / LayerNorm / Embed leaf -> (hf suffix, kind)."""
  name = path[-1]
  if name == "kernel":
    return f"{prefix}.weight", "linear"
  if name == "scale":
    return f"{prefix}.weight", "same"
  if name == "embedding":
    return f"{prefix}.weight", "same"
  return f"{prefix}.{name}", "same"  # bias


_VIT_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "fc1": "intermediate.dense",
              "fc2": "output.dense", "query": "attention.attention.query",
              "key": "attention.attention.key", "value": "attention.attention.value",
              "out": "attention.output.dense"}
_CLIP_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
               "query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
               "out": "self_attn.out_proj"}


def _block(path: tuple[str, ...], hf_prefix: str, table: dict[str, str]) -> tuple[str, str] | None:
  index = int(path[0].split("_")[1])
  module = path[-2]
  if module not in table:
    return None
  return _leaf(path, f"{hf_prefix}.{index}.{table[module]}")


def _dino_name(path: tuple[str, ...], prefix: str) -> tuple[str, str] | None:
  head = path[0]
  if head == "cls_token":
    return f"{prefix}embeddings.cls_token", "batch1"
  if head == "pos_embed":
    return f"{prefix}embeddings.position_embeddings", "batch1"
  if head == "patch_embed":
    kind = "conv" if path[-1] == "kernel" else "same"
    return f"{prefix}embeddings.patch_embeddings.projection.{'weight' if kind == 'conv' else 'bias'}", kind
  if head == "final_norm":
    return _leaf(path, f"{prefix}layernorm")
  if head.startswith("block_"):
    return _block(path, f"{prefix}encoder.layer", _VIT_BLOCK)
  return None


def clip_hf_name(path: tuple[str, ...]) -> tuple[str, str] | None:
  """Flax CLIP param path -> (HF CLIPModel tensor name, kind); also the key layout of
  CLIPTextModelWithProjection (`text_model.*`, `text_projection`)."""
  head, rest = path[0], path[1:]
  if head == "logit_scale":
    return "logit_scale", "same"
  if head in ("visual_projection", "text_projection"):
    return f"{head}.weight", "linear"
  if head == "vision":
    emb = "vision_model.embeddings"
    simple = {"cls_token": (f"{emb}.class_embedding", "same"),
              "pos_embed": (f"{emb}.position_embedding.weight", "same"),
              "patch_embed": (f"{emb}.patch_embedding.weight", "conv")}
    if rest[0] in simple:
      return simple[rest[0]]
    if rest[0] in ("pre_norm", "final_norm"):
      hf = "pre_layrnorm" if rest[0] == "pre_norm" else "post_layernorm"
      return _leaf(rest, f"vision_model.{hf}")
    if rest[0].startswith("block_"):
      return _block(rest, "vision_model.encoder.layers", _CLIP_BLOCK)
  if head == "text":
    emb = "text_model.embeddings"
    if rest[0] == "token_embed":
      return f"{emb}.token_embedding.weight", "same"
    if rest[0] == "pos_embed":
      return f"{emb}.position_embedding.weight", "same"
    if rest[0] == "final_norm":
      return _leaf(rest, "text_model.final_layer_norm")
    if rest[0].startswith("block_"):
      return _block(rest, "text_model.encoder.layers", _CLIP_BLOCK)
  return None


def convert_state(hf_tensors: dict[str, np.ndarray], abstract_params: Any,
                  name_fn: Callable[[tuple[str, ...]], tuple[str, str] | None],
                  ignored: re.Pattern[str], source: str = "checkpoint") -> Any:
  """Strictly maps HF tensors onto a Flax param tree of the shapes in `abstract_params`."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  problems, used, leaves = [], set(), []
  for key_path, leaf in flat:
    path = tuple(str(getattr(k, "key", k)) for k in key_path)
    shape = tuple(leaf.shape)
    mapped = name_fn(path)
    if mapped is None:
      problems.append(f"no HF name known for Flax param {'/'.join(path)}")
      leaves.append(None)
      continue
    hf_name, kind = mapped
    if hf_name not in hf_tensors:
      problems.append(f"missing tensor {hf_name} (for Flax {'/'.join(path)}, shape {shape})")
      leaves.append(None)
      continue
    used.add(hf_name)
    array = hf_tensors[hf_name]
    if tuple(array.shape) != _hf_shape(kind, shape):
      problems.append(f"wrong shape for {hf_name}: {tuple(array.shape)}, expected "
                      f"{_hf_shape(kind, shape)} (Flax {'/'.join(path)} {shape})")
      leaves.append(None)
      continue
    leaves.append(jnp.asarray(_to_flax(kind, np.asarray(array, np.float32), shape)))
  unused = sorted(k for k in hf_tensors if k not in used and not ignored.match(k))
  problems += [f"unused tensor {k} {tuple(hf_tensors[k].shape)}" for k in unused]
  if problems:
    raise WeightsError(f"{source} does not match the Flax model ({len(problems)} problems):\n  "
                       + "\n  ".join(problems))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_params), leaves)


def hf_shapes(abstract_params: Any,
              name_fn: Callable[[tuple[str, ...]], tuple[str, str] | None]) -> dict[str, tuple[int, ...]]:
  """{HF tensor name: HF shape} that `convert_state` expects for a Flax param tree (or its
  `jax.eval_shape`); a param without an HF name raises WeightsError."""
  shapes, unnamed = {}, []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    path = tuple(str(getattr(k, "key", k)) for k in key_path)
    mapped = name_fn(path)
    if mapped is None:
      unnamed.append("/".join(path))
      continue
    shapes[mapped[0]] = _hf_shape(mapped[1], tuple(leaf.shape))
  if unnamed:
    raise WeightsError(f"no HF name known for Flax params {unnamed}")
  return shapes


def _clip_dummy_inputs(config: CLIPConfig):
  size = config.vision.image_size
  pixels = jnp.zeros((1, size, size, config.vision.num_channels), jnp.float32)
  ids = jnp.zeros((1, min(8, config.text.max_positions)), jnp.int32)
  return pixels, ids


def _abstract_params(model: Any, *inputs: Any) -> Any:
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))["params"]


def convert_clip(hf_tensors: dict[str, np.ndarray], config: CLIPConfig, source: str = "checkpoint") -> Any:
  """HF CLIPModel tensors -> Flax params of `CLIP(config)`."""
  abstract = _abstract_params(CLIP(config), *_clip_dummy_inputs(config))
  return convert_state(hf_tensors, abstract, clip_hf_name, IGNORED_CLIP, source)


def convert_dino(hf_tensors: dict[str, np.ndarray], config: ViTConfig, source: str = "checkpoint") -> Any:
  """HF ViTModel tensors (optionally prefixed `vit.`) -> Flax params of `ViT(config)`."""
  size = config.image_size
  abstract = _abstract_params(ViT(config), jnp.zeros((1, size, size, config.num_channels)))
  prefix = "vit." if any(k.startswith("vit.embeddings.") for k in hf_tensors) else ""
  return convert_state(hf_tensors, abstract, lambda p: _dino_name(p, prefix), IGNORED_DINO, source)


# ----------------------------------------------------------------------------
# Public loaders.
# ----------------------------------------------------------------------------

def clip_from_files(files: ModelFiles, dtype: Any = jnp.float32) -> ClipBundle:
  """CLIP model, params, tokenizer and config from a model folder read by
  `hf_files.read_model_files(..., with_tokenizer=True)`."""
  config = clip_config_from_json(files.config)
  tokenizer = files.tokenizer or _tokenizer_without_files(files.directory, config,
                                                          files.tokenizer_hint)
  params = convert_clip(files.tensors, config, files.source)
  return ClipBundle(CLIP(config, dtype), params, tokenizer, config)


def dino_from_files(files: ModelFiles, dtype: Any = jnp.float32,
                    pos_interpolation: str = "dino") -> DinoBundle:
  """DINO ViT model, params and config from a model folder read by
  `hf_files.read_model_files`.

  Position embeddings are interpolated like facebookresearch/dino by default
  (see `dino_config_from_json`); 256x256 inputs to a B/16 give a 16x16 grid.
  """
  config = dino_config_from_json(files.config, pos_interpolation)
  params = convert_dino(files.tensors, config, files.source)
  return DinoBundle(ViT(config, dtype), params, config)


def load_clip(repo_or_dir: str | os.PathLike = HF_CLIP_REPO, dtype: Any = jnp.float32,
              revision: str | None = None) -> ClipBundle:
  """CLIP model, params, tokenizer and config from a hub repo id or a local directory."""
  return clip_from_files(read_model_files(repo_or_dir, revision=revision,
                                          default_repo=HF_CLIP_REPO, with_tokenizer=True), dtype)


def load_dino(repo_or_dir: str | os.PathLike = HF_DINO_REPO, dtype: Any = jnp.float32,
              pos_interpolation: str = "dino", revision: str | None = None) -> DinoBundle:
  """DINO ViT model, params and config from a hub repo id or a local directory
  (`dino_from_files`)."""
  return dino_from_files(read_model_files(repo_or_dir, revision=revision,
                                          default_repo=HF_DINO_REPO), dtype, pos_interpolation)


HF_INIT_STD = 0.02   # transformers' initializer_range for ViT and CLIP


def random_params(abstract_params: Any, rng: jax.Array, std: float = HF_INIT_STD) -> Any:
  """Random params for the shapes in `abstract_params` (HF-style init: weights N(0, std),
  biases 0, LayerNorm scales 1), drawn with numpy: the same key gives the same params and
  nothing is compiled (eager `model.init` takes tens of seconds on a small CPU)."""
  return draw_params(abstract_params, rng, lambda _: std)


def _hf_std(shape: tuple[int, ...]) -> float:
  del shape
  return HF_INIT_STD


def init_encoders(dino_config: ViTConfig, clip_config: CLIPConfig, rng: jax.Array,
                  dtype: Any = jnp.float32) -> tuple[DinoBundle, ClipBundle]:
  """A randomly initialised DINO-style ViT and CLIP (keys: `rng` folded with 0 and 1): the
  models of `models="tiny"` configs, or the real sizes for benchmarks. CLIP's tokenizer
  is the tiny one when its vocab fits, else None."""
  dino, clip = ViT(dino_config, dtype), CLIP(clip_config, dtype)
  size = dino_config.image_size
  dino_shapes = _abstract_params(dino, jnp.zeros((1, size, size, dino_config.num_channels)))
  clip_shapes = _abstract_params(clip, *_clip_dummy_inputs(clip_config))
  tokenizer = (tiny_clip_tokenizer(clip_config.text.max_positions)
               if clip_config.text.vocab_size == TINY_VOCAB_SIZE else None)
  dino_params = draw_params(dino_shapes, jax.random.fold_in(rng, 0), _hf_std)
  clip_params = draw_params(clip_shapes, jax.random.fold_in(rng, 1), _hf_std)
  clip_params["logit_scale"] = jnp.asarray(clip_config.logit_scale_init, jnp.float32)
  return (DinoBundle(dino, dino_params, dino_config),
          ClipBundle(clip, clip_params, tokenizer, clip_config))
