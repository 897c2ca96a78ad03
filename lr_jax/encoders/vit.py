"""A pre-LN Vision Transformer (Flax Linen) for CLIP and DINO image towers.

One implementation serves:
  * the CLIP image tower (HF `CLIPVisionModel`): patch conv without bias,
    `pre_layrnorm`, quick_gelu, post-LN applied to the [CLS] token only;
  * DINO ViTs as published in HF `ViTModel` form: patch conv with bias,
    exact (erf) gelu, a final LayerNorm over every token.

The last block computes its attention with an explicit softmax so that the
[CLS] -> patch attention probabilities can be returned.

Position embeddings are resampled when the input patch grid differs from the
native one, with a PyTorch-compatible bicubic kernel (see `bicubic_matrix`):
`"hf"` mode resizes to the target grid (HF `interpolate_pos_encoding=True`),
`"dino"` mode uses the facebookresearch/dino scale factors with the +0.1
offset.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("quick_gelu", "gelu")
FINAL_NORMS = ("tokens", "cls")
POS_INTERPOLATIONS = ("hf", "dino")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Sizes and flavour of a ViT image tower.

  final_norm: "tokens" applies the last LayerNorm to every token (HF ViTModel,
    part of `last_hidden_state`); "cls" applies it to the [CLS] token only
    (CLIP's post_layernorm, `tokens` then are the raw encoder output).
  """
  image_size: int
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  activation: str
  pre_layernorm: bool
  final_norm: str
  patch_bias: bool
  num_channels: int = 3
  pos_interpolation: str = "hf"

  def __post_init__(self):
    check_sizes(self.activation, self.hidden_size, self.num_heads)
    if self.final_norm not in FINAL_NORMS:
      raise ValueError(f"final_norm must be one of {FINAL_NORMS}, got {self.final_norm!r}")
    if self.pos_interpolation not in POS_INTERPOLATIONS:
      raise ValueError(
          f"pos_interpolation must be one of {POS_INTERPOLATIONS}, got {self.pos_interpolation!r}")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

  @property
  def native_grid(self) -> int:
    return self.image_size // self.patch_size


def check_sizes(activation: str, hidden_size: int, num_heads: int) -> None:
  """Validates what every transformer config here shares."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
  if hidden_size % num_heads:
    raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")


def activation_fn(name: str):
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  raise ValueError(f"unknown activation {name!r}")


# ----------------------------------------------------------------------------
# PyTorch-compatible bicubic resampling (a = -0.75, align_corners=False).
# ----------------------------------------------------------------------------

def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
  """(out_size, in_size) matrix of PyTorch's 1-D bicubic resampling.

  `scale` is the source step per output pixel; PyTorch uses in/out when a
  target size is given and 1/scale_factor when a scale factor is given.
  Taps outside the input are clamped to the border, as PyTorch does.
  """
  step = np.float32(in_size / out_size if scale is None else scale)
  out_idx = np.arange(out_size, dtype=np.float32)
  src = step * (out_idx + np.float32(0.5)) - np.float32(0.5)
  base = np.floor(src)
  weights = _cubic_weights((src - base).astype(np.float32)).astype(np.float64)
  matrix = np.zeros((out_size, in_size), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), idx), weights[:, tap])
  return matrix.astype(np.float32)


def resize_grid_bicubic(grid: jax.Array, out_hw: tuple[int, int],
                        scale_hw: tuple[float, float] | None = None) -> jax.Array:
  """Bicubic resize of a (H, W, C) array like torch `F.interpolate(mode="bicubic")`."""
  in_h, in_w = grid.shape[0], grid.shape[1]
  rows = bicubic_matrix(in_h, out_hw[0], None if scale_hw is None else scale_hw[0])
  cols = bicubic_matrix(in_w, out_hw[1], None if scale_hw is None else scale_hw[1])
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum("oh,hwc->owc", rows, grid, precision=hp)
  return jnp.einsum("pw,owc->opc", cols, out, precision=hp)


def interpolate_pos_embed(pos_embed: jax.Array, grid_hw: tuple[int, int],
                          mode: str = "hf") -> jax.Array:
  """Resamples (1 + n*n, D) position embeddings to a (h, w) patch grid.

  mode "hf": target size (h, w) (HF ViT/CLIP `interpolate_pos_encoding`).
  mode "dino": scale factors ((h + 0.1) / n, (w + 0.1) / n), as in
    facebookresearch/dino `VisionTransformer.interpolate_pos_encoding`.
  """
  num_pos = pos_embed.shape[0] - 1
  n = int(math.isqrt(num_pos))
  if n * n != num_pos:
    raise ValueError(f"position embeddings of {num_pos} patches are not a square grid")
  h, w = grid_hw
  if (h, w) == (n, n):
    return pos_embed
  patch = pos_embed[1:].reshape(n, n, -1)
  if mode == "hf":
    patch = resize_grid_bicubic(patch, (h, w))
  elif mode == "dino":
    factors = ((h + 0.1) / n, (w + 0.1) / n)
    out_hw = (int(math.floor(n * factors[0])), int(math.floor(n * factors[1])))
    if out_hw != (h, w):
      raise ValueError(f"dino interpolation produced grid {out_hw}, expected {(h, w)}")
    patch = resize_grid_bicubic(patch, out_hw, (1.0 / factors[0], 1.0 / factors[1]))
  else:
    raise ValueError(f"unknown interpolation mode {mode!r}")
  return jnp.concatenate([pos_embed[:1], patch.reshape(h * w, -1)], axis=0)


# ----------------------------------------------------------------------------
# Transformer blocks (shared with the CLIP text tower).
# ----------------------------------------------------------------------------

class SelfAttention(nn.Module):
  """Multi-head self-attention with an explicit softmax; returns the probabilities."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
    split = lambda y: y.reshape(y.shape[:-1] + (self.num_heads, head_dim))
    q, k, v = (split(dense(n)(x)) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim ** -0.5)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(x.shape[:-1] + (width,))
    return dense("out")(out), probs


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  activation: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None):
    norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                                     use_fast_variance=False, name=name)
    attn_out, probs = SelfAttention(self.num_heads, self.dtype, name="attn")(norm("norm1")(x), mask)
    x = x + attn_out
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(norm("norm2")(x))
    y = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(activation_fn(self.activation)(y))
    return x + y, probs


class ViT(nn.Module):
  """ViT image tower.

  Input: pixels (B, H, W, C), already normalized, H and W multiples of the
  patch size. Output dict:
    tokens: (B, 1 + h*w, D) last hidden state, as HF `last_hidden_state`.
    pooled: (B, D) CLIP: post-LN [CLS]; DINO: tokens[:, 0].
    cls_attention: (B, heads, h*w) last-layer softmax attention [CLS] -> patches.
    grid: (h, w) python ints.
  """
  config: ViTConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> dict[str, Any]:
    cfg = self.config
    if pixels.ndim != 4 or pixels.shape[-1] != cfg.num_channels:
      raise ValueError(f"expected pixels (B, H, W, {cfg.num_channels}), got shape {pixels.shape}")
    height, width = pixels.shape[1], pixels.shape[2]
    if height % cfg.patch_size or width % cfg.patch_size:
      raise ValueError(f"image size {height}x{width} is not a multiple of patch {cfg.patch_size}")
    grid = (height // cfg.patch_size, width // cfg.patch_size)
    patches = nn.Conv(cfg.hidden_size, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                      padding="VALID", use_bias=cfg.patch_bias, dtype=self.dtype,
                      name="patch_embed")(pixels.astype(self.dtype))
    batch = patches.shape[0]
    patches = patches.reshape(batch, grid[0] * grid[1], cfg.hidden_size)
    cls_token = self.param("cls_token", nn.initializers.normal(0.02), (cfg.hidden_size,))
    pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                           (1 + cfg.native_grid ** 2, cfg.hidden_size))
    pos_embed = interpolate_pos_embed(pos_embed, grid, cfg.pos_interpolation)
    cls = jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, cfg.hidden_size))
    x = jnp.concatenate([cls, patches], axis=1) + pos_embed.astype(self.dtype)
    norm = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype,
                                     use_fast_variance=False, name=name)
    if cfg.pre_layernorm:
      x = norm("pre_norm")(x)
    probs = None
    for i in range(cfg.num_layers):
      x, probs = EncoderBlock(cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, cfg.activation,
                              self.dtype, name=f"block_{i}")(x)
    if cfg.final_norm == "tokens":
      x = norm("final_norm")(x)
      pooled = x[:, 0]
    else:
      pooled = norm("final_norm")(x[:, 0])
    return {"tokens": x, "pooled": pooled, "cls_attention": probs[:, :, 0, 1:], "grid": grid}
