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

`load_stable_diffusion` reads a whole pipeline (sizes, scheduler settings, params, tokenizer)
for `inpaint.inpaint`; `sd15_inpainting_models` / `sd2_inpainting_models` give the real
models' sizes and `tiny_models` a tiny random one (64 px images, 16 x 16 latents) for tests
and CPU smoke runs, with `random_params`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from lr_common.random_params import draw_params
from lr_jax.encoders import clip_text, hf_weights
from lr_jax.encoders.diffusers_layout import (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS,
                                              PipelineLayout)
from lr_jax.encoders.hf_files import WeightsError, read_json, read_safetensors
from lr_jax.generators.stable_diffusion import schedulers
from lr_jax.generators.stable_diffusion import unet as unet_lib
from lr_jax.generators.stable_diffusion import vae as vae_lib
from lr_jax.generators.stable_diffusion.inpaint import SDModels, fit_problems

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
  projection), loaded strictly; run it with `inpaint.encode_prompts`."""
  directory = resolve_stable_diffusion(repo_or_dir, variant, cache_dir, ("text_encoder",))
  data, tensors = read_component(directory, "text_encoder", variant)
  config = clip_text.text_config_from_json(data, with_projection=False)
  source = str(directory / "text_encoder" / weights_filename("text_encoder", variant))
  return config, clip_text.convert_text_encoder(tensors, config, source)


def load_tokenizer(repo_or_dir: str | os.PathLike,
                   cache_dir: str | os.PathLike | None = None) -> Any:
  """transformers' CLIPTokenizerFast from the `tokenizer/` folder (its files checked).

  Tokenize as the pipeline does: `padding="max_length"`, `max_length=77`, `truncation=True`
  (SD-1.x pads with the eos token, SD-2.x with "!": the folder's own settings).
  """
  return LAYOUT.load_tokenizer(repo_or_dir, cache_dir)


# ----------------------------------------------------------------------------
# Sizes: the real models, a tiny one, random params.
# ----------------------------------------------------------------------------

def sd15_inpainting_models() -> SDModels:
  """stable-diffusion-v1-5/stable-diffusion-inpainting: 9-channel UNet (8 heads, 768-wide
  cross-attention), the SD VAE, CLIP ViT-L/14's text tower."""
  return SDModels(unet=unet_lib.UNetConfig.sd15_inpainting(), vae=vae_lib.VAEConfig(),
                  text=clip_text.ClipTextConfig.clip_l14(projection_dim=None))


def sd2_inpainting_models() -> SDModels:
  """stabilityai/stable-diffusion-2-inpainting: 9-channel UNet (heads of 64, linear
  projections, 1024-wide cross-attention), the SD VAE, OpenCLIP ViT-H/14's text tower."""
  return SDModels(unet=unet_lib.UNetConfig.sd2_inpainting(), vae=vae_lib.VAEConfig(),
                  text=clip_text.ClipTextConfig.open_clip_h14())


PRESETS = {SD15_INPAINTING: sd15_inpainting_models, SD2_INPAINTING: sd2_inpainting_models}
TINY_IMAGE_SIZE = 64


def tiny_models() -> SDModels:
  """A tiny SD for tests and CPU smoke runs: 64 px images, a 3-level VAE (8, 16, 16
  channels, downsample factor 4: 16 x 16 x 4 latents), `UNetConfig.tiny` with 9 input
  channels and 32-wide cross-attention, `ClipTextConfig.tiny` without projection (its
  vocabulary is `tiny_tokenizer`'s)."""
  unet = unet_lib.UNetConfig.tiny(in_channels=9, cross_attention_dim=32)
  return SDModels(
      unet=dataclasses.replace(unet, sample_size=TINY_IMAGE_SIZE // 4),
      vae=vae_lib.VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1,
                            latent_channels=4, norm_num_groups=4, sample_size=TINY_IMAGE_SIZE),
      text=clip_text.ClipTextConfig.tiny(projection_dim=None))


def tiny_tokenizer() -> Any:
  """The offline byte-level CLIP tokenizer matching `tiny_models()`'s text encoder."""
  return hf_weights.tiny_clip_tokenizer()


def random_params(models: SDModels, rng: jax.Array) -> dict[str, Any]:
  """Random float32 params {"unet", "vae", "text_encoder"}, drawn with numpy (nothing is
  compiled): UNet and VAE kernels N(0, 1 / fan_in), the text encoder HF-style N(0, 0.02);
  norm scales 1, biases 0. The same key gives the same params."""
  unet_key, vae_key, text_key = jax.random.split(rng, 3)
  fan_in = lambda shape: float(np.prod(shape[:-1])) ** -0.5
  return {"unet": draw_params(unet_lib.abstract_params(models.unet), unet_key, fan_in),
          "vae": vae_lib.random_params(models.vae, vae_key),
          "text_encoder": hf_weights.random_params(clip_text.abstract_params(models.text),
                                                   text_key)}


# ----------------------------------------------------------------------------
# The whole pipeline.
# ----------------------------------------------------------------------------

def pipeline_scheduler_config(data: Mapping[str, Any],
                              kind: str | None = None) -> schedulers.SchedulerConfig:
  """The scheduler settings diffusers' inpaint pipeline samples with, from a
  `scheduler_config.json` dict: its constructor sets `steps_offset` 1 and `skip_prk_steps`
  true whatever the file says; `kind` (a scheduler kind or class name) swaps the class as
  `Class.from_config(pipe.scheduler.config)` does."""
  forced = {"steps_offset": 1, "skip_prk_steps": True}
  data = {**data, **forced}
  if data.get("_use_default_values"):
    data["_use_default_values"] = [k for k in data["_use_default_values"] if k not in forced]
  return schedulers.scheduler_config_from_json(data, kind)


def load_stable_diffusion(repo_or_dir: str | os.PathLike, variant: str | None = None,
                          cache_dir: str | os.PathLike | None = None,
                          scheduler_kind: str | None = None
                          ) -> tuple[SDModels, schedulers.SchedulerConfig, dict[str, Any], Any]:
  """(SDModels, SchedulerConfig, params, tokenizer) of an SD inpainting pipeline.

  Reads `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/scheduler_config.json`
  of a hub repo id or a local directory of that layout (`variant` "fp16" picks the
  `*.fp16.safetensors` files; params are float32 either way). The configs are read and
  checked before any weights (unsupported settings, and parts that do not fit together,
  raise WeightsError), then the weights are converted strictly. `scheduler_kind` (a kind of
  `schedulers.KINDS` or a diffusers class name) replaces the repo's scheduler class.
  """
  directory = resolve_stable_diffusion(repo_or_dir, variant, cache_dir)
  configs = {sub: read_json(directory / sub / "config.json")
             for sub in ("unet", "vae", "text_encoder")}
  unet_config = unet_lib.unet_config_from_json(configs["unet"])
  vae_config = vae_lib.vae_config_from_json(configs["vae"])
  text_config = clip_text.text_config_from_json(configs["text_encoder"], with_projection=False)
  scheduler = pipeline_scheduler_config(read_component(directory, "scheduler")[0],
                                        scheduler_kind)
  problems = fit_problems(unet_config, vae_config, text_config)
  if problems:
    raise WeightsError(f"the parts of {directory} do not make an inpainting model: "
                       + "; ".join(problems))
  models = SDModels(unet=unet_config, vae=vae_config, text=text_config)
  tokenizer = load_tokenizer(directory)
  converters = {"unet": (unet_lib.convert_unet, unet_config),
                "vae": (vae_lib.convert_vae, vae_config),
                "text_encoder": (clip_text.convert_text_encoder, text_config)}
  params = {}
  for sub, (convert, config) in converters.items():
    weights = directory / sub / weights_filename(sub, variant)
    params[sub] = convert(read_safetensors(weights), config, str(weights))
  return models, scheduler, params, tokenizer

