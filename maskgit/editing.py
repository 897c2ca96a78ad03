"""Batched MaskGIT box editing: K boxes per image, all decoded in one call.

Each image is tokenized once. For every box the tokens inside the box (grown by
`grow_tokens` on each side, as the official demo does) are masked, the class
token of the target label is put in front, and all B*K sequences are completed
together by `decoding.decode` with one key per box. The decoded tokens are turned
back into pixels and blended with the input through the token mask, resized to
the image and Gaussian-feathered: `out * m + input * (1 - m)`.

Boxes are (top, left, height, width) in token units. They may differ in size
within a batch (they become masks, not shapes) and may cross the border (they
are clamped). Everything is a pure JAX function of its inputs, so `edit_images`
can be used inside another jit or under vmap.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lr_common.errors import UserError
from maskgit import decoding
from maskgit.configs import MaskGITConfig
from maskgit.transformer import Transformer
from maskgit.vqgan import VQGAN

Params = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class EditConfig:
  """How a box is edited (defaults: the official MaskGIT editing demo).

  Attributes:
    start_iter, num_iter: decoding runs iterations start_iter..num_iter-1.
    choice_temperature: Gumbel noise scale of the re-masking confidence.
    grow_tokens: tokens added on each side of a box before masking.
    feather: blur the pixel mask (else hard token-block edges).
    feather_radius: Gaussian sigma in pixels; None -> image_size // 16 - 1.
    dtype: "float32" (exact official numerics) or "bfloat16" (transformer and
      pixel decoder in bfloat16; encoding and sampling stay float32).
    schedule: mask schedule name (see decoding.mask_ratio).
    attention: `jax.nn.dot_product_attention` implementation (None: XLA,
      "cudnn": fused kernel on recent NVIDIA GPUs, bfloat16 only).
  """
  start_iter: int = 2
  num_iter: int = 12
  choice_temperature: float = 4.5
  grow_tokens: int = 1
  feather: bool = True
  feather_radius: float | None = None
  dtype: str = "float32"
  schedule: str = "cosine"
  attention: str | None = None
  unroll: int | bool = 1

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}.")
    if self.num_iter < 1 or not 0 <= self.start_iter < self.num_iter:
      raise ValueError(
          f"Need 0 <= start_iter < num_iter, got {self.start_iter}, {self.num_iter}.")
    if self.grow_tokens < 0:
      raise ValueError(f"grow_tokens must be >= 0, got {self.grow_tokens}.")
    if self.feather_radius is not None and self.feather_radius < 0:
      raise ValueError(f"feather_radius must be >= 0, got {self.feather_radius}.")
    decoding.check_schedule(self.schedule)


class BoxError(UserError, ValueError):
  """A box is empty, inverted, malformed or entirely outside the token grid."""


class LabelError(UserError, ValueError):
  """A class label is outside the model's [0, num_class) range."""


def validate_labels(labels, num_class: int) -> None:
  """Host-side check of concrete labels; raises LabelError (a ValueError).

  Without it a label >= num_class would silently select the mask token's (or an
  out-of-range) embedding row, and a negative one an image-code row.
  """
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
      raise LabelError(f"Class labels must be integers, got {labels.tolist()}.")
  bad = labels[(labels < 0) | (labels >= num_class)]
  if bad.size:
    raise LabelError(f"Class label(s) {sorted(set(bad.tolist()))} outside [0, {num_class}) "
                     f"for this model.")


def pixel_boxes_to_tokens(boxes_px, image_size: int, tokens_per_side: int) -> jax.Array:
  """Converts (top, left, height, width) pixel boxes to token boxes, rounding outward."""
  boxes_px = jnp.asarray(boxes_px, jnp.float32)
  scale = image_size / tokens_per_side
  top, left, height, width = jnp.moveaxis(boxes_px, -1, 0)
  t0 = jnp.floor(top / scale)
  l0 = jnp.floor(left / scale)
  t1 = jnp.ceil((top + height) / scale)
  l1 = jnp.ceil((left + width) / scale)
  return jnp.stack([t0, l0, t1 - t0, l1 - l0], axis=-1).astype(jnp.int32)


def validate_boxes(boxes, tokens_per_side: int) -> None:
  """Host-side check of concrete boxes; raises BoxError (a ValueError)."""
  boxes = np.asarray(boxes)
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise BoxError(f"Boxes must have a last axis of 4 (top, left, height, width), "
                   f"got shape {boxes.shape}.")
  if not np.all(np.isfinite(boxes)):
    raise BoxError("Boxes contain NaN or infinite values.")
  flat = boxes.reshape(-1, 4)
  for index, (top, left, height, width) in enumerate(flat.tolist()):
    position = tuple(int(i) for i in np.unravel_index(index, boxes.shape[:-1]))
    where = f"box {position} {flat[index].tolist()}"
    if height <= 0 or width <= 0:
      raise BoxError(f"{where} is empty or inverted (height and width must be > 0).")
    if (top >= tokens_per_side or left >= tokens_per_side or top + height <= 0
        or left + width <= 0):
      raise BoxError(f"{where} lies entirely outside the {tokens_per_side}x"
                     f"{tokens_per_side} token grid.")


def grown_boxes(boxes: jax.Array, tokens_per_side: int, grow: int = 0) -> jax.Array:
  """(..., 4) boxes grown by `grow` tokens on each side and clamped to the grid."""
  boxes = jnp.asarray(boxes)
  if isinstance(grow, int):   # past the grid is the whole grid; and no int32 overflow
    grow = min(grow, tokens_per_side)
  top, left, height, width = (boxes[..., i] for i in range(4))
  clamp = lambda x: jnp.clip(x, 0, tokens_per_side)
  t0, l0 = clamp(top - grow), clamp(left - grow)
  t1, l1 = clamp(top + height + grow), clamp(left + width + grow)
  return jnp.stack([t0, l0, t1 - t0, l1 - l0], axis=-1)


def box_token_mask(boxes: jax.Array, tokens_per_side: int, grow: int = 0) -> jax.Array:
  """Boolean (..., h, w) masks of the boxes grown by `grow`, clamped to the grid."""
  boxes = jnp.asarray(boxes)
  top, left, height, width = (
      grown_boxes(boxes, tokens_per_side, grow)[..., i, None] for i in range(4))
  grid = jnp.arange(tokens_per_side)
  rows = (grid >= top) & (grid < top + height)
  cols = (grid >= left) & (grid < left + width)
  # Empty or inverted boxes give empty masks even when grown.
  valid = (boxes[..., 2:3] > 0) & (boxes[..., 3:4] > 0)
  return rows[..., :, None] & cols[..., None, :] & valid[..., None]


def _feather_matrix(image_size: int, tokens_per_side: int, sigma: float) -> np.ndarray:
  """(image_size, tokens) matrix: nearest upsampling then Gaussian blur, edge-clamped."""
  scale = image_size // tokens_per_side
  upsample = np.zeros((image_size, tokens_per_side), np.float64)
  upsample[np.arange(image_size), np.arange(image_size) // scale] = 1.
  if sigma <= 0:
    return upsample.astype(np.float32)
  radius = int(np.ceil(3. * sigma))
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * (offsets / sigma)**2)
  weights /= weights.sum()
  blur = np.zeros((image_size, image_size), np.float64)
  for offset, weight in zip(offsets, weights):
    source = np.clip(np.arange(image_size) + offset, 0, image_size - 1)
    np.add.at(blur, (np.arange(image_size), source), weight)
  return (blur @ upsample).astype(np.float32)


def feather_sigma(image_size: int, feather: bool = True,
                  radius: float | None = None) -> float:
  """The Gaussian sigma of the blending mask in pixels: 0 without feathering, else
  `radius`, by default image_size // 16 - 1 (the official demo's)."""
  if not feather:
    return 0.
  return float(image_size // 16 - 1 if radius is None else radius)


def feathered_mask(token_mask: jax.Array, image_size: int, sigma: float) -> jax.Array:
  """(..., h, w) token masks -> (..., H, W, 1) float32 blending masks in [0, 1]: nearest
  upsampling to image_size, then a Gaussian blur of `sigma` pixels (edge-clamped)."""
  side = token_mask.shape[-1]
  matrix = jnp.asarray(_feather_matrix(image_size, side, float(sigma)))
  mask = jnp.einsum("ih,...hw,jw->...ij", matrix, token_mask.astype(jnp.float32),
                    matrix, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(mask, 0., 1.)[..., None]


def pixel_mask(token_mask: jax.Array, image_size: int, edit: EditConfig) -> jax.Array:
  """(..., h, w) token masks -> (..., H, W, 1) float32 blending masks in [0, 1]."""
  return feathered_mask(token_mask, image_size,
                        feather_sigma(image_size, edit.feather, edit.feather_radius))


def box_keys(rng: jax.Array, batch: int, num_boxes: int) -> jax.Array:
  """(batch, num_boxes) keys: fold_in(fold_in(rng, image), box)."""
  images = jnp.arange(batch)
  boxes = jnp.arange(num_boxes)
  per_box = lambda b: jax.vmap(lambda k: jax.random.fold_in(
      jax.random.fold_in(rng, b), k))(boxes)
  return jax.vmap(per_box)(images)


def cast_params(params: Params, dtype) -> Params:
  """Casts floating matrices/kernels (ndim >= 2) to `dtype`; keeps vectors."""
  if dtype == jnp.float32:
    return params
  cast = lambda x: (x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                    and x.ndim >= 2 else x)
  return jax.tree_util.tree_map(cast, params)


def _is_concrete(x) -> bool:
  """False for values traced by jit/vmap (they cannot be validated on the host)."""
  return not isinstance(x, jax.core.Tracer)


def _per_box_keys(rngs, batch: int, num_boxes: int) -> jax.Array:
  keys = decoding._as_typed_keys(jnp.asarray(rngs))  # pylint: disable=protected-access
  if keys.ndim == 0:
    return box_keys(keys, batch, num_boxes)
  if keys.shape != (batch, num_boxes):
    raise ValueError(f"rngs must be one key or ({batch}, {num_boxes}) keys, "
                     f"got key shape {keys.shape}.")
  return keys


# The steps of `edit_images`, public so that each can be timed on its own.

def encode_ids(tokenizer_params: Params, images: jax.Array, *,
               config: MaskGITConfig) -> jax.Array:
  """(B, H, W, 3) images in [0, 1] -> (B, h, w) token ids (float32 tokenizer)."""
  tokenizer = VQGAN(config.tokenizer, dtype=jnp.float32)
  return tokenizer.apply({"params": tokenizer_params}, images.astype(jnp.float32),
                         method=VQGAN.encode_to_indices)


def masked_inputs(ids: jax.Array, token_mask: jax.Array, labels: jax.Array, *,
                  config: MaskGITConfig) -> jax.Array:
  """(B, h, w) ids, (B, K, h, w) masks, (B, K) labels -> (B, K, 1 + h*w) inputs:
  the class token, then the ids with the masked tokens set to the mask id."""
  batch, num_boxes = token_mask.shape[:2]
  masked = jnp.where(token_mask, config.mask_token_id, ids[:, None])
  class_tokens = config.class_token(labels)[..., None]
  return jnp.concatenate([class_tokens, masked.reshape(batch, num_boxes, -1)], axis=-1)


def decode_tokens(transformer_params: Params, inputs: jax.Array, keys: jax.Array, *,
                  config: MaskGITConfig, edit: EditConfig) -> jax.Array:
  """(N, L) inputs, N keys -> (N, L - 1) image tokens by parallel decoding."""
  dtype = DTYPES[edit.dtype]
  transformer = Transformer(config.transformer, dtype=dtype,
                            attention_implementation=edit.attention)
  tr_params = cast_params(transformer_params, dtype)   # no-op if cast beforehand
  logits_fn = lambda seq: transformer.apply({"params": tr_params}, seq, deterministic=True)
  decoded = decoding.decode(
      inputs, keys, logits_fn, num_iter=edit.num_iter, start_iter=edit.start_iter,
      choice_temperature=edit.choice_temperature, codebook_size=config.codebook_size,
      mask_token_id=config.mask_token_id, schedule=edit.schedule, unroll=edit.unroll)
  return decoded[:, 1:]


def decode_pixels(tokenizer_params: Params, tokens: jax.Array, *,
                  config: MaskGITConfig, edit: EditConfig) -> jax.Array:
  """(N, h*w) tokens -> (N, H, W, 3) float32 pixels, not clipped.

  The decoder runs in `edit.dtype`; its layers cast the float32 weights."""
  side = config.tokens_per_side
  pixel_decoder = VQGAN(config.tokenizer, dtype=DTYPES[edit.dtype])
  raw = pixel_decoder.apply({"params": tokenizer_params}, tokens.reshape(-1, side, side),
                            method=VQGAN.decode_from_indices)
  return raw.astype(jnp.float32)


def edit_images(tokenizer_params: Params,
                transformer_params: Params,
                images: jax.Array,
                boxes: jax.Array,
                labels: jax.Array,
                rngs: jax.Array,
                *,
                config: MaskGITConfig,
                edit: EditConfig = EditConfig()) -> dict[str, jax.Array]:
  """Edits K boxes in each of B images in one batched decode.

  Args:
    tokenizer_params, transformer_params: the `params` trees of the models.
    images: (B, H, W, 3) float in [0, 1], H = W = config.image_size.
    boxes: (B, K, 4) (top, left, height, width) in token units.
    labels: (B,) or (B, K) class ids in [0, num_class) (checked when concrete).
    rngs: one key (split per box with `box_keys`) or (B, K) keys.
    config: model sizes; edit: editing settings.

  Returns:
    dict with images (B,K,H,W,3) composited, raw (B,K,H,W,3) decoder output,
    tokens (B,K,h*w) int32, token_mask (B,K,h,w) bool, pixel_mask (B,K,H,W,1).
  """
  side, size = config.tokens_per_side, config.image_size
  if images.ndim != 4 or images.shape[1:] != (size, size, 3):
    raise ValueError(f"images must be (B, {size}, {size}, 3), got {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be floats in [0, 1], got dtype {images.dtype}.")
  if boxes.ndim != 3 or boxes.shape[0] != images.shape[0] or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be (B, K, 4) with B={images.shape[0]}, got {boxes.shape}.")
  batch, num_boxes = boxes.shape[:2]
  if _is_concrete(boxes):
    validate_boxes(boxes, side)
  if _is_concrete(labels):
    validate_labels(labels, config.transformer.num_class)
  labels = jnp.asarray(labels, jnp.int32)
  if labels.shape not in ((batch,), (batch, num_boxes)):
    raise ValueError(f"labels must be ({batch},) or ({batch}, {num_boxes}), got {labels.shape}.")
  labels = jnp.broadcast_to(labels.reshape(batch, -1), (batch, num_boxes))
  keys = _per_box_keys(rngs, batch, num_boxes).reshape(-1)

  ids = encode_ids(tokenizer_params, images, config=config)
  token_mask = box_token_mask(boxes, side, edit.grow_tokens)
  inputs = masked_inputs(ids, token_mask, labels, config=config)
  tokens = decode_tokens(transformer_params, inputs.reshape(batch * num_boxes, -1), keys,
                         config=config, edit=edit)
  raw = decode_pixels(tokenizer_params, tokens, config=config, edit=edit)
  raw = raw.reshape(batch, num_boxes, size, size, 3)
  mask = pixel_mask(token_mask, size, edit)
  composite = raw * mask + images[:, None].astype(jnp.float32) * (1. - mask)
  return dict(images=composite, raw=raw,
              tokens=tokens.reshape(batch, num_boxes, side * side),
              token_mask=token_mask, pixel_mask=mask)


@functools.lru_cache(maxsize=16)
def make_editor(config: MaskGITConfig, edit: EditConfig = EditConfig()) -> Callable:
  """Jitted `edit_images(tok_params, tr_params, images, boxes, labels, rngs)`.

  Concrete boxes and labels are validated on the host before the jitted call.
  Editors are cached per (config, edit), so compiled versions are shared. For
  repeated bfloat16 calls, pass `cast_params(transformer_params, jnp.bfloat16)`
  (same results): the cast then happens once instead of inside every call.
  """
  jitted = jax.jit(functools.partial(edit_images, config=config, edit=edit))

  def editor(tokenizer_params, transformer_params, images, boxes, labels, rngs):
    if _is_concrete(boxes):
      validate_boxes(boxes, config.tokens_per_side)
    if _is_concrete(labels):
      validate_labels(labels, config.transformer.num_class)
    return jitted(tokenizer_params, transformer_params, images, boxes, labels, rngs)

  return editor
