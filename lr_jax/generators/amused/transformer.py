"""aMUSEd's U-ViT token transformer (diffusers `UVit2DModel`) in Flax Linen, channel-last.

ids (B, h, w) -> embedding + RMSNorm + 1x1 conv -> down block (ConvNeXt blocks with
pooled-text/micro-conditioning scale-shift, each followed by two cross-attentions on the text;
optional 2x2 stride-2 downsampling first) -> `num_hidden_layers` transformer layers
(self-attention, cross-attention, GEGLU feed-forward, each after an adaptive norm
conditioned on the same embedding) -> up block (optional 2x2 transposed-conv upsampling
last) -> conv MLM head -> logits (B, h, w, codebook_size).

Module names follow the diffusers state dict, so `hf_name` maps a Flax param path to
its tensor name mechanically; `convert_transformer` loads a hub
`transformer/diffusion_pytorch_model.safetensors` strictly. Params are float32; `dtype`
sets the compute dtype (norm statistics, softmax and the logits stay float32).

With a bfloat16 `dtype`, `cpu_matmul` ("auto" or "onednn"; the default "xla" never)
runs the products of every Dense layer and of the 1x1 convolutions (the embedding's
and the codebook head's) on oneDNN (`lr_common.cpu_matmul`: the processor's bf16
instructions, where XLA:CPU would compute them in float32). The attention scores,
the 3x3 and 2x2 convolutions and float32 models stay XLA's.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_common import cpu_matmul as cpu_matmul_lib
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.encoders.hf_weights import convert_state, hf_shapes

_LIST_MODULES = re.compile(r"^(res_blocks|attention_blocks|transformer_layers)_(\d+)$")
_RENAMED_MODULES = {"to_out": "to_out.0", "geglu": "net.0.proj", "ff_out": "net.2"}
_CONV_MODULES = ("conv", "conv1", "conv2", "depthwise")
_NOTHING_IGNORED = re.compile(r"^$")


@dataclasses.dataclass(frozen=True)
class UVit2DConfig:
  """Sizes of a UVit2DModel; field names are the hub config's keys, defaults amused-256.

  The full sizes are UVit2DModel's own defaults (those of the openMUSE checkpoints the
  hub models were converted from); amused-512 adds down/upsampling (diffusers'
  scripts/convert_amused.py). `transformer_config_from_json` reads a hub config as is.

  micro_cond_embed_dim / micro_cond_encode_dim is the number of micro-conditioning values
  (5: width, height, crop top, crop left, aesthetic score); sample_size is the token grid
  side the model was trained at (informational).
  """
  hidden_size: int = 1024
  use_bias: bool = False
  cond_embed_dim: int = 768
  micro_cond_encode_dim: int = 256
  micro_cond_embed_dim: int = 1280
  encoder_hidden_size: int = 768
  vocab_size: int = 8256
  codebook_size: int = 8192
  in_channels: int = 768
  block_out_channels: int = 768
  num_res_blocks: int = 3
  downsample: bool = False
  upsample: bool = False
  block_num_heads: int = 12
  num_hidden_layers: int = 22
  num_attention_heads: int = 16
  intermediate_size: int = 2816
  layer_norm_eps: float = 1e-6
  ln_elementwise_affine: bool = True
  sample_size: int = 16

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.block_out_channels % self.block_num_heads:
      raise ValueError(f"block_out_channels {self.block_out_channels} is not divisible by "
                       f"block_num_heads {self.block_num_heads}")
    if self.micro_cond_embed_dim % self.micro_cond_encode_dim:
      raise ValueError(f"micro_cond_embed_dim {self.micro_cond_embed_dim} is not a multiple of "
                       f"micro_cond_encode_dim {self.micro_cond_encode_dim}")
    if self.downsample != self.upsample:
      raise ValueError("downsample and upsample must agree (the logits keep the token grid)")

  @property
  def num_micro_conds(self) -> int:
    return self.micro_cond_embed_dim // self.micro_cond_encode_dim

  @classmethod
  def amused_256(cls) -> "UVit2DConfig":
    """amused/amused-256: 16x16 tokens, no down/upsampling."""
    return cls()

  @classmethod
  def amused_512(cls) -> "UVit2DConfig":
    """amused/amused-512: 32x32 tokens, down/upsampled to 16x16 around the transformer."""
    return cls(downsample=True, upsample=True, sample_size=32)

  @classmethod
  def preset(cls, resolution: int) -> "UVit2DConfig":
    presets = {256: cls.amused_256, 512: cls.amused_512}
    if resolution not in presets:
      raise ValueError(f"no aMUSEd preset for resolution {resolution} (have {sorted(presets)})")
    return presets[resolution]()

  @classmethod
  def tiny(cls, downsample: bool = False, use_bias: bool = False,
           ln_elementwise_affine: bool = True) -> "UVit2DConfig":
    """A tiny random-weight config for tests (text: 32 wide hidden states, 16 wide pooled)."""
    return cls(hidden_size=32, use_bias=use_bias, cond_embed_dim=16, micro_cond_encode_dim=8,
               micro_cond_embed_dim=40, encoder_hidden_size=32, vocab_size=72, codebook_size=64,
               in_channels=16, block_out_channels=24, num_res_blocks=2, downsample=downsample,
               upsample=downsample, block_num_heads=2, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, ln_elementwise_affine=ln_elementwise_affine,
               sample_size=8 if downsample else 4)


def transformer_config_from_json(data: dict[str, Any]) -> UVit2DConfig:
  """UVit2DConfig from a diffusers `transformer/config.json` dict.

  As diffusers' `from_config`: missing keys take UVit2DModel's defaults (sample_size 64),
  keys it does not take (`_class_name`, ...) are ignored, and so are the dropout rates
  (inference). Invalid values raise WeightsError.
  """
  fields = {f.name for f in dataclasses.fields(UVit2DConfig)}
  values = {"sample_size": 64, **{k: v for k, v in data.items() if k in fields}}
  try:
    return UVit2DConfig(**values)
  except (TypeError, ValueError) as err:
    raise WeightsError(f"invalid transformer config: {err}") from err


# ----------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------

class RMSNorm(nn.Module):
  """x / rms(x) over the last axis (statistics in float32), times a learned scale."""
  eps: float
  use_scale: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.use_scale:
      y = y * self.param("scale", nn.initializers.ones, (x.shape[-1],))
    return y.astype(self.dtype)


def _dense(features: int, use_bias: bool, dtype: Any, name: str,
           cpu_matmul: str = "xla") -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  dot_general=cpu_matmul_lib.dot_general_for(dtype, cpu_matmul), name=name)


def _config_dense(module: nn.Module) -> Callable[[int, str], nn.Dense]:
  """`_dense` with the use_bias, dtype and cpu_matmul of a module holding a config."""
  return lambda features, name: _dense(features, module.config.use_bias, module.dtype, name,
                                       module.cpu_matmul)


def _conv1x1(features: int, use_bias: bool, dtype: Any, name: str,
             cpu_matmul: str = "xla") -> nn.Module:
  dot = cpu_matmul_lib.dot_general_for(dtype, cpu_matmul)
  if dot is None:
    return nn.Conv(features, (1, 1), use_bias=use_bias, dtype=dtype, name=name)
  return PointwiseProduct(features, use_bias, dtype, dot, name=name)


class PointwiseProduct(nn.Module):
  """A 1x1 convolution as one matrix product through `dot_general`; its params are
  nn.Conv's (kernel (1, 1, in, out), bias), so either module reads the same weights."""
  features: int
  use_bias: bool
  dtype: Any
  dot_general: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1, 1, x.shape[-1], self.features))
    kernel = kernel.reshape(kernel.shape[2:]).astype(self.dtype)
    x = x.astype(self.dtype)
    y = self.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class Attention(nn.Module):
  """Multi-head attention of x on `context` (x itself when None); q/k/v/out projections."""
  num_heads: int
  use_bias: bool
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    context = x if context is None else context
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda name: _dense(width, self.use_bias, self.dtype, name, self.cpu_matmul)
    split = lambda y: y.reshape(y.shape[:-1] + (self.num_heads, head_dim))
    q = split(dense("to_q")(x))
    k = split(dense("to_k")(context))
    v = split(dense("to_v")(context))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim ** -0.5)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(x.shape)
    return dense("to_out")(out)


class ConvNextBlock(nn.Module):
  """Depthwise 3x3 conv, RMSNorm, 4x MLP with GELU and global response norm, residual,
  then a scale-shift from the conditioning embedding. NHWC."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    cfg = self.config
    channels = x.shape[-1]
    y = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=channels,
                use_bias=cfg.use_bias, dtype=self.dtype, name="depthwise")(x)
    y = RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name="norm")(y)
    dense = _config_dense(self)
    y = dense(4 * channels, "channelwise_linear_1")(y)
    y = GlobalResponseNorm(self.dtype, name="channelwise_norm")(jax.nn.gelu(y, approximate=False))
    y = dense(channels, "channelwise_linear_2")(y)
    x = x + y
    mod = dense(2 * channels, "cond_embeds_mapper")(nn.silu(cond))
    scale, shift = jnp.split(mod, 2, axis=-1)
    return x * (1 + scale[:, None, None, :]) + shift[:, None, None, :]


class GlobalResponseNorm(nn.Module):
  """ConvNeXt-V2 GRN over the spatial axes of NHWC input: gamma * (x * n) + beta + x."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1, 1, 1, x.shape[-1])  # the torch parameter shape, broadcast over NHWC
    gamma = self.param("gamma", nn.initializers.zeros, shape)
    beta = self.param("beta", nn.initializers.zeros, shape)
    x32 = x.astype(jnp.float32)
    spatial_norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True))
    relative = spatial_norm / (jnp.mean(spatial_norm, axis=-1, keepdims=True) + 1e-6)
    return (gamma * (x32 * relative) + beta + x32).astype(self.dtype)


class SkipFFBlock(nn.Module):
  """Two pre-RMSNorm cross-attentions on the (silu + linear mapped) text states; no MLP."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    channels = x.shape[-1]
    if context.shape[-1] != channels:
      context = _config_dense(self)(channels, "kv_mapper")(nn.silu(context))
    for i in (1, 2):  # the norms' eps is a constant 1e-6 in diffusers, not layer_norm_eps
      y = RMSNorm(1e-6, True, self.dtype, name=f"norm{i}")(x)
      attention = Attention(cfg.block_num_heads, cfg.use_bias, self.dtype, self.cpu_matmul,
                            name=f"attn{i}")
      x = x + attention(y, context)
    return x


class UVitBlock(nn.Module):
  """Optional downsampling, `num_res_blocks` x (ConvNeXt block, SkipFF block), optional
  upsampling; NHWC in and out."""
  config: UVit2DConfig
  downsample: bool
  upsample: bool
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    channels = x.shape[-1]
    if self.downsample:
      x = Downsample(cfg, self.dtype, name="downsample")(x)
    for i in range(cfg.num_res_blocks):
      x = ConvNextBlock(cfg, self.dtype, self.cpu_matmul, name=f"res_blocks_{i}")(x, cond)
      batch, height, width, _ = x.shape
      tokens = x.reshape(batch, height * width, channels)
      tokens = SkipFFBlock(cfg, self.dtype, self.cpu_matmul,
                           name=f"attention_blocks_{i}")(tokens, context)
      x = tokens.reshape(x.shape)
    if self.upsample:
      x = Upsample(cfg, self.dtype, name="upsample")(x)
    return x


class Downsample(nn.Module):
  """RMSNorm, zero-pad bottom/right by one, 2x2 conv with stride 2 (diffusers Downsample2D)."""
  config: UVit2DConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    x = RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name="norm")(x)
    return nn.Conv(x.shape[-1], (2, 2), strides=(2, 2), padding=((0, 1), (0, 1)),
                   use_bias=cfg.use_bias, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
  """RMSNorm, then a 2x2 stride-2 transposed conv (each token -> a 2x2 patch)."""
  config: UVit2DConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    channels = x.shape[-1]
    x = RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name="norm")(x)
    return UpsampleConv(channels, cfg.use_bias, self.dtype, name="conv")(x)


class UpsampleConv(nn.Module):
  """ConvTranspose2d(kernel 2, stride 2, padding 0): out[2i+p, 2j+q] = x[i, j] @ kernel[p, q]."""
  features: int
  use_bias: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (2, 2, x.shape[-1], self.features))
    batch, height, width, _ = x.shape
    y = jnp.einsum("bijc,pqco->bipjqo", x, kernel.astype(self.dtype))
    y = y.reshape(batch, 2 * height, 2 * width, self.features)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class AdaNorm(nn.Module):
  """RMSNorm or LayerNorm, then scale-shift predicted from the conditioning embedding
  (diffusers AdaLayerNormContinuous)."""
  config: UVit2DConfig
  kind: str  # "rms" or "layer"
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    cfg = self.config
    mod = _config_dense(self)(2 * x.shape[-1], "linear")(nn.silu(cond))
    scale, shift = jnp.split(mod, 2, axis=-1)
    if self.kind == "rms":
      y = RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name="norm")(x)
    else:
      affine = cfg.ln_elementwise_affine
      y = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, use_bias=cfg.use_bias and affine,
                       use_scale=affine, use_fast_variance=False, name="norm")(x)
    return y * (1 + scale[:, None, :]) + shift[:, None, :]


class TransformerLayer(nn.Module):
  """Self-attention, cross-attention on the text, GEGLU feed-forward; each pre-AdaNorm."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    attention = lambda name: Attention(cfg.num_attention_heads, cfg.use_bias, self.dtype,
                                       self.cpu_matmul, name=name)
    norm = lambda kind, name: AdaNorm(cfg, kind, self.dtype, self.cpu_matmul, name=name)
    x = x + attention("attn1")(norm("rms", "norm1")(x, cond))
    x = x + attention("attn2")(norm("rms", "norm2")(x, cond), context)
    y = norm("layer", "norm3")(x, cond)
    return x + GegluFeedForward(cfg, self.dtype, self.cpu_matmul, name="ff")(y)


class GegluFeedForward(nn.Module):
  """Linear to 2 x intermediate, value * gelu(gate) (value first), linear back."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dense = _config_dense(self)
    value, gate = jnp.split(dense(2 * cfg.intermediate_size, "geglu")(x), 2, axis=-1)
    return dense(x.shape[-1], "ff_out")(
        value * jax.nn.gelu(gate, approximate=False))


def sinusoidal_embedding(values: jax.Array, dim: int, max_period: float = 10000.) -> jax.Array:
  """(N,) -> (N, dim) float32 [cos, sin] features with frequencies max_period^(-i / (dim//2))
  (diffusers get_timestep_embedding with flip_sin_to_cos=True, downscale_freq_shift=0)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = values.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------

class UVit2D(nn.Module):
  """Logits over the VQ codebook for every token of a (partly masked) token grid.

  Args of __call__:
    ids: (B, h, w) int token ids (codebook ids or the mask token id).
    text_hidden: (B, T, encoder_hidden_size) text encoder hidden states (aMUSEd: CLIP's
      penultimate layer).
    pooled_text: (B, cond_embed_dim) pooled, projected text embedding.
    micro_conds: (B, num_micro_conds) float (width, height, crop top, crop left, aesthetic score).

  Returns:
    (B, h, w, codebook_size) float32 logits.

  `cpu_matmul` ("xla", "auto", "onednn") matters for a bfloat16 `dtype` only (see the
  module docstring).
  """
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, ids: jax.Array, text_hidden: jax.Array, pooled_text: jax.Array,
               micro_conds: jax.Array) -> jax.Array:
    cfg = self.config
    self._check_inputs(ids, text_hidden, pooled_text, micro_conds)
    batch, height, width = ids.shape
    rms = lambda name: RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name=name)
    dense = _config_dense(self)
    context = dense(cfg.hidden_size, "encoder_proj")(text_hidden.astype(self.dtype))
    context = rms("encoder_proj_layer_norm")(context)

    micro = sinusoidal_embedding(micro_conds.reshape(-1), cfg.micro_cond_encode_dim)
    cond = jnp.concatenate([pooled_text.astype(jnp.float32), micro.reshape(batch, -1)], axis=-1)
    cond = CondEmbed(cfg, self.dtype, self.cpu_matmul, name="cond_embed")(cond.astype(self.dtype))

    x = ConvEmbed(cfg, self.dtype, self.cpu_matmul, name="embed")(ids)
    x = UVitBlock(cfg, cfg.downsample, False, self.dtype, self.cpu_matmul,
                  name="down_block")(x, cond, context)
    grid = x.shape
    tokens = x.reshape(batch, grid[1] * grid[2], grid[3])
    tokens = dense(cfg.hidden_size, "project_to_hidden")(rms("project_to_hidden_norm")(tokens))
    for i in range(cfg.num_hidden_layers):
      layer = TransformerLayer(cfg, self.dtype, self.cpu_matmul, name=f"transformer_layers_{i}")
      tokens = layer(tokens, cond, context)
    tokens = dense(cfg.block_out_channels, "project_from_hidden")(
        rms("project_from_hidden_norm")(tokens))
    x = UVitBlock(cfg, False, cfg.upsample, self.dtype, self.cpu_matmul, name="up_block")(
        tokens.reshape(grid), cond, context)
    logits = MlmHead(cfg, self.dtype, self.cpu_matmul, name="mlm_layer")(x)
    return logits.astype(jnp.float32)

  def _check_inputs(self, ids, text_hidden, pooled_text, micro_conds) -> None:
    cfg = self.config
    if ids.ndim != 3 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"expected integer ids (B, h, w), got {ids.dtype} {ids.shape}")
    batch = ids.shape[0]
    expected = {"text_hidden": (text_hidden, (batch, None, cfg.encoder_hidden_size)),
                "pooled_text": (pooled_text, (batch, cfg.cond_embed_dim)),
                "micro_conds": (micro_conds, (batch, cfg.num_micro_conds))}
    for name, (array, shape) in expected.items():
      if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        raise ValueError(f"expected {name} of shape {shape} (None: any), got {array.shape}")
    if cfg.downsample and (ids.shape[1] % 2 or ids.shape[2] % 2):
      raise ValueError(f"a downsampling UVit2D needs an even token grid, got {ids.shape[1:]}")


class ConvEmbed(nn.Module):
  """Token embedding, RMSNorm, 1x1 conv to the block width."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.in_channels, dtype=self.dtype, name="embeddings")(ids)
    x = RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name="layer_norm")(x)
    return _conv1x1(cfg.block_out_channels, cfg.use_bias, self.dtype, "conv",
                    self.cpu_matmul)(x)


class CondEmbed(nn.Module):
  """[pooled text, micro-cond features] -> linear, silu, linear (diffusers TimestepEmbedding)."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dense = _config_dense(self)
    return dense(cfg.hidden_size, "linear_2")(nn.silu(dense(cfg.hidden_size, "linear_1")(x)))


class MlmHead(nn.Module):
  """1x1 conv, RMSNorm, 1x1 conv to the codebook logits."""
  config: UVit2DConfig
  dtype: Any = jnp.float32
  cpu_matmul: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    x = _conv1x1(cfg.in_channels, cfg.use_bias, self.dtype, "conv1", self.cpu_matmul)(x)
    x = RMSNorm(cfg.layer_norm_eps, cfg.ln_elementwise_affine, self.dtype, name="layer_norm")(x)
    return _conv1x1(cfg.codebook_size, cfg.use_bias, self.dtype, "conv2",
                    self.cpu_matmul)(x)


# ----------------------------------------------------------------------------
# Hub weights.
# ----------------------------------------------------------------------------

def hf_name(path: tuple[str, ...]) -> tuple[str, str] | None:
  """Flax param path -> (diffusers UVit2DModel tensor name, conversion kind)."""
  *modules, leaf = path
  parts = []
  for module in modules:
    listed = _LIST_MODULES.match(module)
    parts.append(f"{listed[1]}.{listed[2]}" if listed else _RENAMED_MODULES.get(module, module))
  if leaf == "kernel":
    if modules and modules[-1] in _CONV_MODULES:
      kind = "conv_transpose" if "upsample" in modules else "conv"
    else:
      kind = "linear"
    return ".".join(parts + ["weight"]), kind
  if leaf in ("scale", "embedding"):
    return ".".join(parts + ["weight"]), "same"
  if leaf in ("bias", "gamma", "beta"):
    return ".".join(parts + [leaf]), "same"
  return None


def _dummy_inputs(config: UVit2DConfig):
  side = 2
  return (jnp.zeros((1, side, side), jnp.int32), jnp.zeros((1, 1, config.encoder_hidden_size)),
          jnp.zeros((1, config.cond_embed_dim)), jnp.zeros((1, config.num_micro_conds)))


def abstract_params(config: UVit2DConfig) -> Any:
  """The param tree of `UVit2D(config)` as shapes (nothing is allocated)."""
  model = UVit2D(config)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *_dummy_inputs(config)))["params"]


def expected_hf_shapes(config: UVit2DConfig) -> dict[str, tuple[int, ...]]:
  """{diffusers tensor name: shape} of a UVit2DModel with this config."""
  return hf_shapes(abstract_params(config), hf_name)


def convert_transformer(tensors: dict[str, np.ndarray], config: UVit2DConfig,
                        source: str = "transformer checkpoint") -> Any:
  """diffusers UVit2DModel tensors -> Flax params of `UVit2D(config)`; every missing,
  unexpected or mis-shaped tensor is listed in one WeightsError."""
  return convert_state(tensors, abstract_params(config), hf_name, _NOTHING_IGNORED, source)
