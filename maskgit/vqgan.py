"""The official MaskGIT VQGAN tokenizer, as a Flax Linen module.

Parameter paths and shapes match the released checkpoints
(``params/{encoder,decoder}/...`` and ``params/quantizer/codebook``). Numerics follow
the official code: GroupNorm at Flax defaults (32 groups, eps 1e-6), swish, 2x2 average
pooling to downsample, nearest-neighbour x2 upsampling followed by a 3x3 conv, and a
residual block whose 1x1 shortcut conv (where the width changes) is applied to the
block's *output*, not its input.

Images are NHWC floats in [0, 1]; decoded images are not clipped.

On GPUs, float32 convolutions at JAX's default precision run in TF32 (measured on an
H200: reconstructions 1e-2 from the official CPU outputs); wrap calls in
``jax.default_matmul_precision("highest")`` for full float32 (2.7e-5).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskgit.configs import TokenizerConfig


class ResBlock(nn.Module):
  """GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus the official shortcut."""
  filters: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_channels = x.shape[-1]
    residual = x
    for _ in range(2):
      x = nn.GroupNorm(dtype=self.dtype)(x)
      x = nn.swish(x)
      x = nn.Conv(self.filters, (3, 3), use_bias=False, dtype=self.dtype)(x)
    if in_channels != self.filters:
      # As in the official tokenizer: the projection sees the block output.
      residual = nn.Conv(self.filters, (1, 1), use_bias=False, dtype=self.dtype)(x)
    return x + residual


def average_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 mean pooling (even sizes), written as a reshape for fast compiles."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour upsampling by 2 in height and width."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Encoder(nn.Module):
  config: TokenizerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    x = nn.Conv(cfg.filters, (3, 3), use_bias=False, dtype=self.dtype)(x)
    levels = len(cfg.channel_multipliers)
    for level, multiplier in enumerate(cfg.channel_multipliers):
      filters = cfg.filters * multiplier
      for _ in range(cfg.num_res_blocks):
        x = ResBlock(filters, dtype=self.dtype)(x)
      if level < levels - 1:
        x = average_pool_2x2(x)
    for _ in range(cfg.num_res_blocks):
      x = ResBlock(filters, dtype=self.dtype)(x)
    x = nn.GroupNorm(dtype=self.dtype)(x)
    x = nn.swish(x)
    return nn.Conv(cfg.embedding_dim, (1, 1), dtype=self.dtype)(x)


class Decoder(nn.Module):
  config: TokenizerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    filters = cfg.filters * cfg.channel_multipliers[-1]
    x = nn.Conv(filters, (3, 3), dtype=self.dtype)(x)
    for _ in range(cfg.num_res_blocks):
      x = ResBlock(filters, dtype=self.dtype)(x)
    for level in reversed(range(len(cfg.channel_multipliers))):
      filters = cfg.filters * cfg.channel_multipliers[level]
      for _ in range(cfg.num_res_blocks):
        x = ResBlock(filters, dtype=self.dtype)(x)
      if level > 0:
        x = upsample_nearest_2x(x)
        x = nn.Conv(filters, (3, 3), dtype=self.dtype)(x)
    x = nn.GroupNorm(dtype=self.dtype)(x)
    x = nn.swish(x)
    return nn.Conv(3, (3, 3), dtype=self.dtype)(x)


class VectorQuantizer(nn.Module):
  """Nearest-codeword lookup in a (codebook_size, embedding_dim) codebook."""
  config: TokenizerConfig

  def setup(self):
    self.codebook = self.param(
        "codebook",
        nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
        (self.config.codebook_size, self.config.embedding_dim))

  def nearest(self, x: jax.Array) -> jax.Array:
    """Indices (int32) of the closest codewords (squared L2), computed in float32."""
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    codebook = self.codebook.astype(jnp.float32)
    distances = (jnp.sum(flat ** 2, axis=1, keepdims=True)
                 - 2.0 * jnp.matmul(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
                 + jnp.sum(codebook ** 2, axis=1)[None, :])
    ids = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    return ids.reshape(x.shape[:-1])

  def lookup(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.codebook, ids, axis=0)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.lookup(self.nearest(x))


class VQGAN(nn.Module):
  """MaskGIT VQGAN tokenizer: images (B,H,W,3) in [0,1] <-> tokens (B,h,w).

  ``dtype`` is the compute dtype of the encoder/decoder (parameters stay float32);
  codeword search and all returned arrays are float32 / int32.
  """
  config: TokenizerConfig
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.config, dtype=self.dtype)
    self.decoder = Decoder(self.config, dtype=self.dtype)
    self.quantizer = VectorQuantizer(self.config)

  def _check_images(self, images: jax.Array) -> None:
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(
          f"expected RGB images of shape (B,H,W,3) with values in [0,1], got shape {shape}")
    factor = self.config.downsample_factor
    if shape[1] % factor or shape[2] % factor:
      raise ValueError(
          f"image height and width must be multiples of {factor}, got {shape[1]}x{shape[2]}")

  def _encode_features(self, images: jax.Array) -> jax.Array:
    self._check_images(images)
    return self.encoder(jnp.asarray(images, jnp.float32))

  def encode(self, images: jax.Array) -> jax.Array:
    """Quantized latents (B, H/f, W/f, embedding_dim), float32."""
    return self.quantizer(self._encode_features(images))

  def encode_to_indices(self, images: jax.Array) -> jax.Array:
    """Token ids (B, H/f, W/f), int32."""
    return self.quantizer.nearest(self._encode_features(images))

  def decode(self, quantized: jax.Array) -> jax.Array:
    """Images (B, H, W, 3), float32, not clipped, from latents (B, h, w, embedding_dim)."""
    shape = tuple(getattr(quantized, "shape", ()))
    if len(shape) != 4 or shape[-1] != self.config.embedding_dim:
      raise ValueError(
          f"expected latents of shape (B,h,w,{self.config.embedding_dim}), got {shape}")
    return self.decoder(quantized).astype(jnp.float32)

  def decode_from_indices(self, ids: jax.Array) -> jax.Array:
    """Images (B, H, W, 3), float32, not clipped, from token ids (B, h, w)."""
    shape = tuple(getattr(ids, "shape", ()))
    if len(shape) != 3:
      raise ValueError(f"expected token ids of shape (B,h,w), got {shape}")
    return self.decode(self.quantizer.lookup(ids))

  def __call__(self, images: jax.Array) -> jax.Array:
    """Round trip images -> quantized latents -> images (used for ``init``)."""
    return self.decode(self.encode(images))
