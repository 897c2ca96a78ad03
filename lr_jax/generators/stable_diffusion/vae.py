"""Stable Diffusion's VAE (diffusers `AutoencoderKL`, the SD 1.x / 2.x `vae/` folder) in Flax Linen.

Facts from diffusers' `AutoencoderKL`: the encoder is a 3x3 `conv_in`, one `DownEncoderBlock2D`
per entry of `block_out_channels` (`layers_per_block` ResNet blocks, then a stride-2 3x3 conv
padded by one pixel at the bottom/right, except after the last block), a mid block (ResNet
block, single-head self-attention over all pixels behind a GroupNorm, with a residual; ResNet
block), GroupNorm -> SiLU -> 3x3 conv to 2 * latent_channels, and a 1x1 `quant_conv`. Its output
splits into the mean and log-variance of a diagonal Gaussian; the log-variance is clipped to
[-30, 20]. The decoder is a 1x1 `post_quant_conv`, a 3x3 `conv_in`, the same kind of mid block,
one `UpDecoderBlock2D` per block (`layers_per_block + 1` ResNet blocks, then nearest 2x
upsampling and a 3x3 conv, except in the last) and GroupNorm -> SiLU -> 3x3 conv. Every
GroupNorm has eps 1e-6. The ResNet blocks and resamplers are shared with aMUSEd's VQ model
(`lr_jax.generators.conv_blocks`).

Images are NHWC floats in [-1, 1]; latents are (B, H / f, W / f, latent_channels) with
f = 2 ** (blocks - 1) (8 for SD: 512 px -> 64x64x4). The diffusion model works on
`latents * config.scaling_factor`; callers multiply before denoising and divide before `decode`.

Module and parameter names follow the diffusers state dict (`mid_block/attentions_0/to_out_0` is
`mid_block.attentions.0.to_out.0`). Older hub files name the attention projections `query`,
`key`, `value` and `proj_attn`, some with 1x1-conv shapes (C, C, 1, 1); `convert_vae` renames and
reshapes them before the strict conversion.

`dtype` is the compute dtype (params stay float32). diffusers runs its VAE in float32 because
float16 overflows; bfloat16 has float32's range. On GPUs, float32 convolutions at JAX's default
precision may run in TF32: wrap calls in `jax.default_matmul_precision("highest")` for parity.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_common.errors import UserError
from lr_common.random_params import draw_params
from lr_jax.encoders.hf_files import WeightsError, read_json, read_safetensors
from lr_jax.encoders.hf_weights import convert_state, hf_shapes
from lr_jax.generators.conv_blocks import (ResnetBlock, Stage, conv, group_norm, output_head,
                                          size_problems)

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp
SD_SCALING_FACTOR = 0.18215
WEIGHTS_STEM = "diffusion_pytorch_model"
NOTHING_IGNORED = re.compile(r"(?!)")  # every tensor of a VAE file has a parameter


class VAEConfigError(UserError, ValueError):
  """A VAE configuration, or an input, that this implementation cannot use."""


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Sizes of the VAE; the defaults are the SD 1.x / 2.x `vae/config.json`."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int = 512  # the training resolution; informational
  scaling_factor: float = SD_SCALING_FACTOR

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    problems = size_problems(self, ("in_channels", "out_channels", "layers_per_block",
                                    "latent_channels", "norm_num_groups"))
    if not self.scaling_factor > 0:
      problems.append(f"scaling_factor must be positive, got {self.scaling_factor}")
    if problems:
      raise VAEConfigError("bad VAE config: " + "; ".join(problems))

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent along each side (8 for SD)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def tiny(cls) -> "VAEConfig":
    """A small config for tests (2x downsampling; the `vae_tiny` parity fixture's sizes)."""
    return cls(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
               norm_num_groups=4, sample_size=16)


class SpatialSelfAttention(nn.Module):
  """One-head self-attention over all pixels: GroupNorm, q/k/v, softmax(q k^T / sqrt(C)) v,
  an output projection, plus the input."""
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    tokens = group_norm(self.groups, "group_norm", self.dtype)(x).reshape(b, h * w, 1, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=name)(tokens)
               for name in ("to_q", "to_k", "to_v"))
    attended = jax.nn.dot_product_attention(q, k, v)
    out = nn.Dense(c, dtype=self.dtype, name="to_out_0")(attended)
    return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """ResNet block, self-attention, ResNet block (diffusers' `UNetMidBlock2D` without time)."""
  features: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResnetBlock(self.features, self.groups, self.dtype, name="resnets_0")(x)
    x = SpatialSelfAttention(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(self.features, self.groups, self.dtype, name="resnets_1")(x)


class Encoder(nn.Module):
  """Images (B, H, W, in) -> Gaussian moments before `quant_conv` (B, H / f, W / f, 2 * latent)."""
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    channels, groups = cfg.block_out_channels, cfg.norm_num_groups
    x = conv(channels[0], 3, "conv_in", self.dtype)(x)
    for i, features in enumerate(channels):
      resample = None if i == len(channels) - 1 else "down"
      x = Stage(features, cfg.layers_per_block, groups, resample, self.dtype,
                name=f"down_blocks_{i}")(x)
    x = MidBlock(channels[-1], groups, self.dtype, name="mid_block")(x)
    return output_head(x, 2 * cfg.latent_channels, groups, self.dtype)


class Decoder(nn.Module):
  """Latents after `post_quant_conv` (B, h, w, latent) -> images (B, h * f, w * f, out)."""
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    channels, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
    x = conv(channels[0], 3, "conv_in", self.dtype)(x)
    x = MidBlock(channels[0], groups, self.dtype, name="mid_block")(x)
    for i, features in enumerate(channels):
      resample = None if i == len(channels) - 1 else "up"
      x = Stage(features, cfg.layers_per_block + 1, groups, resample, self.dtype,
                name=f"up_blocks_{i}")(x)
    return output_head(x, cfg.out_channels, groups, self.dtype)


class AutoencoderKL(nn.Module):
  """SD's VAE: `encode` (images -> posterior mean, log-variance) and `decode` (latents -> images).

  Outputs are float32 whatever `dtype` computes. `model.init(key, images)` runs both halves,
  so it creates every parameter.
  """
  config: VAEConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, self.dtype)
    self.quant_conv = conv(2 * cfg.latent_channels, 1, "quant_conv", self.dtype)
    self.post_quant_conv = conv(cfg.latent_channels, 1, "post_quant_conv", self.dtype)
    self.decoder = Decoder(cfg, self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images (B, H, W, in) in [-1, 1] -> (mean, logvar), each (B, H / f, W / f, latent) float32;
    logvar is clipped to [-30, 20]."""
    cfg, f = self.config, self.config.downsample_factor
    if images.ndim != 4 or images.shape[-1] != cfg.in_channels:
      raise VAEConfigError(f"images must be (B, H, W, {cfg.in_channels}), got {images.shape}")
    if images.shape[1] % f or images.shape[2] % f:
      raise VAEConfigError(f"image height and width must be multiples of {f} (pixels per latent), "
                           f"got {images.shape[1]}x{images.shape[2]}")
    moments = self.quant_conv(self.encoder(images.astype(self.dtype))).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Latents (B, h, w, latent), already divided by the scaling factor -> images
    (B, h * f, w * f, out) float32, about [-1, 1], unclipped."""
    if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
      raise VAEConfigError(f"latents must be (B, h, w, {self.config.latent_channels}), "
                           f"got {latents.shape}")
    x = self.post_quant_conv(latents.astype(self.dtype))
    return self.decoder(x).astype(jnp.float32)

  def __call__(self, images: jax.Array) -> jax.Array:
    """Round trip through the posterior mean."""
    return self.decode(self.encode(images)[0])


def reparameterize(mean: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
  """mean + exp(logvar / 2) * noise: a posterior sample for given standard-normal noise."""
  return mean + jnp.exp(0.5 * logvar) * noise


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
  """A sample of the diagonal Gaussian posterior, with float32 N(0, 1) noise drawn from `rng`."""
  noise = jax.random.normal(rng, jnp.shape(mean), jnp.float32)
  return reparameterize(mean, logvar, noise)


def abstract_params(config: VAEConfig) -> Any:
  """The param tree of `AutoencoderKL(config)` as `jax.ShapeDtypeStruct`s (nothing is computed)."""
  f = config.downsample_factor
  images = jnp.zeros((1, f, f, config.in_channels), jnp.float32)
  model = AutoencoderKL(config)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))["params"]


def random_params(config: VAEConfig, rng: jax.Array) -> Any:
  """Random float32 params (numpy-drawn): kernels N(0, 1 / fan_in), GroupNorm scales 1, biases 0."""
  return draw_params(abstract_params(config), rng,
                     lambda shape: float(np.prod(shape[:-1])) ** -0.5)


# ----------------------------------------------------------------------------
# diffusers config.json and state dict.
# ----------------------------------------------------------------------------

# diffusers AutoencoderKL defaults for keys a config.json may leave out.
_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                 layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
                 sample_size=32, scaling_factor=SD_SCALING_FACTOR, shift_factor=None,
                 latents_mean=None, latents_std=None, use_quant_conv=True,
                 use_post_quant_conv=True, mid_block_add_attention=True)
# Settings this implementation has no code for, with the one value it supports.
_FIXED = (("act_fn", "silu"), ("shift_factor", None), ("latents_mean", None),
          ("latents_std", None), ("use_quant_conv", True), ("use_post_quant_conv", True),
          ("mid_block_add_attention", True))


def vae_config_from_json(data: dict[str, Any]) -> VAEConfig:
  """VAEConfig from a diffusers `AutoencoderKL` config.json dict; every unsupported setting is
  listed in one WeightsError. `force_upcast` and other keys are ignored."""
  cfg = {**_DEFAULTS, **{k: v for k, v in data.items() if k in _DEFAULTS}}
  problems = []
  if data.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    problems.append(f"_class_name is {data['_class_name']!r}, not 'AutoencoderKL'")
  problems += [f"{key}={cfg[key]!r} (only {supported!r} is implemented)"
               for key, supported in _FIXED if cfg[key] != supported]
  blocks = len(cfg["block_out_channels"])
  for key, kind in (("down_block_types", "DownEncoderBlock2D"),
                    ("up_block_types", "UpDecoderBlock2D")):
    if list(cfg[key]) != [kind] * blocks:
      problems.append(f"{key}={list(cfg[key])} (expected {blocks} x {kind!r}, one per block)")
  sample_size = cfg["sample_size"]
  if isinstance(sample_size, (list, tuple)):
    sample_size = sample_size[0] if len(set(sample_size)) == 1 else sample_size
  if not isinstance(sample_size, int):
    problems.append(f"sample_size={cfg['sample_size']!r} (only square sizes are implemented)")
  if not problems:
    try:
      return VAEConfig(
          in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
          block_out_channels=tuple(cfg["block_out_channels"]),
          layers_per_block=cfg["layers_per_block"], latent_channels=cfg["latent_channels"],
          norm_num_groups=cfg["norm_num_groups"], sample_size=sample_size,
          scaling_factor=float(cfg["scaling_factor"]))
    except (VAEConfigError, TypeError, ValueError) as err:
      problems.append(str(err))
  raise WeightsError("unsupported AutoencoderKL config.json: " + "; ".join(problems))


_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out_0")


def vae_param_name(path: tuple[str, ...]) -> tuple[str, str]:
  """Flax param path -> (diffusers state-dict name, layout kind for `convert_state`)."""
  *modules, leaf = path
  prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
  if leaf == "kernel":
    return f"{prefix}.weight", "linear" if modules[-1] in _ATTENTION_PROJECTIONS else "conv"
  if leaf == "scale":
    return f"{prefix}.weight", "same"
  return f"{prefix}.{leaf}", "same"


_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_ATTENTION_TENSOR = re.compile(r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\."
                               r"(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)\."
                               r"(weight|bias)$")


def modernize_attention_names(
    tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """Renames the old mid-block attention tensors (`query`, `key`, `value`, `proj_attn`) to
  `to_q`, `to_k`, `to_v`, `to_out.0` and reshapes 1x1-conv weights (C, C, 1, 1) to (C, C).

  Returns the new dict and one note per change. An old name whose new name is also present is
  kept as it is, so the strict conversion reports it as unused.
  """
  renamed, notes = dict(tensors), []
  for name, array in tensors.items():
    match = _ATTENTION_TENSOR.match(name)
    if match is None:
      continue
    prefix, module, leaf = match.groups()
    target = f"{prefix}.{_LEGACY_NAMES.get(module, module)}.{leaf}"
    if target != name and target in tensors:
      continue
    if leaf == "weight" and array.ndim == 4 and array.shape[2:] == (1, 1):
      array = array.reshape(array.shape[:2])
      notes.append(f"{name} {tuple(tensors[name].shape)} -> {target} {array.shape}")
    elif target != name:
      notes.append(f"{name} -> {target}")
    if target != name:
      del renamed[name]
    renamed[target] = array
  return renamed, notes


def convert_vae(tensors: dict[str, np.ndarray], config: VAEConfig,
                source: str = "checkpoint") -> Any:
  """diffusers AutoencoderKL tensors (new or old attention names) -> float32 Flax params of
  `AutoencoderKL(config)`; every missing, unused or misshapen tensor is listed."""
  renamed, notes = modernize_attention_names(tensors)
  try:
    return convert_state(renamed, abstract_params(config), vae_param_name, NOTHING_IGNORED, source)
  except WeightsError as err:
    if not notes:
      raise
    raise WeightsError(f"{err}\n(old attention tensors were renamed first: "
                       + "; ".join(notes) + ")") from err


def expected_hf_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
  """{diffusers tensor name: shape} of an AutoencoderKL state dict with this config."""
  return hf_shapes(abstract_params(config), vae_param_name)


def load_vae(directory: str | os.PathLike, variant: str | None = None) -> tuple[VAEConfig, Any]:
  """(VAEConfig, params) from a local diffusers `vae/` folder: `config.json` and
  `diffusion_pytorch_model[.variant].safetensors` (e.g. variant "fp16")."""
  folder = pathlib.Path(directory)
  weights = folder / f"{WEIGHTS_STEM}{'.' + variant if variant else ''}.safetensors"
  missing = [str(p) for p in (folder / "config.json", weights) if not p.is_file()]
  if missing:
    raise WeightsError(f"the VAE folder lacks {missing}")
  config = vae_config_from_json(read_json(folder / "config.json"))
  return config, convert_vae(read_safetensors(weights), config, str(weights))
