"""CLIP (Flax Linen): ViT image tower, causal text transformer, projections.

Matches HF `transformers.CLIPModel` (v5) numerics:
  * image embedding = visual_projection(post_layernorm([CLS])), no bias;
  * text embedding = text_projection(final_layer_norm(h)[eos position]), where
    the eos position is the argmax of the token ids when the config's
    `eos_token_id == 2` (the legacy value of the OpenAI hub configs) and the
    first occurrence of `eos_token_id` otherwise;
  * text attention is causal and also masks padded keys (attention_mask == 0).
Embeddings are returned unnormalized.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lr_jax.vit import EncoderBlock, ViT, ViTConfig, check_sizes

LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int
  max_positions: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  activation: str
  eos_token_id: int

  def __post_init__(self):
    check_sizes(self.activation, self.hidden_size, self.num_heads)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vision: ViTConfig
  text: TextConfig
  projection_dim: int
  logit_scale_init: float = math.log(1 / 0.07)


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """(B,) index of the pooled token, following HF CLIPTextTransformer."""
  if eos_token_id == LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class TextTransformer(nn.Module):
  """CLIP text tower; returns (last_hidden_state (B,T,D) after final LN, pooled (B,D))."""
  config: TextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None):
    cfg = self.config
    if input_ids.ndim != 2:
      raise ValueError(f"expected input_ids (B, T), got shape {input_ids.shape}")
    length = input_ids.shape[1]
    if length > cfg.max_positions:
      raise ValueError(f"sequence length {length} exceeds max_positions {cfg.max_positions}")
    tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="token_embed")(input_ids)
    pos_embed = self.param("pos_embed", nn.initializers.normal(0.01),
                           (cfg.max_positions, cfg.hidden_size))
    x = tokens + pos_embed[:length].astype(self.dtype)
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
      if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
      mask = mask & (attention_mask[:, None, None, :] > 0)
    for i in range(cfg.num_layers):
      x, _ = EncoderBlock(cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, cfg.activation,
                          self.dtype, name=f"block_{i}")(x, mask)
    x = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False,
                     name="final_norm")(x)
    pooled = jnp.take_along_axis(x, eos_positions(input_ids, cfg.eos_token_id)[:, None, None], axis=1)
    return x, pooled[:, 0]


class CLIP(nn.Module):
  """CLIP with `encode_image`, `encode_text` and a learned `logit_scale` (log scale)."""
  config: CLIPConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.vision = ViT(cfg.vision, self.dtype)
    self.text = TextTransformer(cfg.text, self.dtype)
    self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
    self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init), ())

  def encode_image(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """pixels (B, S, S, 3) CLIP-normalized -> (embeds (B, P), tokens (B, 1+N, D))."""
    out = self.vision(pixels)
    return self.visual_projection(out["pooled"]), out["tokens"]

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """input_ids, attention_mask (B, T) -> embeds (B, P)."""
    _, pooled = self.text(input_ids, attention_mask)
    return self.text_projection(pooled)

  def text_hidden_states(self, input_ids: jax.Array,
                         attention_mask: jax.Array | None = None) -> jax.Array:
    """(B, T, D) text last hidden state (after the final LayerNorm)."""
    return self.text(input_ids, attention_mask)[0]

  def __call__(self, pixels: jax.Array, input_ids: jax.Array,
               attention_mask: jax.Array | None = None):
    """Returns (image_embeds, text_embeds, logit_scale); used for init."""
    image_embeds, _ = self.encode_image(pixels)
    return image_embeds, self.encode_text(input_ids, attention_mask), self.logit_scale
