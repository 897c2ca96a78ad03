"""CLIP (Flax Linen): ViT image tower, causal text transformer, projections.

Matches HF `transformers.CLIPModel` (v5) numerics:
  * image embedding = visual_projection(post_layernorm([CLS])), no bias;
  * text embedding = text_projection(final_layer_norm(h)[eos position]), where
    the eos position is the argmax of the token ids when the config's
    `eos_token_id == 2` (the legacy value of the OpenAI hub configs) and the
    first occurrence of `eos_token_id` otherwise;
  * text attention is causal and also masks padded keys (attention_mask == 0).
Embeddings are returned unnormalized.

Below the model: `clip_preprocess` (resize + centre crop + normalization of [0, 1]
images, as CLIP's transforms) and `augment_views` (random resized crops for the losses).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders.vit import EncoderBlock, ViT, ViTConfig, check_sizes

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
  """CLIP text tower; returns (last_hidden_state (B,T,D) after final LN, pooled (B,D)).

  With `output_hidden_states` it also returns HF's `hidden_states` tuple: the
  embeddings, then each block's output (before the final LN), num_layers + 1 arrays.
  """
  config: TextConfig
  dtype: Any = jnp.float32
  output_hidden_states: bool = False

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
    hidden_states = [x]
    for i in range(cfg.num_layers):
      x, _ = EncoderBlock(cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, cfg.activation,
                          self.dtype, name=f"block_{i}")(x, mask)
      hidden_states.append(x)
    x = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False,
                     name="final_norm")(x)
    pooled = jnp.take_along_axis(x, eos_positions(input_ids, cfg.eos_token_id)[:, None, None], axis=1)
    if self.output_hidden_states:
      return x, pooled[:, 0], tuple(hidden_states)
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


# ---------------------------------------------------------------- pixels for CLIP
# Preprocessing and augmentation of [0, 1] images for the image tower; jittable and
# differentiable, with the sizes and offsets of CLIP's own (torchvision) transforms.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


class ImageRangeError(ValueError):
  """Raised when images are not float RGB in [0, 1]."""


def _check_images(images: jnp.ndarray, check_range: bool) -> None:
  """Validates shape/dtype always, and the value range when it is concrete."""
  if images.ndim < 3 or images.shape[-1] != 3:
    raise ImageRangeError(
        f"expected images (..., H, W, 3), got shape {tuple(images.shape)}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ImageRangeError(
        f"expected float images in [0, 1], got dtype {images.dtype}; "
        "convert uint8 images with images / 255.0")
  if check_range and not isinstance(images, jax.core.Tracer):
    lo, hi = float(jnp.min(images)), float(jnp.max(images))
    if lo < -0.05 or hi > 1.05:
      raise ImageRangeError(
          f"images must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]"
          + ("; they look like 0..255 values: divide by 255" if hi > 2 else ""))


def normalize_clip(images: jnp.ndarray) -> jnp.ndarray:
  """Applies the CLIP per-channel mean/std normalization to [0, 1] pixels."""
  mean = jnp.asarray(CLIP_MEAN, images.dtype)
  std = jnp.asarray(CLIP_STD, images.dtype)
  return (images - mean) / std


def _resize_shape(height: int, width: int, size: int) -> Tuple[int, int]:
  """Shape after resizing the shorter side to `size` (torchvision's rule)."""
  if height <= width:
    return size, max(size, int(width * size / height))
  return max(size, int(height * size / width)), size


def clip_preprocess(images: jnp.ndarray, size: int = CLIP_SIZE,
                    check_range: bool = True) -> jnp.ndarray:
  """Resizes and normalizes [0, 1] images for the CLIP vision tower.

  The shorter side is resized to `size` (bicubic, antialiased when shrinking),
  then the centre `size` x `size` square is cropped, with the same sizes and
  offsets as CLIP's own (torchvision) preprocessing; the values match PIL's
  bicubic resize of float images. For square inputs this is a plain resize.

  Args:
    images: float (B, H, W, 3) (or any leading dims) RGB in [0, 1].
    size: output side length.
    check_range: check the [0, 1] range when the input is concrete (not
      traced); a 0..255 input raises ImageRangeError.

  Returns:
    (B, size, size, 3) CLIP-normalized pixels; differentiable in `images`.
  """
  _check_images(images, check_range)
  height, width = images.shape[-3], images.shape[-2]
  new_h, new_w = _resize_shape(height, width, size)
  if (new_h, new_w) != (height, width):
    out_shape = images.shape[:-3] + (new_h, new_w, 3)
    images = jax.image.resize(images, out_shape, "bicubic", antialias=True)
  top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
  images = images[..., top:top + size, left:left + size, :]
  return normalize_clip(images)


@functools.partial(jax.jit, static_argnums=(3,))
def _crop_one(image: jnp.ndarray, box: jnp.ndarray, flip: jnp.ndarray,
              size: int) -> jnp.ndarray:
  """Crops box (top, left, height, width) in pixels and resizes to size^2."""
  top, left, crop_h, crop_w = box[0], box[1], box[2], box[3]
  scale = jnp.stack([size / crop_h, size / crop_w])
  translation = jnp.stack([-top * scale[0], -left * scale[1]])
  out = jax.image.scale_and_translate(
      image, (size, size, 3), (0, 1), scale, translation, "cubic",
      antialias=True)
  return jnp.where(flip, out[:, ::-1, :], out)


def sample_crop_boxes(rng: jax.Array, count: int, height: int, width: int,
                      crop_scale: Tuple[float, float] = (0.8, 1.0),
                      ratio: Tuple[float, float] = (3 / 4, 4 / 3)
                      ) -> jnp.ndarray:
  """Samples `count` random-resized-crop boxes (top, left, h, w) in pixels.

  Area fraction is uniform in `crop_scale`, aspect ratio (w/h) log-uniform in
  `ratio`; sides are clipped to the image and the box lies inside it.
  """
  k_area, k_ratio, k_y, k_x = jax.random.split(rng, 4)
  area = jax.random.uniform(k_area, (count,), minval=crop_scale[0],
                            maxval=crop_scale[1]) * height * width
  log_r = jax.random.uniform(k_ratio, (count,), minval=np.log(ratio[0]),
                             maxval=np.log(ratio[1]))
  aspect = jnp.exp(log_r)
  crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
  crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
  top = jax.random.uniform(k_y, (count,)) * (height - crop_h)
  left = jax.random.uniform(k_x, (count,)) * (width - crop_w)
  return jnp.stack([top, left, crop_h, crop_w], axis=-1)


def augment_views(images: jnp.ndarray, rng: jax.Array, num_views: int,
                  crop_scale: Tuple[float, float] = (0.8, 1.0),
                  size: int = CLIP_SIZE, flip: bool = True,
                  normalize: bool = True) -> jnp.ndarray:
  """Random resized crops (+ horizontal flips) of a batch, for CLIP losses.

  Jittable with fixed shapes and differentiable in `images` (bicubic
  resampling via `jax.image.scale_and_translate`, antialiased). The same key
  gives the same views.

  Args:
    images: float (B, H, W, 3) RGB in [0, 1].
    rng: a jax.random key.
    num_views: V, views per image.
    crop_scale: range of the crop area as a fraction of the image area.
    size: output side length.
    flip: flip each view horizontally with probability 1/2.
    normalize: apply the CLIP mean/std normalization (ready for CLIP).

  Returns:
    (V, B, size, size, 3); reshape to (V * B, ...) to feed CLIP in one batch.
  """
  _check_images(images, check_range=False)
  if images.ndim != 4:
    raise ValueError(f"expected images (B, H, W, 3), got {images.shape}")
  if num_views < 1:
    raise ValueError(f"num_views must be >= 1, got {num_views}")
  if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
    raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
  return _augment_views_jit(images, rng, num_views, tuple(crop_scale), size,
                            flip, normalize)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _augment_views_jit(images, rng, num_views, crop_scale, size, flip, normalize):
  batch, height, width = images.shape[:3]
  k_box, k_flip = jax.random.split(rng)
  boxes = sample_crop_boxes(k_box, num_views * batch, height, width,
                            crop_scale).reshape(num_views, batch, 4)
  flips = jax.random.bernoulli(k_flip, 0.5, (num_views, batch))
  if not flip:
    flips = jnp.zeros_like(flips)
  per_image = jax.vmap(lambda img, box, f: _crop_one(img, box, f, size))
  views = jax.vmap(lambda b, f: per_image(images, b, f))(boxes, flips)
  return normalize_clip(views) if normalize else views
