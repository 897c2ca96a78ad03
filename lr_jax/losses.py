"""CLIP preprocessing, augmentation and the three editing losses (paper Eq. 3-6).

Everything here works on arrays (pixels, embeddings, tokens), so it does not
depend on a particular CLIP implementation, and is differentiable and jittable.

Conventions:
  * Images are float (..., H, W, 3) RGB in [0, 1] (never 0..255).
  * Embeddings are (..., P); tokens are (..., 1 + N, D) with [CLS] first.
  * Loss functions are batched over leading dims and broadcast, and return the
    unreduced per-item values; `total_loss` averages them.
"""
import functools
from typing import Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224
_EPS = 1e-8


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


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = _EPS) -> jnp.ndarray:
  """x / ||x||, with a finite value and gradient at x = 0.

  Computed in (at least) float32 and cast back: eps^2 = 1e-16 underflows in
  float16, which would turn a zero vector into NaN.
  """
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  unit = wide * jax.lax.rsqrt(jnp.sum(wide * wide, axis=axis, keepdims=True) + eps * eps)
  return unit.astype(x.dtype)


def cosine_similarity(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Cosine similarity over the last axis, broadcasting leading dims."""
  return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def guidance_loss(edit_embeds: jnp.ndarray, text_embeds: jnp.ndarray) -> jnp.ndarray:
  """L_Clip = 1 - cos(E_v(X_o), E_t(T)), per item (Eq. 4)."""
  return 1.0 - cosine_similarity(edit_embeds, text_embeds)


def directional_loss(edit_embeds: jnp.ndarray, src_embeds: jnp.ndarray,
                     text_embeds: jnp.ndarray, src_text_embeds: jnp.ndarray
                     ) -> jnp.ndarray:
  """L_Dir = 1 - cos(E_v(X_o) - E_v(X), E_t(T) - E_t(T_src)), per item (Eq. 6).

  Embeddings are L2-normalized before the differences are taken (as in CLIP
  directional losses, StyleGAN-NADA), so the direction does not depend on the
  raw embedding norms.
  """
  image_dir = l2_normalize(edit_embeds) - l2_normalize(src_embeds)
  text_dir = l2_normalize(text_embeds) - l2_normalize(src_text_embeds)
  return 1.0 - cosine_similarity(image_dir, text_dir)


def self_similarity(tokens: jnp.ndarray) -> jnp.ndarray:
  """Cosine self-similarity matrix (..., N, D) -> (..., N, N)."""
  unit = l2_normalize(tokens)
  return jnp.einsum("...nd,...md->...nm", unit, unit)


def structure_loss(edit_tokens: jnp.ndarray, src_tokens: jnp.ndarray,
                   include_cls: bool = False) -> jnp.ndarray:
  """L_Str: mean squared difference of token self-similarity matrices (Eq. 5).

  Uses the last-layer tokens (..., 1 + N, D) of the CLIP vision tower. By
  default the [CLS] token (index 0) is dropped, so only the N patch tokens'
  spatial layout is compared (the self-similarity descriptor of the paper's
  refs [29, 50]). The paper writes an L2 norm; we use the mean of the squared
  entries so the value does not grow with N. Invariant to any per-token
  rescaling of either input.

  Returns:
    Per-item loss with the leading (broadcast) dims.
  """
  if edit_tokens.shape[-1] != src_tokens.shape[-1] or \
      edit_tokens.shape[-2] != src_tokens.shape[-2]:
    raise ValueError(f"token shapes differ: {edit_tokens.shape} vs {src_tokens.shape}")
  if not include_cls:
    edit_tokens, src_tokens = edit_tokens[..., 1:, :], src_tokens[..., 1:, :]
  diff = self_similarity(edit_tokens) - self_similarity(src_tokens)
  return jnp.mean(diff * diff, axis=(-2, -1))


class LossWeights(NamedTuple):
  """Weights of Eq. 3 (the paper uses 1, 1, 1)."""
  clip: float = 1.0
  dir: float = 1.0
  structure: float = 1.0


def total_loss(edit_embeds: jnp.ndarray, text_embeds: jnp.ndarray,
               src_embeds: Optional[jnp.ndarray] = None,
               src_text_embeds: Optional[jnp.ndarray] = None,
               edit_tokens: Optional[jnp.ndarray] = None,
               src_tokens: Optional[jnp.ndarray] = None,
               weights: LossWeights = LossWeights()
               ) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
  """L = w_c L_Clip + w_d L_Dir + w_s L_Str, each averaged over its items.

  A term whose weight is 0 is skipped (its inputs may then be None); a term
  with a positive weight needs its inputs. Embeddings may carry extra leading
  dims (e.g. augmented views (V, B, P) against (B, P) sources).

  Returns:
    (scalar loss, {"clip", "dir", "structure", "total"} scalars); skipped
    terms are reported as 0.
  """
  terms = {}
  zero = jnp.zeros((), edit_embeds.dtype)
  terms["clip"] = (jnp.mean(guidance_loss(edit_embeds, text_embeds))
                   if weights.clip else zero)
  if weights.dir:
    if src_embeds is None or src_text_embeds is None:
      raise ValueError("directional loss needs src_embeds and src_text_embeds "
                       "(or set weights.dir = 0)")
    terms["dir"] = jnp.mean(directional_loss(edit_embeds, src_embeds,
                                             text_embeds, src_text_embeds))
  else:
    terms["dir"] = zero
  if weights.structure:
    if edit_tokens is None or src_tokens is None:
      raise ValueError("structure loss needs edit_tokens and src_tokens "
                       "(or set weights.structure = 0)")
    terms["structure"] = jnp.mean(structure_loss(edit_tokens, src_tokens))
  else:
    terms["structure"] = zero
  total = (weights.clip * terms["clip"] + weights.dir * terms["dir"]
           + weights.structure * terms["structure"])
  terms["total"] = total
  return total, terms
