"""Convolution blocks that diffusers' VQModel (aMUSEd) and AutoencoderKL (Stable
Diffusion) share: ResNet blocks, down/upsamplers, stages, the output head (NHWC).

Both generators import these; neither imports the other.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_EPS = 1e-6  # every GroupNorm of diffusers' VQ and KL autoencoders


def conv(features: int, kernel: int, name: str, dtype: Any, stride: int = 1,
         padding: Any = None) -> nn.Conv:
  """A square conv, zero-padded to keep the size (unless `padding` is given)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding if padding is not None else ((pad, pad), (pad, pad)),
                 dtype=dtype, name=name)


def group_norm(groups: int, name: str, dtype: Any) -> nn.GroupNorm:
  """GroupNorm with eps 1e-6 and the two-pass variance (as PyTorch computes it)."""
  return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPS, use_fast_variance=False,
                      dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus the input (1x1 conv when the width changes)."""
  features: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(group_norm(self.groups, "norm1", self.dtype)(x))
    h = conv(self.features, 3, "conv1", self.dtype)(h)
    h = nn.silu(group_norm(self.groups, "norm2", self.dtype)(h))
    h = conv(self.features, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, "conv_shortcut", self.dtype)(x)
    return x + h


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one zero row/column at the bottom/right."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(self.features, 3, "conv", self.dtype, stride=2,
                 padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(self.features, 3, "conv", self.dtype)(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Stage(nn.Module):
  """`num_layers` ResNet blocks, then an optional down- or upsampler (diffusers' block)."""
  features: int
  num_layers: int
  groups: int
  resample: str | None = None  # "down", "up" or None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = ResnetBlock(self.features, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.resample == "down":
      x = Downsample(self.features, self.dtype, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample(self.features, self.dtype, name="upsamplers_0")(x)
    return x


def output_head(x: jax.Array, features: int, groups: int, dtype: Any) -> jax.Array:
  """GN -> SiLU -> conv3x3 to `features` channels (called inside a compact module)."""
  x = nn.silu(group_norm(groups, "conv_norm_out", dtype)(x))
  return conv(features, 3, "conv_out", dtype)(x)


def size_problems(config: Any, positive: Sequence[str]) -> list[str]:
  """What is wrong with the sizes of a VQ or KL autoencoder config: no blocks, a size in
  `positive` below 1, block widths that the GroupNorm groups do not divide."""
  problems = []
  if not config.block_out_channels:
    problems.append("block_out_channels is empty")
  for name in positive:
    if getattr(config, name) < 1:
      problems.append(f"{name} must be positive, got {getattr(config, name)}")
  groups = config.norm_num_groups
  uneven = [c for c in config.block_out_channels if groups > 0 and c % groups]
  if uneven:
    problems.append(f"block_out_channels {uneven} are not multiples of norm_num_groups={groups}")
  return problems
