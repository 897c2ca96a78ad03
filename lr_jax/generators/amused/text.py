"""aMUSEd's text encoder: the CLIP-L/14 text tower with projection (transformers
`CLIPTextModelWithProjection`), built from lr_jax.encoders.clip's TextTransformer.

The aMUSEd pipeline conditions the transformer on two outputs of one forward pass:
the penultimate layer's hidden states (HF `hidden_states[-2]`, before the final
LayerNorm) for cross-attention, and the projected pooled embedding (`text_embeds`)
for the adaptive norms. It tokenizes to the tokenizer's 77 positions with padding
and passes no attention mask; `TextEncoder` accepts one for other uses.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders.clip import TextConfig, TextTransformer
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.encoders.hf_weights import (IGNORED_CLIP, TINY_VOCAB_SIZE, clip_hf_name,
                               clip_text_config_from_json, convert_state, hf_shapes)


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """A CLIP text tower and the width of its (bias-free) projection."""
  text: TextConfig
  projection_dim: int

  @classmethod
  def clip_l14(cls) -> "TextEncoderConfig":
    """CLIP ViT-L/14's text tower (aMUSEd's `text_encoder/`): 768 wide, 12 layers, 12 heads.

    eos_token_id 2 is the legacy value of the OpenAI hub configs (pool at the argmax id);
    with the CLIP tokenizer it picks the same position as eos 49407 (the largest id).
    """
    text = TextConfig(vocab_size=49408, max_positions=77, hidden_size=768, num_layers=12,
                      num_heads=12, mlp_dim=3072, layer_norm_eps=1e-5, activation="quick_gelu",
                      eos_token_id=2)
    return cls(text=text, projection_dim=768)

  @classmethod
  def tiny(cls) -> "TextEncoderConfig":
    """A tiny random-weight tower for `hf_weights.tiny_clip_tokenizer` (32 wide, 3 layers,
    projection 16): the sizes `UVit2DConfig.tiny` expects."""
    text = TextConfig(vocab_size=TINY_VOCAB_SIZE, max_positions=77, hidden_size=32, num_layers=3,
                      num_heads=4, mlp_dim=64, layer_norm_eps=1e-5, activation="quick_gelu",
                      eos_token_id=TINY_VOCAB_SIZE - 1)
    return cls(text=text, projection_dim=16)


def text_config_from_json(data: dict[str, Any]) -> TextEncoderConfig:
  """TextEncoderConfig from a CLIPTextModelWithProjection `text_encoder/config.json` dict."""
  try:
    return TextEncoderConfig(text=clip_text_config_from_json(data),
                             projection_dim=int(data.get("projection_dim", 512)))
  except WeightsError:
    raise
  except (TypeError, ValueError) as err:
    raise WeightsError(f"invalid text encoder config: {err}") from err


class TextEncoder(nn.Module):
  """input_ids (B, T) -> (penultimate hidden states (B, T, D), projected pooled (B, P))."""
  config: TextEncoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array,
               attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    tower = TextTransformer(self.config.text, self.dtype, output_hidden_states=True, name="text")
    _, pooled, hidden_states = tower(input_ids, attention_mask)
    projection = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype,
                          name="text_projection")
    return hidden_states[-2], projection(pooled)


def abstract_params(config: TextEncoderConfig) -> Any:
  """The param tree of `TextEncoder(config)` as shapes (nothing is allocated)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  model = TextEncoder(config)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]


def expected_hf_shapes(config: TextEncoderConfig) -> dict[str, tuple[int, ...]]:
  """{transformers tensor name: shape} of a CLIPTextModelWithProjection with this config."""
  return hf_shapes(abstract_params(config), clip_hf_name)


def convert_text_encoder(tensors: dict[str, np.ndarray], config: TextEncoderConfig,
                         source: str = "text encoder checkpoint") -> Any:
  """CLIPTextModelWithProjection tensors -> Flax params of `TextEncoder(config)` (strict;
  the `position_ids` buffer of older files may be present)."""
  return convert_state(tensors, abstract_params(config), clip_hf_name, IGNORED_CLIP, source)
