"""A CLIP text tower as transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`.

Text-conditioned generators read different outputs of one forward pass:
  * Stable Diffusion (1.x and 2.x) cross-attends to `last_hidden_state`, the last block's
    output after the final LayerNorm (the pipeline's default, without `clip_skip`);
  * aMUSEd cross-attends to the penultimate block's output (HF `hidden_states[-2]`, before
    the final LayerNorm) and conditions its norms on the projected pooled embedding.
`ClipTextModel` returns all of them (`ClipTextOutput`); under `jax.jit` the unused ones cost
nothing. The tower is `lr_jax.encoders.clip.TextTransformer`, so the numerics are those of
the CLIP encoder (causal attention, pooling at the eos position with the legacy
`eos_token_id == 2` rule).

Hub files: a `CLIPTextModel` stores `text_model.*` tensors (transformers 5 saves them without
the prefix; both are read), a `CLIPTextModelWithProjection` adds `text_projection.weight`.
Older files also keep the `text_model.embeddings.position_ids` buffer, which is ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders.clip import LEGACY_EOS_TOKEN_ID, TextConfig, TextTransformer
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.encoders.hf_weights import (IGNORED_CLIP, TINY_VOCAB_SIZE, clip_hf_name,
                                        clip_text_config_from_json, convert_state, hf_shapes)

WITH_PROJECTION = "CLIPTextModelWithProjection"
WITHOUT_PROJECTION = "CLIPTextModel"
_TOWER_PREFIXES = ("embeddings.", "encoder.", "final_layer_norm.")


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
  """A CLIP text tower and the width of its bias-free projection (None: no projection)."""
  text: TextConfig
  projection_dim: int | None = None

  @classmethod
  def clip_l14(cls, projection_dim: int | None = 768) -> "ClipTextConfig":
    """CLIP ViT-L/14's text tower: 768 wide, 12 layers, 12 heads, quick_gelu.

    SD-1.x's `text_encoder/` (a CLIPTextModel: `projection_dim=None`) and aMUSEd's (with
    the 768 projection). eos_token_id 2 is the legacy value of these hub configs (pool at
    the largest id); with the CLIP tokenizer it is the position of eos 49407.
    """
    text = TextConfig(vocab_size=49408, max_positions=77, hidden_size=768, num_layers=12,
                      num_heads=12, mlp_dim=3072, layer_norm_eps=1e-5, activation="quick_gelu",
                      eos_token_id=LEGACY_EOS_TOKEN_ID)
    return cls(text=text, projection_dim=projection_dim)

  @classmethod
  def open_clip_h14(cls, projection_dim: int | None = None) -> "ClipTextConfig":
    """SD-2.x's `text_encoder/`: OpenCLIP ViT-H/14's text tower without its last block
    (23 of 24 layers), 1024 wide, 16 heads, MLP 4096, exact gelu, no projection."""
    text = TextConfig(vocab_size=49408, max_positions=77, hidden_size=1024, num_layers=23,
                      num_heads=16, mlp_dim=4096, layer_norm_eps=1e-5, activation="gelu",
                      eos_token_id=LEGACY_EOS_TOKEN_ID)
    return cls(text=text, projection_dim=projection_dim)

  @classmethod
  def tiny(cls, projection_dim: int | None = 16) -> "ClipTextConfig":
    """A tiny tower for `hf_weights.tiny_clip_tokenizer` (32 wide, 3 layers); with the
    default projection 16 it has the sizes `amused.transformer.UVit2DConfig.tiny` expects."""
    text = TextConfig(vocab_size=TINY_VOCAB_SIZE, max_positions=77, hidden_size=32, num_layers=3,
                      num_heads=4, mlp_dim=64, layer_norm_eps=1e-5, activation="quick_gelu",
                      eos_token_id=TINY_VOCAB_SIZE - 1)
    return cls(text=text, projection_dim=projection_dim)


def text_config_from_json(data: dict[str, Any],
                          with_projection: bool | None = None) -> ClipTextConfig:
  """ClipTextConfig from a `text_encoder/config.json` dict (transformers CLIPTextConfig).

  Whether there is a projection comes from `with_projection`, else from the config's
  `architectures` (CLIPTextModel: none, although its config still names a
  `projection_dim`; CLIPTextModelWithProjection: `projection_dim`, default 512).
  """
  if not isinstance(data, dict):
    raise WeightsError(f"a text encoder config must be a JSON object, got {type(data).__name__}")
  if with_projection is None:
    architectures = data.get("architectures") or []
    if WITH_PROJECTION in architectures:
      with_projection = True
    elif WITHOUT_PROJECTION in architectures:
      with_projection = False
    else:
      raise WeightsError(f"text encoder config: architectures {architectures!r} name neither "
                         f"{WITHOUT_PROJECTION} nor {WITH_PROJECTION}; cannot tell whether the "
                         f"weights have a text projection")
  try:
    text = clip_text_config_from_json(data)
    projection = int(data.get("projection_dim", 512)) if with_projection else None
    return ClipTextConfig(text=text, projection_dim=projection)
  except WeightsError:
    raise
  except (TypeError, ValueError) as err:
    raise WeightsError(f"invalid text encoder config: {err}") from err


class ClipTextOutput(NamedTuple):
  """What one forward pass gives (B batch, T tokens, D width, P projection)."""
  last_hidden_state: jax.Array  # (B, T, D) the last block's output after the final LayerNorm
  penultimate: jax.Array  # (B, T, D) the block before it (HF hidden_states[-2]), no final LN
  pooled: jax.Array  # (B, D) last_hidden_state at the eos position (HF pooler_output)
  text_embeds: jax.Array | None  # (B, P) projected pooled; None without a projection


class ClipTextModel(nn.Module):
  """input_ids (B, T) [, attention_mask (B, T)] -> ClipTextOutput.

  The diffusion pipelines tokenize to 77 positions with padding and pass no attention mask
  (padding is attended, causally); a mask also hides padded keys, as in transformers.
  """
  config: ClipTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array,
               attention_mask: jax.Array | None = None) -> ClipTextOutput:
    tower = TextTransformer(self.config.text, self.dtype, output_hidden_states=True, name="text")
    last, pooled, hidden_states = tower(input_ids, attention_mask)
    text_embeds = None
    if self.config.projection_dim is not None:
      text_embeds = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype,
                             name="text_projection")(pooled)
    return ClipTextOutput(last, hidden_states[-2], pooled, text_embeds)


def abstract_params(config: ClipTextConfig) -> Any:
  """The param tree of `ClipTextModel(config)` as shapes (nothing is allocated)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  model = ClipTextModel(config)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]


def expected_hf_shapes(config: ClipTextConfig) -> dict[str, tuple[int, ...]]:
  """{tensor name: shape} of the hub file of this model (`text_model.*` names)."""
  return hf_shapes(abstract_params(config), clip_hf_name)


def with_tower_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Names as the hub files have them: transformers 5 saves a CLIPTextModel's tensors without
  `text_model.`; those get it back (other names are kept)."""
  if any(k.startswith("text_model.") for k in tensors):
    return tensors
  return {f"text_model.{k}" if k.startswith(_TOWER_PREFIXES) else k: v
          for k, v in tensors.items()}


def convert_text_encoder(tensors: dict[str, np.ndarray], config: ClipTextConfig,
                         source: str = "text encoder checkpoint") -> Any:
  """CLIPTextModel[WithProjection] tensors -> float32 Flax params of `ClipTextModel(config)`.

  Strict: every missing, unused or misshapen tensor is listed; only the `position_ids`
  buffer of older files may go unused.
  """
  return convert_state(with_tower_prefix(tensors), abstract_params(config), clip_hf_name,
                       IGNORED_CLIP, source)
