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

# Box geometry, keys, feathering and blending are generator-neutral (re-exported here for
# maskgit's own callers).
from lr_common.box_editing import (DTYPES, BoxError, blend, box_keys, box_token_mask,  # pylint: disable=unused-import
                                   cast_params, feather_sigma, feathered_mask, grown_boxes,
                                   per_box_keys, pixel_boxes_to_tokens, validate_boxes)
from lr_common import cpu_matmul
from lr_common.errors import UserError
from maskgit import decoding
from maskgit.configs import MaskGITConfig
from maskgit.transformer import Transformer
from maskgit.vqgan import VQGAN

Params = Any


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
    cpu_matmul: with dtype "bfloat16" on the CPU, who runs the transformer's
      products: "auto" (oneDNN where `python -m lr_common.cpu_matmul.build` was run
      and the CPU has bf16 instructions, else XLA), "onednn" (an error where it
      cannot), "xla".
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
  cpu_matmul: str = "auto"

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
    if self.cpu_matmul not in cpu_matmul.MODES:
      raise ValueError(f"cpu_matmul must be one of {cpu_matmul.MODES}, "
                       f"got {self.cpu_matmul!r}.")


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


def _is_concrete(x) -> bool:
  """False for values traced by jit/vmap (they cannot be validated on the host)."""
  return not isinstance(x, jax.core.Tracer)


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
                            attention_implementation=edit.attention,
                            cpu_matmul=edit.cpu_matmul)
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
  keys = per_box_keys(rngs, batch, num_boxes).reshape(-1)

  ids = encode_ids(tokenizer_params, images, config=config)
  token_mask = box_token_mask(boxes, side, edit.grow_tokens)
  inputs = masked_inputs(ids, token_mask, labels, config=config)
  tokens = decode_tokens(transformer_params, inputs.reshape(batch * num_boxes, -1), keys,
                         config=config, edit=edit)
  raw = decode_pixels(tokenizer_params, tokens, config=config, edit=edit)
  raw = raw.reshape(batch, num_boxes, size, size, 3)
  composite, mask = blend(raw, images, token_mask,
                          feather_sigma(size, edit.feather, edit.feather_radius))
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
