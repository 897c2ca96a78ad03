"""The aMUSEd hub layout and loading the VQ model strictly.

`amused/amused-256` and `amused/amused-512` are diffusers pipeline repos with one folder per
component: `vqvae/` and `transformer/` (diffusers: `config.json`,
`diffusion_pytorch_model[.fp16].safetensors`), `text_encoder/` (transformers: `config.json`,
`model[.fp16].safetensors`) and `tokenizer/` (CLIP BPE: `vocab.json`, `merges.txt`, ...).
Finding and reading them is `lr_jax.encoders.diffusers_layout` (`LAYOUT`): `resolve_amused`
accepts a repo id or a local directory of that layout, and a failure names every missing
file and the `hf download` command.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from lr_jax.encoders.diffusers_layout import (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS, VARIANTS,
                                              PipelineLayout)
from lr_jax.encoders.hf_files import CLIP_TOKENIZER_FILES as TOKENIZER_FILES
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.encoders.hf_weights import convert_state
from lr_jax.generators.amused.vq import VQConfig, VQConfigError, abstract_params

AMUSED_256 = "amused/amused-256"
AMUSED_512 = "amused/amused-512"
SUBFOLDERS = ("vqvae", "transformer", "text_encoder", "tokenizer")
WEIGHTS_STEMS = {"vqvae": DIFFUSERS_WEIGHTS, "transformer": DIFFUSERS_WEIGHTS,
                 "text_encoder": TRANSFORMERS_WEIGHTS}
LAYOUT = PipelineLayout(name="aMUSEd", repos=(AMUSED_256, AMUSED_512), subfolders=SUBFOLDERS,
                        weights_stems=WEIGHTS_STEMS)
NOTHING_IGNORED = re.compile(r"(?!)")  # the VQ state dict has no buffers to skip

__all__ = ["AMUSED_256", "AMUSED_512", "LAYOUT", "SUBFOLDERS", "TOKENIZER_FILES", "VARIANTS",
           "WEIGHTS_STEMS", "convert_vq", "download_command", "load_tokenizer", "load_vq",
           "read_subfolder", "resolve_amused", "subfolder_files", "vq_config_from_json",
           "vq_param_name", "weights_filename"]

weights_filename = LAYOUT.weights_filename
subfolder_files = LAYOUT.subfolder_files


def download_command(repo_id: str, variant: str | None = None,
                     subfolders: Sequence[str] = SUBFOLDERS) -> str:
  """The `hf download` command that fetches `subfolders` of `repo_id` into its own folder."""
  return LAYOUT.download_command(repo_id, variant, subfolders)


def resolve_amused(repo_or_dir: str | os.PathLike, variant: str | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   subfolders: Sequence[str] = SUBFOLDERS) -> pathlib.Path:
  """The pipeline directory (holding `subfolders`) for a hub repo id or a local directory.

  `variant` "fp16" picks the `*.fp16.safetensors` weights. Raises WeightsError naming every
  missing file and the download command.
  """
  return LAYOUT.resolve(repo_or_dir, variant, cache_dir, subfolders)


def read_subfolder(directory: str | os.PathLike, subfolder: str,
                   variant: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json as a dict, every tensor of the weights file) of one component folder."""
  return LAYOUT.read_component(directory, subfolder, variant)


# ----------------------------------------------------------------------------
# The VQ model.
# ----------------------------------------------------------------------------

# diffusers VQModel defaults for keys a config.json may leave out.
_VQ_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                    up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                    layers_per_block=1, act_fn="silu", latent_channels=3, num_vq_embeddings=256,
                    norm_num_groups=32, vq_embed_dim=None, norm_type="group",
                    mid_block_add_attention=True)


def vq_config_from_json(data: dict[str, Any]) -> VQConfig:
  """VQConfig from a diffusers `VQModel` config.json dict; every unsupported setting is listed."""
  cfg = {**_VQ_DEFAULTS, **{k: v for k, v in data.items() if k in _VQ_DEFAULTS}}
  problems = []
  if data.get("_class_name", "VQModel") != "VQModel":
    problems.append(f"_class_name is {data['_class_name']!r}, not 'VQModel'")
  for key, supported in (("act_fn", "silu"), ("norm_type", "group"),
                         ("mid_block_add_attention", False)):
    if cfg[key] != supported:
      problems.append(f"{key}={cfg[key]!r} (only {supported!r} is implemented)")
  blocks = len(cfg["block_out_channels"])
  for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    if list(cfg[key]) != [kind] * blocks:
      problems.append(f"{key}={list(cfg[key])} (expected {blocks} x {kind!r}, one per block)")
  if not problems:
    try:
      return VQConfig(
          in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
          block_out_channels=tuple(cfg["block_out_channels"]),
          layers_per_block=cfg["layers_per_block"], latent_channels=cfg["latent_channels"],
          num_vq_embeddings=cfg["num_vq_embeddings"],
          vq_embed_dim=cfg["vq_embed_dim"] or cfg["latent_channels"],
          norm_num_groups=cfg["norm_num_groups"])
    except (VQConfigError, TypeError) as err:
      problems.append(str(err))
  raise WeightsError("unsupported VQ config.json: " + "; ".join(problems))


def vq_param_name(path: tuple[str, ...]) -> tuple[str, str]:
  """Flax param path -> (diffusers state-dict name, layout kind for `convert_state`)."""
  *modules, leaf = path
  prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
  if leaf == "kernel":
    return f"{prefix}.weight", "conv"
  if leaf in ("scale", "embedding"):
    return f"{prefix}.weight", "same"
  return f"{prefix}.{leaf}", "same"


def convert_vq(tensors: dict[str, np.ndarray], config: VQConfig, source: str = "checkpoint") -> Any:
  """diffusers VQModel tensors -> float32 Flax params of `VQModel(config)` (strict)."""
  return convert_state(tensors, abstract_params(config), vq_param_name, NOTHING_IGNORED, source)


def load_vq(repo_or_dir: str | os.PathLike, variant: str | None = None,
            cache_dir: str | os.PathLike | None = None) -> tuple[VQConfig, Any]:
  """(VQConfig, params) from the `vqvae/` folder of an aMUSEd repo id or local directory."""
  directory = resolve_amused(repo_or_dir, variant, cache_dir, subfolders=("vqvae",))
  data, tensors = read_subfolder(directory, "vqvae", variant)
  config = vq_config_from_json(data)
  source = str(directory / "vqvae" / weights_filename("vqvae", variant))
  return config, convert_vq(tensors, config, source)


def load_tokenizer(repo_or_dir: str | os.PathLike,
                   cache_dir: str | os.PathLike | None = None) -> Any:
  """transformers' CLIPTokenizerFast from the `tokenizer/` folder (its files checked)."""
  return LAYOUT.load_tokenizer(repo_or_dir, cache_dir)
