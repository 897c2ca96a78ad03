"""Stable Diffusion inpainting (SD-1.5 or SD-2) as the region method's editor.

Prompts go, as they are, through a template ("a high quality image of {prompt}.", as the
official Learnable_Regions code sends them) to SD's own CLIP tokenizer and text encoder,
inside the jitted edit. For every box, the box grown by `editor.grow_tokens` box cells is
the region to regenerate: a hard mask at pixel resolution, handed with the image to
`lr_jax.generators.stable_diffusion.inpaint.inpaint` (VAE-encode the masked image, denoise
`num_steps` with classifier-free guidance against the negative prompt, VAE-decode). The
decoded image is then feathered into the input with the shared box helpers
(`lr_common.box_editing.finish`), so pixels beyond the feathered edge are the input's, byte
for byte (diffusers' pipeline returns the whole re-decoded image instead).

Grids: boxes come on the method's box grid, image_size / 16 cells per side at 512 px
(32 x 32: DINO ViT-B/16's patch grid there). SD's latent grid is twice as fine (the VAE
maps 8 x 8 pixels to one latent), so a box cell is 2 x 2 latent cells. The tiny random
model keeps that ratio: 64 px, 4 px per latent (16 x 16 latents), 8 x 8 box cells.

B images x N boxes are one jitted call; box (b, n) draws its noise from
fold_in(fold_in(rng, b), n), so a box edits alone as it does in a batch.

Settings (`config.editor`, defaults from the official code and diffusers' pipeline):
which weights (`model` "1.5" or "2", `repo`, `variant`, `cache_dir`), sampling
(`scheduler`, `num_steps`, `guidance_scale`, `negative_prompt`, `prompt_template`),
compositing (`grow_tokens`, `feather_radius`), compute (`dtype`, `chunk_size`) and
`resolution`.
"""
from __future__ import annotations

import dataclasses
import pathlib
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lr_common import auto_dtype
from lr_common import box_editing
from lr_common.errors import PromptError, SettingsError  # pylint: disable=unused-import (re-exported)
from lr_jax.editors import base
from lr_jax.editors import _free_text as free_text
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.generators.stable_diffusion import hub
from lr_jax.generators.stable_diffusion import inpaint as inpaint_lib
from lr_jax.generators.stable_diffusion import schedulers

NAME = "stable_diffusion"
CONFIGS = ("stable_diffusion", "stable_diffusion_tiny")   # configs/<name>.py
RGN_KEYS = ("editor.resolution",)      # the box grid: resolution / 16 cells per side
RESUMABLE_KEYS = ("editor.cache_dir", "editor.dtype")   # dtype: the numerics, not the run
DTYPES = box_editing.DTYPES
LATENTS_PER_BOX_CELL = 2               # a box cell is 2 x 2 latent cells
TINY_IMAGE_SIZE = hub.TINY_IMAGE_SIZE  # 16 x 16 latents, an 8 x 8 box grid (the tiny DINO's)
OFFICIAL_TEMPLATE = "a high quality image of {prompt}."
PROMPT_FIELD = "{prompt}"
SCHEDULERS = ("",) + schedulers.KINDS   # "": the repo's own


@dataclasses.dataclass(frozen=True)
class ModelFacts:
  """One SD inpainting checkpoint: its hub repo and the scheduler its repo ships."""
  repo: str
  scheduler_json: dict[str, Any] = dataclasses.field(hash=False, compare=False)


# The repos' scheduler/scheduler_config.json (hub facts), used where no files are read
# (tiny and random weights); official weights read the repo's own file.
_SD15_DDIM = {"_class_name": "DDIMScheduler", "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
              "steps_offset": 1, "trained_betas": None}
_SD2_PNDM = {"_class_name": "PNDMScheduler", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
             "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None}
MODELS = {"1.5": ModelFacts(hub.SD15_INPAINTING, _SD15_DDIM),
          "2": ModelFacts(hub.SD2_INPAINTING, _SD2_PNDM)}
# The tiny random model has no repo; its own sampler is DPM-Solver++ (DDIM with x0 clipping,
# SD-1.5's, turns float32 summation-order noise of random weights into 1e-4 differences
# between a box alone and in a batch over 50 guided steps; DPM-Solver++ and PNDM: 1e-6).
_TINY_SCHEDULER = {"_class_name": "DPMSolverMultistepScheduler", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                   "num_train_timesteps": 1000, "steps_offset": 1}


def default_config() -> ml_collections.ConfigDict:
  """Which weights, and the official code's sampling settings (diffusers' defaults)."""
  c = ml_collections.ConfigDict()
  c.model = "1.5"             # "1.5": stable-diffusion-v1-5/stable-diffusion-inpainting; "2"
  c.repo = ""                 # hub repo id or local directory; "" = the model's repo
  c.variant = ""              # "" (float32 files) or "fp16" (*.fp16.safetensors)
  c.cache_dir = ""            # Hugging Face cache; "" = its default (HF_HOME)
  c.scheduler = ""            # "" = the repo's own; "pndm", "ddim" or "dpmsolver++"
  c.num_steps = 50
  c.guidance_scale = 7.5      # <= 1: no classifier-free guidance (one UNet batch)
  c.negative_prompt = ""      # the official code has none; guided, "" still runs
  c.prompt_template = OFFICIAL_TEMPLATE   # "{prompt}": the prompt as it is
  c.grow_tokens = 1           # box cells added on each side of the box
  c.feather_radius = -1.0     # Gaussian sigma in pixels; < 0: image_size // 16 - 1; 0: hard
  c.dtype = "auto"            # float32 (lr_common.auto_dtype says why); or "bfloat16"
  c.chunk_size = 0            # > 0: edits per chunk through the pipeline (memory); 0: all
  c.resolution = 512          # pixels per side (a multiple of 16): the box grid is /16
  return c


@dataclasses.dataclass(frozen=True)
class EditSettings:
  """Sampling (`inpaint`), prompts, box growth, feathering of the SD editor."""
  inpaint: inpaint_lib.InpaintSettings
  prompt_template: str = OFFICIAL_TEMPLATE
  negative_prompt: str = ""
  grow_tokens: int = 1
  feather_radius: float | None = None

  @property
  def guided(self) -> bool:
    return self.inpaint.guidance_scale > 1


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _problems(e) -> list[str]:
  """One line per bad value of the editor section (empty: all fine)."""
  checks = [
      ("model", e.model in MODELS, f"one of {tuple(MODELS)}"),
      ("repo", isinstance(e.repo, str), "a hub repo id or a local directory ('' = the model's)"),
      ("variant", e.variant in ("", "fp16"), "'' (float32 files) or 'fp16'"),
      ("cache_dir", isinstance(e.cache_dir, str), "a folder ('' = the Hugging Face default)"),
      ("scheduler", e.scheduler in SCHEDULERS, f"one of {SCHEDULERS} ('' = the repo's own)"),
      ("num_steps", _is_int(e.num_steps) and 1 <= e.num_steps < 1000,
       "an integer in [1, 999] (the schedulers' 1000 training steps)"),
      ("guidance_scale", _is_number(e.guidance_scale) and e.guidance_scale >= 0,
       "a finite number >= 0"),
      ("negative_prompt", isinstance(e.negative_prompt, str), "a string"),
      ("prompt_template", isinstance(e.prompt_template, str)
       and e.prompt_template.count(PROMPT_FIELD) == 1,
       f"a string with {PROMPT_FIELD} exactly once (e.g. {OFFICIAL_TEMPLATE!r})"),
      ("grow_tokens", _is_int(e.grow_tokens) and e.grow_tokens >= 0, "an integer >= 0"),
      ("feather_radius", _is_number(e.feather_radius), "a finite number (< 0: the default)"),
      ("dtype", e.dtype in auto_dtype.CHOICES, f"one of {auto_dtype.CHOICES}"),
      ("chunk_size", _is_int(e.chunk_size) and e.chunk_size >= 0, "an integer >= 0"),
      ("resolution", _is_int(e.resolution) and e.resolution >= 64 and e.resolution % 16 == 0,
       "a multiple of 16, at least 64 (pixels; the box grid is resolution / 16)"),
  ]
  return [f"editor.{key} must be {want}, got {e[key]!r}" for key, ok, want in checks if not ok]


def check_config(config) -> None:
  """Raises one SettingsError listing every bad value of `config.editor`."""
  problems = _problems(config.editor)
  if problems:
    raise SettingsError("config " + "; ".join(problems))


def scheduler_config(config, tiny: bool = False) -> schedulers.SchedulerConfig:
  """The sampler of tiny or random weights (no files): the model's repo's scheduler json
  (the tiny model's: DPM-Solver++), read as `editor.scheduler` says ("" = its own class).
  Official weights read the repo's own file (`hub.load_stable_diffusion`)."""
  data = _TINY_SCHEDULER if tiny else MODELS[config.editor.model].scheduler_json
  return hub.pipeline_scheduler_config(data, config.editor.scheduler or None)


def _edit_settings(config, scheduler: schedulers.SchedulerConfig) -> EditSettings:
  e = config.editor
  sampling = inpaint_lib.InpaintSettings(
      scheduler=scheduler, num_steps=e.num_steps, guidance_scale=float(e.guidance_scale),
      dtype=auto_dtype.resolve(e.dtype, "Stable Diffusion editor", None),   # no oneDNN path
      chunk_size=e.chunk_size)
  radius = None if e.feather_radius < 0 else float(e.feather_radius)
  return EditSettings(sampling, e.prompt_template, e.negative_prompt, e.grow_tokens, radius)


def _repo(config) -> str:
  return config.editor.repo or MODELS[config.editor.model].repo


def full_models(model: str) -> inpaint_lib.SDModels:
  """The sizes of the SD-1.5 or SD-2 inpainting checkpoint."""
  return hub.sd15_inpainting_models() if model == "1.5" else hub.sd2_inpainting_models()


@dataclasses.dataclass(frozen=True)
class StableDiffusionEditor(base.Editor):
  """SD sizes + editing settings; `params` is what `hub.load_stable_diffusion` returns.

  `tokenizer` (the CLIP tokenizer of the weights, set by `build`) is used on the host only
  and takes no part in hashing or comparison."""
  models: inpaint_lib.SDModels
  size: int
  settings: EditSettings
  model: str            # "1.5", "2" or "tiny"
  model_name: str       # the repo id or directory ("tiny" for the tiny model)
  tokenizer: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

  @property
  def name(self) -> str:
    return NAME

  @property
  def image_size(self) -> int:
    return self.size

  @property
  def latents_per_side(self) -> int:
    return self.size // self.models.vae.downsample_factor

  @property
  def box_grid(self) -> int:
    return self.latents_per_side // LATENTS_PER_BOX_CELL

  @property
  def dtype(self) -> str:
    return self.settings.inpaint.dtype

  @property
  def max_text_length(self) -> int:
    return self.models.text.text.max_positions

  def prompt_as_sent(self, prompt: str) -> str:
    """The text the text encoder sees: the prompt in the template."""
    return self.settings.prompt_template.replace(PROMPT_FIELD, prompt)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
    """(N, 77) int32 ids as the pipeline tokenizes (padded, truncated) and whether each
    text was truncated."""
    return free_text.tokenize(self.tokenizer, texts, self.max_text_length, "Stable Diffusion")

  def condition(self, examples: Sequence[Any], text_encoder: Any) -> base.Conditioning:
    del text_encoder   # the project's CLIP; SD has its own text encoder
    return free_text.condition(examples, editor="Stable Diffusion", tokenize_fn=self.tokenize,
                               negative_prompt=self.settings.negative_prompt,
                               guidance_scale=self.settings.inpaint.guidance_scale,
                               max_length=self.max_text_length, template=self.prompt_as_sent)

  def dummy_condition(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, self.max_text_length)
    vocab = self.models.text.text.vocab_size
    return {"prompt_ids": rng.integers(0, vocab, shape).astype(np.int32),
            "negative_ids": rng.integers(0, vocab, shape).astype(np.int32)}

  def region_masks(self, boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Integer boxes (B, N, 4) on the box grid -> ((B, N, g, g) bool box-grid cells
    regenerated, (B, N, S, S) float32 hard pixel masks: 1 = regenerate)."""
    cells = box_editing.box_token_mask(boxes, self.box_grid, self.settings.grow_tokens)
    scale = self.size // self.box_grid
    pixels = jnp.repeat(jnp.repeat(cells, scale, axis=-2), scale, axis=-1)
    return cells, pixels.astype(jnp.float32)

  def _encode(self, params, ids: jax.Array) -> jax.Array:
    return inpaint_lib.encode_prompts(params, self.models, ids, self.dtype)

  def inpaint_boxes(self, params, images, boxes, cond, rng) -> dict[str, jax.Array]:
    """The generator part of `edit`: {"cells": (B, N, g, g) regenerated box-grid cells,
    "masks": (B, N, S, S) pixel masks, "raw": (B, N, S, S, 3) decoded images in [0, 1],
    not composited}."""
    batch, num_boxes = boxes.shape[:2]
    size = self.size
    cells, masks = self.region_masks(boxes)
    per_box = lambda x: jnp.repeat(x, num_boxes, axis=0)    # (B, ...) -> (B * N, ...)
    if self.settings.guided:   # both prompts of each image in one text-encoder batch
      text, negative = jnp.split(self._encode(params, jnp.concatenate(
          [cond["prompt_ids"], cond["negative_ids"]])), 2)
    else:
      text = negative = self._encode(params, cond["prompt_ids"])
    keys = box_editing.per_box_keys(rng, batch, num_boxes)   # one key, or (B, N) keys
    keys = box_editing.as_typed_keys(keys.reshape((batch * num_boxes,) + keys.shape[2:]))
    raw = inpaint_lib.inpaint(
        params, self.models, self.settings.inpaint, per_box(images.astype(jnp.float32)),
        masks.reshape(batch * num_boxes, size, size), per_box(text), per_box(negative), keys)
    return {"cells": cells, "masks": masks,
            "raw": raw.reshape(batch, num_boxes, size, size, 3)}

  def edit(self, params, images, boxes, cond, rng) -> base.EditOutput:
    boxes = box_editing.round_boxes(boxes)
    out = self.inpaint_boxes(params, images, boxes, cond, rng)
    sigma = box_editing.feather_sigma(self.size, True, self.settings.feather_radius)
    return base.EditOutput(*box_editing.finish(
        out["raw"], images, boxes, self.box_grid, self.settings.grow_tokens, sigma,
        cell_mask=out["cells"]))

  def record(self) -> dict[str, Any]:
    sampling = self.settings.inpaint
    return {**super().record(), NAME: self.model_name, "stable_diffusion_model": self.model,
            "stable_diffusion_steps": sampling.num_steps,
            "stable_diffusion_scheduler": sampling.scheduler.kind,
            "stable_diffusion_guidance_scale": sampling.guidance_scale}


def _editor(config, tiny: bool, models=None, scheduler=None, tokenizer=None,
            name=None) -> StableDiffusionEditor:
  check_config(config)
  settings = _edit_settings(config, scheduler or scheduler_config(config, tiny))
  if tiny:
    models, size, model, name = models or hub.tiny_models(), TINY_IMAGE_SIZE, "tiny", "tiny"
  else:
    models = models or full_models(config.editor.model)
    size, model, name = config.editor.resolution, config.editor.model, name or _repo(config)
  return StableDiffusionEditor(models, size, settings, model, name, tokenizer)


def make(config) -> StableDiffusionEditor:
  """The editor's static part (sizes, settings), without weights or tokenizer; the tiny SD
  when `config.models == "tiny"`. Raises one SettingsError for every bad value."""
  return _editor(config, config.get("models") == "tiny")


def _load_official(config) -> tuple[StableDiffusionEditor, Any]:
  """The repo's pipeline (`hub.load_stable_diffusion` checks that its parts fit); its VAE
  must split `editor.resolution` into whole box cells of 2 x 2 latents (SD's VAE: 8 px per
  latent, so 16 px per cell; a local test pipeline may have another factor)."""
  repo = _repo(config)
  models, scheduler, params, tokenizer = hub.load_stable_diffusion(
      repo, config.editor.variant or None, config.editor.cache_dir or None,
      config.editor.scheduler or None)
  cell = LATENTS_PER_BOX_CELL * models.vae.downsample_factor
  if config.editor.resolution % cell:
    raise WeightsError(f"the VAE of {repo} has {models.vae.downsample_factor} pixels per "
                       f"latent: editor.resolution {config.editor.resolution} must be a "
                       f"multiple of {cell} (box cells of {LATENTS_PER_BOX_CELL} x "
                       f"{LATENTS_PER_BOX_CELL} latents)")
  return _editor(config, False, models, scheduler, tokenizer), params


def build(config, weights: str, rng: jax.Array) -> tuple[StableDiffusionEditor, Any]:
  """The editor and its params: "official" (the hub repo's five subfolders, from the cache
  or a local directory), "tiny" (the small random SD, offline byte tokenizer) or "random"
  (full sizes, random values, no tokenizer: benchmarks)."""
  check_config(config)   # before anything is read
  if weights == "official":
    editor, params = _load_official(config)
  elif weights == "tiny":
    models = hub.tiny_models()
    editor = _editor(config, True, models, tokenizer=hub.tiny_tokenizer())
    params = hub.random_params(models, rng)
  elif weights == "random":
    editor = _editor(config, False)
    params = hub.random_params(editor.models, rng)
  else:
    raise SettingsError(f"weights must be 'official', 'tiny' or 'random', got {weights!r}")
  if editor.dtype != "float32":
    # Cast once here, not inside every jitted edit; the VAE stays float32 (diffusers runs
    # it in float32; its layers cast the weights to the compute dtype).
    params = {part: (box_editing.cast_params(value, DTYPES[editor.dtype])
                     if part in ("unet", "text_encoder") else value)
              for part, value in params.items()}
  return editor, params


def weight_files(config, to: pathlib.Path | None = None) -> dict[str, Any]:
  """Downloads (once) the five subfolders of the configured repo, into the Hugging Face
  cache or `to`/<repo name>; returns the folder."""
  check_config(config)
  if to is not None:
    return {NAME: hub.LAYOUT.fetch_to(_repo(config), config.editor.variant or None, to)}
  return {NAME: hub.resolve_stable_diffusion(_repo(config), config.editor.variant or None,
                                             config.editor.cache_dir or None)}


def download_lines(config, root: str) -> list[str]:
  """Paste-ready `hf download` lines fetching the repo into `root`/<repo name>."""
  check_config(config)
  return hub.LAYOUT.download_lines(_repo(config), config.editor.variant or None, root)
