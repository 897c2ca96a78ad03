"""Stable Diffusion's denoising UNet (diffusers `UNet2DConditionModel`) in Flax Linen, NHWC.

Covers the SD-1.x / SD-2.x configurations (plain: 4 input channels; inpainting: 9, the noisy
latents, the mask and the masked image's latents): a 3x3 `conv_in`; a sinusoidal timestep
embedding (`flip_sin_to_cos`, `freq_shift`) through a Linear-SiLU-Linear MLP; down blocks of
ResNet blocks (each adding the projected time embedding) optionally followed by Transformer2D
blocks, with a stride-2 conv after every level but the last; a mid block (ResNet,
Transformer2D, ResNet); up blocks that concatenate the matching skip activations, with
nearest-neighbour 2x upsampling + conv after every level but the last; GroupNorm, SiLU and a
3x3 `conv_out`. A Transformer2D block is GroupNorm (eps 1e-6), `proj_in` (a 1x1 conv, or a
linear layer with `use_linear_projection`), BasicTransformerBlocks (LayerNorm + self-attention,
LayerNorm + cross-attention on the text states, LayerNorm + GEGLU feed-forward, each residual)
and `proj_out`, plus the block's input.

Flax module names are the diffusers state-dict names with `.N` written `_N`
(`down_blocks_1/attentions_0/transformer_blocks_0/attn2/to_out_0` is
`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0`), so `unet_param_name` maps
them mechanically; `convert_unet` loads a hub `unet/diffusion_pytorch_model.safetensors`
strictly, and `unet_config_from_json` reads `unet/config.json`, rejecting every setting this
implementation does not reproduce.

`dtype` is the compute dtype (float32 or bfloat16; params stay float32; norm statistics and
the attention softmax are float32; the output is float32). Attention goes through
`jax.nn.dot_product_attention`; `attention_backend="cudnn"` selects cuDNN's fused kernel on
GPUs (bfloat16 / float16 only). With `upcast_attention` a low-precision model computes
attention in float32 (and so with XLA). On GPUs, float32 matmuls and convolutions at JAX's
default precision may use TF32: wrap calls in `jax.default_matmul_precision("highest")` for
float32 parity.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders.hf_files import WeightsError
from lr_jax.encoders.hf_weights import convert_state, hf_shapes

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID_BLOCK = "UNetMidBlock2DCrossAttn"
TRANSFORMER_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm
LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms
_LIST_MODULE = re.compile(
    r"^(down_blocks|up_blocks|resnets|attentions|transformer_blocks|downsamplers|upsamplers|"
    r"to_out|net)_(\d+)$")
_CONV_MODULES = ("conv_in", "conv_out", "conv1", "conv2", "conv_shortcut", "conv")
_NOTHING_IGNORED = re.compile(r"(?!)")


def _per_block(value: Any, count: int, name: str, problems: list[str]) -> tuple:
  """An int (the same for every block) or a sequence of `count` values, as a tuple."""
  if isinstance(value, (list, tuple)):
    if len(value) != count:
      problems.append(f"{name} has {len(value)} entries, expected one per block ({count})")
    return tuple(value)
  return (value,) * count


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Sizes of a UNet2DConditionModel; defaults are SD-1.5's (text-to-image, 4 channels).

  Per-block settings (layers_per_block, num_attention_heads, transformer_layers_per_block)
  may be given as one int; they are stored as one value per down block (the up blocks use
  them reversed, the mid block the last one). num_attention_heads is the number of heads
  (diffusers' config calls it attention_head_dim); each head is channels / heads wide.
  sample_size (the latent side trained at) is informational.
  """
  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
  up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
  layers_per_block: int | tuple[int, ...] = 2
  num_attention_heads: int | tuple[int, ...] = 8
  transformer_layers_per_block: int | tuple[int, ...] = 1
  cross_attention_dim: int = 768
  use_linear_projection: bool = False
  upcast_attention: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  sample_size: int | tuple[int, int] | None = 64

  def __post_init__(self):
    problems = self._normalise()
    if problems:
      raise ValueError("bad UNet config: " + "; ".join(problems))

  def _normalise(self) -> list[str]:
    problems = []
    count = len(self.block_out_channels)
    set_ = lambda name, value: object.__setattr__(self, name, value)
    for name in ("block_out_channels", "down_block_types", "up_block_types"):
      set_(name, tuple(getattr(self, name)))
    if isinstance(self.sample_size, list):  # some configs give [height, width]
      set_("sample_size", tuple(self.sample_size))
    for name in ("layers_per_block", "num_attention_heads", "transformer_layers_per_block"):
      set_(name, _per_block(getattr(self, name), count, name, problems))
    if not count:
      return problems + ["block_out_channels is empty"]
    for name, kinds in (("down_block_types", (CROSS_DOWN, PLAIN_DOWN)),
                        ("up_block_types", (CROSS_UP, PLAIN_UP))):
      types = getattr(self, name)
      if len(types) != count:
        problems.append(f"{name} has {len(types)} entries, expected {count} (one per block)")
      unknown = sorted({t for t in types if t not in kinds})
      if unknown:
        problems.append(f"{name} {unknown} are not supported (only {' and '.join(kinds)})")
    numbers = {"in_channels": [self.in_channels], "out_channels": [self.out_channels],
               "block_out_channels": self.block_out_channels,
               "layers_per_block": self.layers_per_block,
               "num_attention_heads": self.num_attention_heads,
               "transformer_layers_per_block": self.transformer_layers_per_block,
               "cross_attention_dim": [self.cross_attention_dim],
               "norm_num_groups": [self.norm_num_groups]}
    for name, values in numbers.items():
      if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        problems.append(f"{name} must be positive integers, got {list(values)}")
    if problems:
      return problems
    if isinstance(self.downsample_padding, bool) or not isinstance(self.downsample_padding, int) \
        or self.downsample_padding < 0:
      problems.append(f"downsample_padding must be an int >= 0, got {self.downsample_padding!r}")
    uneven = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if uneven:
      problems.append(f"block_out_channels {uneven} are not multiples of norm_num_groups="
                      f"{self.norm_num_groups}")
    attending = {count - 1} | {i for i, t in enumerate(self.down_block_types) if t == CROSS_DOWN}
    attending |= {count - 1 - i for i, t in enumerate(self.up_block_types) if t == CROSS_UP}
    bad = sorted({(self.block_out_channels[i], self.num_attention_heads[i]) for i in attending
                  if self.block_out_channels[i] % self.num_attention_heads[i]})
    if bad:
      problems.append(f"channels not divisible by num_attention_heads: {bad} (channels, heads)")
    return problems

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  @classmethod
  def sd15_inpainting(cls) -> "UNetConfig":
    """stable-diffusion-v1-5/stable-diffusion-inpainting's unet."""
    return cls(in_channels=9)

  @classmethod
  def sd2_inpainting(cls) -> "UNetConfig":
    """stabilityai/stable-diffusion-2-inpainting's unet."""
    return cls(in_channels=9, num_attention_heads=(5, 10, 20, 20), cross_attention_dim=1024,
               use_linear_projection=True)

  @classmethod
  def tiny(cls, in_channels: int = 9, out_channels: int = 4, num_attention_heads: Any = 2,
           use_linear_projection: bool = False, upcast_attention: bool = False,
           cross_attention_dim: int = 16) -> "UNetConfig":
    """A small random-weight config for tests and notebooks: two levels of 16 and 32
    channels (a CrossAttnDownBlock2D and a DownBlock2D), one ResNet per level, 4 groups; a
    forward on 8x8 latents compiles and runs in seconds on a CPU (about 0.2 M params)."""
    return cls(in_channels=in_channels, out_channels=out_channels, block_out_channels=(16, 32),
               down_block_types=(CROSS_DOWN, PLAIN_DOWN), up_block_types=(PLAIN_UP, CROSS_UP),
               layers_per_block=1, num_attention_heads=num_attention_heads,
               cross_attention_dim=cross_attention_dim,
               use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
               norm_num_groups=4, sample_size=8)


# ----------------------------------------------------------------------------
# Reading diffusers' config.json.
# ----------------------------------------------------------------------------

# Keys read into UNetConfig, with UNet2DConditionModel's defaults.
_READ_DEFAULTS = dict(
    sample_size=None, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=UNetConfig.down_block_types, up_block_types=UNetConfig.up_block_types,
    block_out_channels=UNetConfig.block_out_channels, layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280,
    transformer_layers_per_block=1, attention_head_dim=8, num_attention_heads=None,
    use_linear_projection=False, upcast_attention=False)
# Keys whose only supported value is diffusers' default (None counts as False for flags).
_FIXED = dict(
    center_input_sample=False, mid_block_type=MID_BLOCK, only_cross_attention=False,
    dual_cross_attention=False, act_fn="silu", class_embed_type=None, addition_embed_type=None,
    addition_time_embed_dim=None, num_class_embeds=None, encoder_hid_dim=None,
    encoder_hid_dim_type=None, resnet_time_scale_shift="default",
    time_embedding_type="positional", time_embedding_dim=None, time_embedding_act_fn=None,
    timestep_post_act=None, time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3,
    projection_class_embeddings_input_dim=None, attention_type="default",
    class_embeddings_concat=False, mid_block_only_cross_attention=None,
    reverse_transformer_layers_per_block=None)
# Keys that change nothing in this model: dropout (inference), and settings diffusers passes
# only to block types other than the five supported here.
_NO_EFFECT = ("dropout", "addition_embed_type_num_heads", "resnet_skip_time_act",
              "resnet_out_scale_factor", "cross_attention_norm")


def _fixed_value_ok(key: str, value: Any) -> bool:
  if key == "act_fn":
    return value in ("silu", "swish")  # the same activation in diffusers
  if key in ("only_cross_attention", "mid_block_only_cross_attention"):
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(v in (False, None) for v in values)
  return value == _FIXED[key]


def unet_config_from_json(data: dict[str, Any]) -> UNetConfig:
  """UNetConfig from a diffusers `unet/config.json` dict.

  Missing keys take UNet2DConditionModel's defaults; keys starting with "_" are metadata.
  Every setting this implementation does not reproduce (other block types, class or added
  embeddings, dual cross-attention, ...) and every unknown key is listed in one WeightsError.
  """
  problems = []
  if data.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
    problems.append(f"_class_name is {data['_class_name']!r}, not 'UNet2DConditionModel'")
  for key, value in data.items():
    if key.startswith("_") or key in _READ_DEFAULTS or key in _NO_EFFECT:
      continue
    if key not in _FIXED:
      problems.append(f"unknown key {key}={value!r}")
    elif not _fixed_value_ok(key, value):
      problems.append(f"{key}={value!r} is not supported (only {_FIXED[key]!r})")
  cfg = {**_READ_DEFAULTS, **{k: v for k, v in data.items() if k in _READ_DEFAULTS}}
  if not isinstance(cfg["block_out_channels"], (list, tuple)):
    problems.append(f"block_out_channels={cfg['block_out_channels']!r} is not a list")
    cfg["block_out_channels"] = ()
  # diffusers' naming quirk: without num_attention_heads, attention_head_dim is the head count.
  heads = cfg["num_attention_heads"] or cfg["attention_head_dim"]
  cross = cfg["cross_attention_dim"]
  if isinstance(cross, (list, tuple)):
    if len(set(cross)) != 1:
      problems.append(f"cross_attention_dim {list(cross)} differs between blocks (one "
                      f"encoder_hidden_states width is supported)")
    cross = cross[0] if cross else None
  layers = cfg["transformer_layers_per_block"]
  if isinstance(layers, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in layers):
    problems.append(f"transformer_layers_per_block {layers} gives per-layer counts "
                    f"(asymmetric UNets are not supported)")
  config = None
  try:  # also when other problems were found: the config's own checks list theirs
    config = UNetConfig(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        block_out_channels=tuple(cfg["block_out_channels"]),
        down_block_types=tuple(cfg["down_block_types"]),
        up_block_types=tuple(cfg["up_block_types"]),
        layers_per_block=cfg["layers_per_block"], num_attention_heads=heads,
        transformer_layers_per_block=layers, cross_attention_dim=cross,
        use_linear_projection=bool(cfg["use_linear_projection"]),
        upcast_attention=bool(cfg["upcast_attention"]),
        flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]), freq_shift=float(cfg["freq_shift"]),
        norm_num_groups=cfg["norm_num_groups"], norm_eps=float(cfg["norm_eps"]),
        downsample_padding=cfg["downsample_padding"],
        mid_block_scale_factor=float(cfg["mid_block_scale_factor"]),
        sample_size=cfg["sample_size"])
  except (TypeError, ValueError) as err:
    problems.append(str(err))
  if config is not None and not problems:
    return config
  raise WeightsError(f"unsupported UNet config.json ({len(problems)} problems):\n  "
                     + "\n  ".join(problems))


# ----------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------

def _conv(features: int, kernel: int, name: str, dtype: Any, stride: int = 1,
          padding: Any = None) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)) if padding is None else padding,
                 dtype=dtype, name=name)


def _group_norm(groups: int, eps: float, name: str, dtype: Any) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


def _dense(features: int, name: str, dtype: Any, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name)


def timestep_features(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool,
                      freq_shift: float, max_period: float = 10000.0) -> jax.Array:
  """(B,) timesteps -> (B, dim) float32 sinusoids, frequencies
  max_period^(-i / (dim/2 - freq_shift)); [sin, cos], or [cos, sin] when flipped."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  parts = [jnp.cos(angles), jnp.sin(angles)] if flip_sin_to_cos else [jnp.sin(angles),
                                                                      jnp.cos(angles)]
  return jnp.pad(jnp.concatenate(parts, axis=-1), ((0, 0), (0, dim % 2)))


def _nearest_indices(size_in: int, size_out: int) -> np.ndarray:
  """Source rows of PyTorch's 'nearest' resize: floor(i * (in / out)) in float32."""
  if size_out == 2 * size_in:
    return np.arange(size_out) // 2
  scale = np.float32(size_in) / np.float32(size_out)
  index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(index, size_in - 1)


def nearest_resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """NHWC nearest-neighbour resize to `size` (H, W), as torch's F.interpolate(mode='nearest')."""
  height, width = x.shape[1:3]
  if tuple(size) == (2 * height, 2 * width):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  x = jnp.take(x, _nearest_indices(height, size[0]), axis=1)
  return jnp.take(x, _nearest_indices(width, size[1]), axis=2)


class ResnetBlock(nn.Module):
  """GN-SiLU-conv3x3, + Linear(SiLU(time embedding)), GN-SiLU-conv3x3, plus the input (1x1
  conv when the width changes), divided by `output_scale`."""
  features: int
  groups: int
  eps: float
  output_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    h = nn.silu(_group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
    h = _conv(self.features, 3, "conv1", self.dtype)(h)
    h = h + _dense(self.features, "time_emb_proj", self.dtype)(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.groups, self.eps, "norm2", self.dtype)(h))
    h = _conv(self.features, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, "conv_shortcut", self.dtype)(x)
    return (x + h) / self.output_scale


class Attention(nn.Module):
  """Multi-head attention of x on `context` (x itself when None): bias-free q/k/v
  projections, scaled dot-product attention, an output projection with bias."""
  num_heads: int
  upcast: bool = False
  dtype: Any = jnp.float32
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    context = x if context is None else context
    width = x.shape[-1]
    head_dim = width // self.num_heads
    split = lambda y: y.reshape(y.shape[:-1] + (self.num_heads, head_dim))
    q = split(_dense(width, "to_q", self.dtype, use_bias=False)(x))
    k = split(_dense(width, "to_k", self.dtype, use_bias=False)(context))
    v = split(_dense(width, "to_v", self.dtype, use_bias=False)(context))
    backend = self.backend
    if self.upcast and jnp.dtype(self.dtype) != jnp.float32:
      q, k, v = (y.astype(jnp.float32) for y in (q, k, v))
      backend = "xla"
    out = jax.nn.dot_product_attention(q, k, v, scale=head_dim ** -0.5, implementation=backend)
    out = out.astype(self.dtype).reshape(x.shape[:-1] + (width,))
    return _dense(width, "to_out_0", self.dtype)(out)


class Geglu(nn.Module):
  """Linear to 2 x `features`; the first half times GELU (erf) of the second."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    value, gate = jnp.split(_dense(2 * self.features, "proj", self.dtype)(x), 2, axis=-1)
    return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """GEGLU to 4x the width, linear back (diffusers' `net.0` and `net.2`)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    return _dense(width, "net_2", self.dtype)(Geglu(4 * width, self.dtype, name="net_0")(x))


class BasicTransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention, cross-attention on the text states, GEGLU feed-forward."""
  num_heads: int
  upcast: bool = False
  dtype: Any = jnp.float32
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(LAYER_NORM_EPS, use_fast_variance=False, dtype=self.dtype,
                                     name=name)
    attention = lambda name: Attention(self.num_heads, self.upcast, self.dtype, self.backend,
                                       name=name)
    x = x + attention("attn1")(norm("norm1")(x))
    x = x + attention("attn2")(norm("norm2")(x), context)
    return x + FeedForward(self.dtype, name="ff")(norm("norm3")(x))


class Transformer2D(nn.Module):
  """GroupNorm, proj_in, `num_layers` BasicTransformerBlocks on the H*W tokens, proj_out,
  plus the input. Projections are 1x1 convs, or linear layers with `linear_projection`."""
  num_heads: int
  num_layers: int
  groups: int
  linear_projection: bool
  upcast: bool = False
  dtype: Any = jnp.float32
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    project = ((lambda name: _dense(channels, name, self.dtype)) if self.linear_projection
               else (lambda name: _conv(channels, 1, name, self.dtype)))
    h = _group_norm(self.groups, TRANSFORMER_NORM_EPS, "norm", self.dtype)(x)
    h = project("proj_in")(h).reshape(batch, height * width, channels)
    for i in range(self.num_layers):
      h = BasicTransformerBlock(self.num_heads, self.upcast, self.dtype, self.backend,
                                name=f"transformer_blocks_{i}")(h, context)
    h = project("proj_out")(h.reshape(batch, height, width, channels))
    return h + x


class Downsample(nn.Module):
  """Stride-2 3x3 conv; padding p on every side, or (p = 0) one row/column at bottom/right."""
  features: int
  padding: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = self.padding
    padding = ((0, 1), (0, 1)) if pad == 0 else ((pad, pad), (pad, pad))
    return _conv(self.features, 3, "conv", self.dtype, stride=2, padding=padding)(x)


class Upsample(nn.Module):
  """Nearest-neighbour resize to `size` (2x unless the skip's size differs), 3x3 conv."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, size: Sequence[int]) -> jax.Array:
    return _conv(self.features, 3, "conv", self.dtype)(nearest_resize(x, size))


def _transformer(config: UNetConfig, level: int, dtype: Any, backend: str | None,
                 name: str) -> Transformer2D:
  return Transformer2D(config.num_attention_heads[level],
                       config.transformer_layers_per_block[level], config.norm_num_groups,
                       config.use_linear_projection, config.upcast_attention, dtype, backend,
                       name=name)


class DownBlock(nn.Module):
  """Level `level` of the encoder: ResNet blocks (each followed by a Transformer2D in a
  CrossAttnDownBlock2D), then a Downsample unless it is the last level. Returns the output
  and the activations the up path concatenates."""
  config: UNetConfig
  level: int
  dtype: Any = jnp.float32
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array):
    cfg, level = self.config, self.level
    features = cfg.block_out_channels[level]
    skips = []
    for i in range(cfg.layers_per_block[level]):
      x = ResnetBlock(features, cfg.norm_num_groups, cfg.norm_eps, dtype=self.dtype,
                      name=f"resnets_{i}")(x, temb)
      if cfg.down_block_types[level] == CROSS_DOWN:
        x = _transformer(cfg, level, self.dtype, self.backend, f"attentions_{i}")(x, context)
      skips.append(x)
    if level < len(cfg.block_out_channels) - 1:
      x = Downsample(features, cfg.downsample_padding, self.dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x, skips


class MidBlock(nn.Module):
  """ResNet, Transformer2D, ResNet at the deepest level (ResNet outputs divided by
  mid_block_scale_factor)."""
  config: UNetConfig
  dtype: Any = jnp.float32
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    resnet = lambda name: ResnetBlock(cfg.block_out_channels[-1], cfg.norm_num_groups,
                                      cfg.norm_eps, cfg.mid_block_scale_factor, self.dtype,
                                      name=name)
    x = resnet("resnets_0")(x, temb)
    x = _transformer(cfg, -1, self.dtype, self.backend, "attentions_0")(x, context)
    return resnet("resnets_1")(x, temb)


class UpBlock(nn.Module):
  """Up block `index` (level L-1-index): layers_per_block + 1 ResNet blocks, each on the
  concatenation of the running activations and one skip (last skip first), each followed by a
  Transformer2D in a CrossAttnUpBlock2D; then an Upsample to `upsample_size` unless last."""
  config: UNetConfig
  index: int
  dtype: Any = jnp.float32
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array,
               context: jax.Array, upsample_size: Sequence[int] | None) -> jax.Array:
    cfg = self.config
    level = len(cfg.block_out_channels) - 1 - self.index
    features = cfg.block_out_channels[level]
    for i, skip in enumerate(reversed(skips)):
      x = jnp.concatenate([x, skip], axis=-1)
      x = ResnetBlock(features, cfg.norm_num_groups, cfg.norm_eps, dtype=self.dtype,
                      name=f"resnets_{i}")(x, temb)
      if cfg.up_block_types[self.index] == CROSS_UP:
        x = _transformer(cfg, level, self.dtype, self.backend, f"attentions_{i}")(x, context)
    if upsample_size is not None:
      x = Upsample(features, self.dtype, name="upsamplers_0")(x, upsample_size)
    return x


class TimestepEmbedding(nn.Module):
  """Linear, SiLU, Linear (diffusers' `time_embedding.linear_1` / `linear_2`)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.silu(_dense(self.features, "linear_1", self.dtype)(x))
    return _dense(self.features, "linear_2", self.dtype)(x)


class UNet2DConditionModel(nn.Module):
  """The noise-prediction UNet.

  Args of __call__:
    sample: (B, H, W, in_channels) latents (inpainting: noisy latents, mask, masked-image
      latents, concatenated on the channel axis). Any H, W (sizes that halving does not divide
      are upsampled back to the skips' sizes, as diffusers does).
    timesteps: (B,) or (1,) or a scalar, int or float.
    encoder_hidden_states: (B, L, cross_attention_dim) text encoder states.

  Returns:
    (B, H, W, out_channels) float32.
  """
  config: UNetConfig
  dtype: Any = jnp.float32
  attention_backend: str | None = None  # jax.nn.dot_product_attention's `implementation`

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: Any, encoder_hidden_states: jax.Array
               ) -> jax.Array:
    cfg, dtype, backend = self.config, self.dtype, self.attention_backend
    self._check_inputs(sample, encoder_hidden_states)
    batch = sample.shape[0]
    steps = jnp.broadcast_to(jnp.reshape(jnp.asarray(timesteps), (-1,)), (batch,))
    features = timestep_features(steps, cfg.block_out_channels[0], cfg.flip_sin_to_cos,
                                 cfg.freq_shift)
    temb = TimestepEmbedding(cfg.time_embed_dim, dtype, name="time_embedding")(
        features.astype(dtype))
    context = encoder_hidden_states.astype(dtype)

    x = _conv(cfg.block_out_channels[0], 3, "conv_in", dtype)(sample.astype(dtype))
    skips = [x]
    for level in range(len(cfg.block_out_channels)):
      x, block_skips = DownBlock(cfg, level, dtype, backend, name=f"down_blocks_{level}")(
          x, temb, context)
      skips += block_skips
    x = MidBlock(cfg, dtype, backend, name="mid_block")(x, temb, context)
    for index in range(len(cfg.up_block_types)):
      count = cfg.layers_per_block[-1 - index] + 1
      block_skips, skips = skips[-count:], skips[:-count]
      size = skips[-1].shape[1:3] if skips else None
      x = UpBlock(cfg, index, dtype, backend, name=f"up_blocks_{index}")(
          x, block_skips, temb, context, size)
    x = nn.silu(_group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out", dtype)(x))
    return _conv(cfg.out_channels, 3, "conv_out", dtype)(x).astype(jnp.float32)

  def _check_inputs(self, sample: jax.Array, encoder_hidden_states: jax.Array) -> None:
    cfg = self.config
    if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
      raise ValueError(f"sample must be (B, H, W, {cfg.in_channels}) (NHWC), got {sample.shape}")
    expected = (sample.shape[0], None, cfg.cross_attention_dim)
    if encoder_hidden_states.ndim != 3 or any(
        e is not None and s != e for s, e in zip(encoder_hidden_states.shape, expected)):
      raise ValueError(f"encoder_hidden_states must be (B={sample.shape[0]}, L, "
                       f"{cfg.cross_attention_dim}), got {encoder_hidden_states.shape}")


# ----------------------------------------------------------------------------
# Hub weights.
# ----------------------------------------------------------------------------

def unet_param_name(path: tuple[str, ...]) -> tuple[str, str]:
  """Flax param path -> (diffusers state-dict name, layout kind for `convert_state`).

  Kernels of the 3x3 / shortcut convs are "conv"; every other kernel is "linear", which also
  fits the 1x1-conv projections of Transformer2D (reversing (1, 1, in, out) gives torch's
  (out, in, 1, 1)).
  """
  *modules, leaf = path
  parts = []
  for module in modules:
    listed = _LIST_MODULE.match(module)
    parts.append(f"{listed[1]}.{listed[2]}" if listed else module)
  prefix = ".".join(parts)
  if leaf == "kernel":
    return f"{prefix}.weight", "conv" if modules[-1] in _CONV_MODULES else "linear"
  if leaf == "scale":
    return f"{prefix}.weight", "same"
  return f"{prefix}.{leaf}", "same"


def abstract_params(config: UNetConfig) -> Any:
  """The param tree of `UNet2DConditionModel(config)` as shapes (nothing is computed)."""
  side = 2 ** (len(config.block_out_channels) - 1)
  sample = jnp.zeros((1, side, side, config.in_channels), jnp.float32)
  context = jnp.zeros((1, 1, config.cross_attention_dim), jnp.float32)
  model = UNet2DConditionModel(config)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample, 0, context))["params"]


def expected_hf_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
  """{diffusers tensor name: shape} of a UNet2DConditionModel with this config."""
  return hf_shapes(abstract_params(config), unet_param_name)


def convert_unet(tensors: dict[str, np.ndarray], config: UNetConfig,
                 source: str = "unet checkpoint") -> Any:
  """diffusers UNet2DConditionModel tensors -> float32 Flax params of
  `UNet2DConditionModel(config)`; every missing, unexpected or mis-shaped tensor is listed in
  one WeightsError."""
  return convert_state(tensors, abstract_params(config), unet_param_name, _NOTHING_IGNORED,
                       source)
