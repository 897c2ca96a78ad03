"""The Stable Diffusion inpainting repos' layout, their text encoder and tokenizer.

`stable-diffusion-v1-5/stable-diffusion-inpainting` and
`stabilityai/stable-diffusion-2-inpainting` are diffusers pipeline repos: `unet/` and `vae/`
(diffusers: `config.json`, `diffusion_pytorch_model[.fp16].safetensors`), `text_encoder/`
(a transformers `CLIPTextModel`: `config.json`, `model[.fp16].safetensors`), `tokenizer/`
(CLIP BPE: `vocab.json`, `merges.txt`, ...) and `scheduler/` (`scheduler_config.json`).
Finding and reading them is `lr_jax.encoders.diffusers_layout` (`LAYOUT`); a repo id is
looked up in the local cache only when offline, and a failure lists every missing file with
the `hf download` command. The UNet and VAE converters live in `unet.py` / `vae.py`.

The text encoder is SD-1.x's CLIP ViT-L/14 text tower (quick_gelu) or SD-2.x's OpenCLIP
ViT-H/14 one (23 layers, gelu); the pipeline conditions the UNet on its `last_hidden_state`
(after the final LayerNorm), tokenizing to 77 positions with padding and no attention mask.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders import clip_text
from lr_jax.encoders.diffusers_layout import (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS,
                                              PipelineLayout)

SD15_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SD2_INPAINTING = "stabilityai/stable-diffusion-2-inpainting"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LAYOUT = PipelineLayout(
    name="Stable Diffusion", repos=(SD15_INPAINTING, SD2_INPAINTING), subfolders=SUBFOLDERS,
    weights_stems={"unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS,
                   "text_encoder": TRANSFORMERS_WEIGHTS},
    config_files={"scheduler": "scheduler_config.json"})

weights_filename = LAYOUT.weights_filename
subfolder_files = LAYOUT.subfolder_files


def download_command(repo_id: str, variant: str | None = None,
                     subfolders: Sequence[str] = SUBFOLDERS) -> str:
  """The `hf download` command that fetches `subfolders` of `repo_id` into its own folder."""
  return LAYOUT.download_command(repo_id, variant, subfolders)


def resolve_stable_diffusion(repo_or_dir: str | os.PathLike, variant: str | None = None,
                             cache_dir: str | os.PathLike | None = None,
                             subfolders: Sequence[str] = SUBFOLDERS) -> pathlib.Path:
  """The pipeline directory holding `subfolders`, for a hub repo id or a local directory.

  `variant` "fp16" picks the `*.fp16.safetensors` weights. Raises one WeightsError naming
  every missing file and the download command (offline: within seconds).
  """
  return LAYOUT.resolve(repo_or_dir, variant, cache_dir, subfolders)


def read_component(directory: str | os.PathLike, subfolder: str,
                   variant: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config dict, every tensor of the weights file) of `unet`, `vae` or `text_encoder`;
  (scheduler_config.json, {}) of `scheduler`."""
  return LAYOUT.read_component(directory, subfolder, variant)


def load_text_encoder(repo_or_dir: str | os.PathLike, variant: str | None = None,
                      cache_dir: str | os.PathLike | None = None
                      ) -> tuple[clip_text.ClipTextConfig, Any]:
  """(ClipTextConfig, float32 params) of the `text_encoder/` folder (a CLIPTextModel, no
  projection), loaded strictly; run it with `encode_text`."""
  directory = resolve_stable_diffusion(repo_or_dir, variant, cache_dir, ("text_encoder",))
  data, tensors = read_component(directory, "text_encoder", variant)
  config = clip_text.text_config_from_json(data, with_projection=False)
  source = str(directory / "text_encoder" / weights_filename("text_encoder", variant))
  return config, clip_text.convert_text_encoder(tensors, config, source)


@functools.partial(jax.jit, static_argnums=(0, 3))
def encode_text(config: clip_text.ClipTextConfig, params: Any, input_ids: jax.Array,
                dtype: Any = jnp.float32) -> jax.Array:
  """SD's text conditioning: input_ids (B, 77) -> last_hidden_state (B, 77, D), the last
  block's output after the final LayerNorm (no attention mask, as the pipeline calls it)."""
  out = clip_text.ClipTextModel(config, dtype).apply({"params": params}, input_ids)
  return out.last_hidden_state


def load_tokenizer(repo_or_dir: str | os.PathLike,
                   cache_dir: str | os.PathLike | None = None) -> Any:
  """transformers' CLIPTokenizerFast from the `tokenizer/` folder (its files checked).

  Tokenize as the pipeline does: `padding="max_length"`, `max_length=77`, `truncation=True`
  (SD-1.x pads with the eos token, SD-2.x with "!": the folder's own settings).
  """
  return LAYOUT.load_tokenizer(repo_or_dir, cache_dir)
