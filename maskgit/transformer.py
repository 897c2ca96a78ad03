"""The official MaskGIT bidirectional transformer (BERT-style), as a Flax Linen module.

Parameter paths and shapes match the released checkpoints: ``Embed_0``,
``TransformerLayer_{i}/{Attention_0,Mlp_0}``, ``MlmLayer_0``. Numerics follow the
official code: post-LayerNorm layers with epsilon 1e-12, ``jax.nn.gelu`` (tanh
approximation), an MLM head Dense -> gelu -> LayerNorm -> logits tied to the word
embedding plus a per-token bias.

The mask token id is -1. Like ``jnp.take`` in the official code, it selects the last
row of the word embedding (``vocab_size - 1``); this module wraps negative ids
explicitly so the behaviour does not depend on ``jnp.take``'s out-of-bounds mode.

On the CPU, ``cpu_matmul`` ("auto" or "onednn") runs the bfloat16 products of the Dense
layers and of the logits on oneDNN (``lr_common.cpu_matmul``: the processor's bf16
instructions, where XLA would compute them in float32); float32 models are unaffected.

On GPUs, float32 matmuls at JAX's default precision run in TF32 (measured on an H200:
logits 3e-4 from the official CPU outputs); wrap calls in
``jax.default_matmul_precision("highest")`` for full float32 (1.5e-7).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lr_common import cpu_matmul as cpu_matmul_lib
from maskgit.configs import TransformerConfig

LAYER_NORM_EPSILON = 1e-12


def _dense_init(config: TransformerConfig):
  return nn.initializers.truncated_normal(stddev=config.initializer_range)


class SelfAttention(nn.Module):
  """Multi-head self-attention with the parameters of ``flax.linen.SelfAttention``."""
  config: TransformerConfig
  dtype: Any = jnp.float32
  implementation: Optional[str] = None
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dot = cpu_matmul_lib.dot_general_for(self.dtype, self.cpu_matmul)
    projection = lambda name: nn.DenseGeneral(
        (cfg.num_heads, cfg.head_dim), dtype=self.dtype, kernel_init=_dense_init(cfg),
        bias_init=nn.initializers.zeros, dot_general=dot, name=name)
    query, key, value = (projection(n)(x) for n in ("query", "key", "value"))
    if deterministic or cfg.attention_dropout_prob == 0.0:
      context = jax.nn.dot_product_attention(
          query, key, value, implementation=self.implementation)
    else:
      context = self._attention_with_dropout(query, key, value)
    return nn.DenseGeneral(
        cfg.hidden_size, axis=(-2, -1), dtype=self.dtype, kernel_init=_dense_init(cfg),
        bias_init=nn.initializers.zeros, dot_general=dot, name="out")(context)

  def _attention_with_dropout(self, query, key, value):
    """Training path: softmax(q k^T / sqrt(d)) with dropout on the probabilities."""
    scores = jnp.einsum("btnh,bsnh->bnts", query, key,
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores / jnp.sqrt(query.shape[-1]).astype(jnp.float32))
    probs = nn.Dropout(self.config.attention_dropout_prob)(probs, deterministic=False)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(value.dtype), value)


class Attention(nn.Module):
  """Self-attention, dropout, residual, LayerNorm (post-LN)."""
  config: TransformerConfig
  dtype: Any = jnp.float32
  implementation: Optional[str] = None
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    out = SelfAttention(self.config, self.dtype, self.implementation, self.cpu_matmul,
                        name="self_attention")(x, deterministic)
    out = nn.Dropout(self.config.hidden_dropout_prob)(out, deterministic=deterministic)
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype,
                        name="attention_output_ln")(out + x)


class Mlp(nn.Module):
  """Dense -> gelu -> Dense, dropout, residual, LayerNorm (post-LN)."""
  config: TransformerConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dot = cpu_matmul_lib.dot_general_for(self.dtype, self.cpu_matmul)
    h = nn.Dense(cfg.intermediate_size, dtype=self.dtype, kernel_init=_dense_init(cfg),
                 dot_general=dot, name="intermediate_output")(x)
    h = jax.nn.gelu(h)
    h = nn.Dense(cfg.hidden_size, dtype=self.dtype, kernel_init=_dense_init(cfg),
                 dot_general=dot, name="layer_output")(h)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype,
                        name="layer_output_ln")(h + x)


class TransformerLayer(nn.Module):
  config: TransformerConfig
  dtype: Any = jnp.float32
  implementation: Optional[str] = None
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    x = Attention(self.config, self.dtype, self.implementation, self.cpu_matmul,
                  name="Attention_0")(x, deterministic)
    return Mlp(self.config, self.dtype, self.cpu_matmul, name="Mlp_0")(x, deterministic)


class Embed(nn.Module):
  """Word + position embeddings, LayerNorm, dropout. Also exposes the word table."""
  config: TransformerConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.word_embeddings = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, embedding_init=_dense_init(cfg))
    self.position_embeddings = nn.Embed(
        cfg.sequence_length, cfg.hidden_size, dtype=self.dtype,
        embedding_init=_dense_init(cfg))
    self.embeddings_ln = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype)
    self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, input_ids: jax.Array, deterministic: bool) -> jax.Array:
    # Negative ids (the mask token -1) index from the end, as jnp.take does.
    ids = jnp.where(input_ids < 0, input_ids + self.config.vocab_size, input_ids)
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = self.word_embeddings(ids) + self.position_embeddings(positions)
    return self.dropout(self.embeddings_ln(x), deterministic=deterministic)

  def word_table(self) -> jax.Array:
    return self.word_embeddings.embedding


class MlmLayer(nn.Module):
  """Dense -> gelu -> LayerNorm -> logits tied to the word embedding, plus a bias."""
  config: TransformerConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, word_table: jax.Array) -> jax.Array:
    cfg = self.config
    dot = cpu_matmul_lib.dot_general_for(self.dtype, self.cpu_matmul)
    h = nn.Dense(cfg.hidden_size, dtype=self.dtype, kernel_init=_dense_init(cfg),
                 dot_general=dot, name="mlm_dense")(x)
    h = jax.nn.gelu(h)
    h = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="mlm_ln")(h)
    table_t = word_table.astype(self.dtype).T
    if dot is None:
      logits = jnp.matmul(h, table_t, preferred_element_type=jnp.float32)
    else:
      logits = dot(h, table_t, (((h.ndim - 1,), (0,)), ((), ())),
                   preferred_element_type=jnp.float32)
    return Bias(name="mlm_bias")(logits.astype(jnp.float32))


class Bias(nn.Module):
  """Adds a learnable bias (float32) along the last axis."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return x + bias


class Transformer(nn.Module):
  """MaskGIT transformer: token ids (B, L) int32 -> logits (B, L, vocab_size) float32.

  ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters and returned
  logits are float32. ``attention_implementation`` is passed to
  ``jax.nn.dot_product_attention`` (None: XLA; "cudnn" on recent GPUs in bf16).
  ``cpu_matmul``: "xla" (the default), "auto" or "onednn" (see the module docstring).
  """
  config: TransformerConfig
  dtype: Any = jnp.float32
  attention_implementation: Optional[str] = None
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, input_ids: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    shape = tuple(getattr(input_ids, "shape", ()))
    if len(shape) != 2:
      raise ValueError(f"expected token ids of shape (B, L), got {shape}")
    if shape[1] > cfg.sequence_length:
      raise ValueError(
          f"sequence length {shape[1]} exceeds the model's {cfg.sequence_length} positions")
    input_ids = jnp.asarray(input_ids).astype(jnp.int32)
    embed = Embed(cfg, self.dtype, name="Embed_0")
    x = embed(input_ids, deterministic)
    for i in range(cfg.num_layers):
      x = TransformerLayer(cfg, self.dtype, self.attention_implementation, self.cpu_matmul,
                           name=f"TransformerLayer_{i}")(x, deterministic)
    return MlmLayer(cfg, self.dtype, self.cpu_matmul, name="MlmLayer_0")(
        x, embed.word_table())
