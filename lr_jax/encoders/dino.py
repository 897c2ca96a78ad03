"""DINO ViT features: patch tokens and last-layer [CLS] attention on the patch grid."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lr_jax.encoders.vit import ViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_features(model: ViT, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """images (B, H, W, 3) RGB in [0, 1] -> (patch_features (B, h, w, D), cls_attention (B, h, w)).

  ImageNet mean/std normalization is applied here. `cls_attention` is the
  last-layer softmax attention from [CLS] to each patch, averaged over heads;
  both outputs are laid out (row, col). H and W must be multiples of the patch
  size; other sizes than the native one use interpolated position embeddings.
  Wrap in `jax.jit(lambda p, x: dino_features(model, p, x))` for speed.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images (B, H, W, 3), got shape {images.shape}")
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  pixels = (images.astype(jnp.float32) - mean) / std
  out = model.apply({"params": params} if "params" not in params else params, pixels)
  h, w = out["grid"]
  batch = images.shape[0]
  patches = out["tokens"][:, 1:].reshape(batch, h, w, -1)
  attention = out["cls_attention"].mean(axis=1).reshape(batch, h, w)
  return patches, attention
