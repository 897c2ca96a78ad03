"""aMUSEd's text encoder: CLIP-L/14's text tower with its 768 projection, a
`CLIPTextModelWithProjection` (the model is `lr_jax.encoders.clip_text`).

The aMUSEd pipeline conditions the transformer on two outputs of one forward pass:
the penultimate layer's hidden states (HF `hidden_states[-2]`, before the final
LayerNorm) for cross-attention, and the projected pooled embedding (`text_embeds`)
for the adaptive norms. It tokenizes to the tokenizer's 77 positions with padding
and passes no attention mask; `TextEncoder` accepts one for other uses.
"""
from __future__ import annotations

from typing import Any

import jax

from lr_jax.encoders import clip_text
from lr_jax.encoders.clip_text import abstract_params, convert_text_encoder, expected_hf_shapes

# aMUSEd's sizes: `TextEncoderConfig.clip_l14()` (the hub's) and `.tiny()` (projection 16).
TextEncoderConfig = clip_text.ClipTextConfig

__all__ = ["TextEncoder", "TextEncoderConfig", "abstract_params", "convert_text_encoder",
           "expected_hf_shapes", "text_config_from_json"]


def text_config_from_json(data: dict[str, Any]) -> TextEncoderConfig:
  """TextEncoderConfig from aMUSEd's `text_encoder/config.json` (always with a projection)."""
  return clip_text.text_config_from_json(data, with_projection=True)


class TextEncoder(clip_text.ClipTextModel):
  """input_ids (B, T) -> (penultimate hidden states (B, T, D), projected pooled (B, P))."""

  def __call__(self, input_ids: jax.Array,
               attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    if self.config.projection_dim is None:
      raise ValueError("aMUSEd's text encoder needs a projection (projection_dim is None)")
    out = super().__call__(input_ids, attention_mask)
    return out.penultimate, out.text_embeds
