"""aMUSEd's VQ tokenizer (diffusers `VQModel`, as the amused-256/512 `vqvae/`) in Flax Linen.

Facts from diffusers' `VQModel` with the hub config (`lookup_from_codebook`, no mid-block
attention, group norm): an encoder of `DownEncoderBlock2D`s (ResNet blocks, a stride-2 3x3
conv after every block but the last, padded by one pixel at the bottom/right only), a mid
block of two ResNet blocks, GroupNorm (eps 1e-6) -> SiLU -> 3x3 conv to the latent, a 1x1
`quant_conv`, and nearest-codebook-entry ids; the decoder looks the ids up, applies a 1x1
`post_quant_conv`, a mid block, `UpDecoderBlock2D`s (one more ResNet block each, nearest 2x
upsampling + 3x3 conv after all but the last) and GroupNorm -> SiLU -> 3x3 conv.

Module and parameter names follow the diffusers state dict (`down_blocks_0/resnets_1/norm1`
is `down_blocks.0.resnets.1.norm1`), so `hub.load_vq` maps names without a table.

Pixels are NHWC floats in [0, 1]: the aMUSEd pipelines feed the VQ model unnormalised images
(`VaeImageProcessor(do_normalize=False)`) and clip decoded pixels to [0, 1]; `decode_ids`
returns them unclipped. Token grids are (B, H / f, W / f) int32 with f = 2 ** (blocks - 1)
(16 at full size: 256 px -> 16x16, 512 px -> 32x32).

On GPUs, float32 convolutions at JAX's default precision may run in TF32 (the MaskGIT VQGAN's
note in maskgit/vqgan.py); wrap calls in `jax.default_matmul_precision("highest")` for
float32 parity. Code distances always use full float32 precision.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_common.errors import UserError
from lr_common.random_params import draw_params
from lr_jax.generators.conv_blocks import Stage, conv, output_head, size_problems



class VQConfigError(UserError, ValueError):
  """A VQ model configuration, or an input, that this implementation cannot use."""


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """Sizes of the VQ model; the defaults are the amused-256 / amused-512 `vqvae/` config."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 768)
  layers_per_block: int = 2
  latent_channels: int = 64
  num_vq_embeddings: int = 8192
  vq_embed_dim: int = 64
  norm_num_groups: int = 32

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    problems = size_problems(self, ("in_channels", "out_channels", "layers_per_block",
                                    "latent_channels", "num_vq_embeddings", "vq_embed_dim",
                                    "norm_num_groups"))
    if problems:
      raise VQConfigError("bad VQ config: " + "; ".join(problems))

  @property
  def downsample_factor(self) -> int:
    """Pixels per token along each side (16 at full size)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def tiny(cls) -> "VQConfig":
    """A small random-weights config for tests (4 px per token; the parity fixtures' config)."""
    return cls(block_out_channels=(8, 12, 16), layers_per_block=1, latent_channels=4,
               num_vq_embeddings=32, vq_embed_dim=6, norm_num_groups=4)


class Encoder(nn.Module):
  """Pixels (B, H, W, in) -> latents (B, H / f, W / f, latent_channels)."""
  config: VQConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    channels, groups = cfg.block_out_channels, cfg.norm_num_groups
    x = conv(channels[0], 3, "conv_in", self.dtype)(x)
    for i, features in enumerate(channels):
      last = i == len(channels) - 1
      x = Stage(features, cfg.layers_per_block, groups, None if last else "down", self.dtype,
                name=f"down_blocks_{i}")(x)
    x = Stage(channels[-1], 2, groups, None, self.dtype, name="mid_block")(x)
    return output_head(x, cfg.latent_channels, groups, self.dtype)


class Decoder(nn.Module):
  """Latents (B, h, w, latent_channels) -> pixels (B, h * f, w * f, out)."""
  config: VQConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    channels, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
    x = conv(channels[0], 3, "conv_in", self.dtype)(x)
    x = Stage(channels[0], 2, groups, None, self.dtype, name="mid_block")(x)
    for i, features in enumerate(channels):
      last = i == len(channels) - 1
      x = Stage(features, cfg.layers_per_block + 1, groups, None if last else "up", self.dtype,
                name=f"up_blocks_{i}")(x)
    return output_head(x, cfg.out_channels, groups, self.dtype)


class Codebook(nn.Module):
  """The `num_vq_embeddings` x `vq_embed_dim` code vectors (diffusers' `quantize`)."""
  config: VQConfig

  def setup(self):
    self.embedding = nn.Embed(self.config.num_vq_embeddings, self.config.vq_embed_dim)

  def nearest(self, z: jax.Array) -> jax.Array:
    """Ids of the code vectors nearest (Euclidean) to z (..., D), computed in full float32."""
    codes = self.embedding.embedding.astype(jnp.float32)
    z = z.astype(jnp.float32)
    cross = jnp.einsum("...d,kd->...k", z, codes, precision=jax.lax.Precision.HIGHEST)
    distances = (jnp.sum(z * z, -1, keepdims=True) - 2.0 * cross
                 + jnp.sum(codes * codes, -1))
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)

  def lookup(self, ids: jax.Array) -> jax.Array:
    return self.embedding(ids)


class VQModel(nn.Module):
  """aMUSEd's VQ model: `encode_ids` (pixels -> token ids) and `decode_ids` (ids -> pixels).

  `dtype` is the compute dtype (params stay float32); code distances are always float32.
  `model.init(key, pixels)` runs both halves, so it creates every parameter.
  """
  config: VQConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, self.dtype)
    self.quant_conv = conv(cfg.vq_embed_dim, 1, "quant_conv", self.dtype)
    self.quantize = Codebook(cfg)
    self.post_quant_conv = conv(cfg.latent_channels, 1, "post_quant_conv", self.dtype)
    self.decoder = Decoder(cfg, self.dtype)

  def _check_pixels(self, pixels: jax.Array) -> None:
    cfg, f = self.config, self.config.downsample_factor
    if pixels.ndim != 4 or pixels.shape[-1] != cfg.in_channels:
      raise VQConfigError(f"pixels must be (B, H, W, {cfg.in_channels}), got {pixels.shape}")
    if pixels.shape[1] % f or pixels.shape[2] % f:
      raise VQConfigError(f"image height and width must be multiples of {f} (pixels per token), "
                          f"got {pixels.shape[1]}x{pixels.shape[2]}")

  def encode_latents(self, pixels: jax.Array) -> jax.Array:
    """Pre-quantisation latents (B, h, w, vq_embed_dim): diffusers' `encode(...).latents`."""
    self._check_pixels(pixels)
    return self.quant_conv(self.encoder(pixels.astype(self.dtype)))

  def encode_ids(self, pixels: jax.Array) -> jax.Array:
    """Pixels (B, H, W, 3) in [0, 1] -> token ids (B, H / f, W / f) int32."""
    return self.quantize.nearest(self.encode_latents(pixels))

  def decode_ids(self, ids: jax.Array) -> jax.Array:
    """Token ids (B, h, w) -> pixels (B, h * f, w * f, 3) float32, about [0, 1], unclipped."""
    if ids.ndim != 3:
      raise VQConfigError(f"token ids must be (B, h, w), got shape {ids.shape}")
    quant = self.quantize.lookup(ids).astype(self.dtype)
    return self.decoder(self.post_quant_conv(quant)).astype(jnp.float32)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    """Round trip: pixels -> ids -> pixels."""
    return self.decode_ids(self.encode_ids(pixels))


def abstract_params(config: VQConfig) -> Any:
  """The param tree of `VQModel(config)` as `jax.ShapeDtypeStruct`s (nothing is computed)."""
  f = config.downsample_factor
  pixels = jnp.zeros((1, f, f, config.in_channels), jnp.float32)
  return jax.eval_shape(lambda: VQModel(config).init(jax.random.PRNGKey(0), pixels))["params"]


def random_params(config: VQConfig, rng: jax.Array) -> Any:
  """Random float32 params (numpy-drawn, nothing compiled): convs N(0, 1 / fan_in), codes
  N(0, 1), GroupNorm scales 1, biases 0; activations stay O(1) at any depth."""
  def std_of(shape: tuple[int, ...]) -> float:
    return 1.0 if len(shape) == 2 else float(np.prod(shape[:-1])) ** -0.5
  return draw_params(abstract_params(config), rng, std_of)
