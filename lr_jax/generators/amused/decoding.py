"""aMUSEd inpainting by parallel decoding (diffusers' AmusedScheduler in its inpaint loop).

The tokens marked in `mask` start as the mask token. Each step runs the
transformer (with classifier-free guidance on a doubled batch, unconditional rows
first, combined as `uncond + scale * (cond - uncond)`), samples every masked token
from the softmax of the guided logits (by inverse CDF, one uniform per token),
and re-masks the least confident samples
(log-probability plus Gumbel noise times the step's temperature) so that
`floor(L * f0 * schedule((step + 1) / T))` stay masked, f0 being the fraction of
the L grid tokens masked at the start. The last step keeps every sample. Tokens
outside the mask never change.

Two deliberate differences from diffusers:
  * f0 is per image (diffusers uses the batch's mean), so an image decodes the
    same alone and in a batch; at batch 1 both agree.
  * known tokens get confidence +inf (diffusers: log(float32 max) ~ 88.7 plus
    noise, which a temperature above ~4 can push below the cut-off; and an image
    with nothing masked loses one known token per step there, none here).
torch's sampling stream cannot be reproduced: noise comes from one `jax.random`
key per image, or is given directly to `inpaint_with_noise` (tests).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lr_common.errors import SettingsError

MASK_TOKEN_ID = 8255   # amused-256/512: 8192 codes, vocabulary 8256, the last id masks
SCHEDULES = ("linear", "cosine")

LogitsFn = Callable[[jax.Array], jax.Array]
# noise_fn(step, (B, L)) -> (sampling uniforms, re-masking uniforms), both (B, L) in [0, 1).
NoiseFn = Callable[[jax.Array, tuple[int, int]], tuple[jax.Array, jax.Array]]


def _number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How masked tokens are regenerated (defaults: diffusers' AmusedInpaintPipeline).

  Attributes:
    num_steps: scheduler steps T.
    guidance_scale: classifier-free guidance; > 1 doubles the batch.
    negative_prompt: the text of the unconditional rows (the editor encodes it;
      "" as the pipeline when none is given).
    temperature: (start, end) of the linear re-masking temperature ramp; a single
      number t means (t, 0.01), as diffusers.
    schedule: "linear" (the inpaint pipeline's) or "cosine" (the text-to-image one).
    strength: runs the last int(T * strength) steps.
    aesthetic_score, crop_coords: micro-conditioning values.
    size: micro-conditioning (width, height); None: the image's own size.
    unroll: loop iterations per XLA loop body (True: all); same numbers.
  """
  SECTION: ClassVar[str] = "decode"
  num_steps: int = 12
  guidance_scale: float = 10.0
  negative_prompt: str = ""
  temperature: tuple[float, float] = (2.0, 0.0)
  schedule: str = "linear"
  strength: float = 1.0
  aesthetic_score: float = 6.0
  crop_coords: tuple[int, int] = (0, 0)
  size: tuple[int, int] | None = None
  unroll: int | bool = 1

  def __post_init__(self):
    if _number(self.temperature):
      object.__setattr__(self, "temperature", (self.temperature, 0.01))
    for name in ("temperature", "crop_coords", "size"):
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or (
        self.num_steps < 1):
      _fail(self, "num_steps", "an integer >= 1")
    if not _number(self.guidance_scale) or self.guidance_scale < 0:
      _fail(self, "guidance_scale", "a finite number >= 0")
    if (not isinstance(self.temperature, tuple) or len(self.temperature) != 2
        or not all(_number(t) and t >= 0 for t in self.temperature)):
      _fail(self, "temperature", "a number or a (start, end) pair of finite numbers >= 0")
    if self.schedule not in SCHEDULES:
      _fail(self, "schedule", f"one of {SCHEDULES}")
    if not _number(self.strength) or not 0 < self.strength <= 1 or (
        int(self.num_steps * self.strength) < 1):
      _fail(self, "strength", f"in (0, 1] with int(num_steps * strength) >= 1 "
           f"(num_steps={self.num_steps})")
    if not _number(self.aesthetic_score):
      _fail(self, "aesthetic_score", "a finite number")
    if (not isinstance(self.crop_coords, tuple) or len(self.crop_coords) != 2
        or not all(_number(c) and c >= 0 for c in self.crop_coords)):
      _fail(self, "crop_coords", "a pair of numbers >= 0")
    if self.size is not None and (
        not isinstance(self.size, tuple) or len(self.size) != 2
        or not all(_number(s) and s > 0 for s in self.size)):
      _fail(self, "size", "None or a (width, height) pair of numbers > 0")
    if not isinstance(self.negative_prompt, str):
      _fail(self, "negative_prompt", "a string")
    if not isinstance(self.unroll, bool) and (
        not isinstance(self.unroll, int) or self.unroll < 1):
      _fail(self, "unroll", "True, False or an integer >= 1")

  @property
  def guided(self) -> bool:
    """Whether classifier-free guidance runs (the pipeline's `guidance_scale > 1`)."""
    return self.guidance_scale > 1.

  @property
  def start_step(self) -> int:
    """The first step run (0 unless strength < 1)."""
    return self.num_steps - int(self.num_steps * self.strength)


def _fail(settings: DecodeSettings, name: str, need: str) -> None:
  value = getattr(settings, name)
  raise SettingsError(f"config {settings.SECTION}.{name} must be {need}, got {value!r}")


def micro_conditioning(settings: DecodeSettings, height: int, width: int) -> np.ndarray:
  """(5,) float32 micro-conditioning of a height x width image: (width, height,
  crop_coords[0], crop_coords[1], aesthetic_score), in the pipeline's order."""
  size_w, size_h = settings.size if settings.size is not None else (width, height)
  crop = settings.crop_coords
  return np.array([size_w, size_h, crop[0], crop[1], settings.aesthetic_score], np.float32)


def temperatures(settings: DecodeSettings) -> np.ndarray:
  """(num_steps,) float32 re-masking temperature of each step: linspace(start, end).

  Rounded as torch.linspace in float32 (the float32 step from both ends, each half
  from its end in one rounding), so the values are the scheduler's bit for bit."""
  start, end = (np.float32(t) for t in settings.temperature)
  count = settings.num_steps
  if count == 1:
    return np.array([start], np.float32)
  step = np.float64((end - start) / np.float32(count - 1))
  index = np.arange(count)
  values = np.where(index < count // 2, np.float64(start) + step * index,
                    np.float64(end) - step * (count - 1 - index))
  return values.astype(np.float32)


def schedule_shares(settings: DecodeSettings) -> np.ndarray:
  """(num_steps,) float32 share of the initially masked fraction still masked after
  each step: cos(r * pi / 2) or 1 - r, r = (step + 1) / num_steps.

  Computed on the host in float32 as the scheduler does (under jit, XLA would turn
  the division by a constant into a multiplication by its rounded reciprocal, and
  the floored counts would then differ from diffusers')."""
  steps = np.float32(settings.num_steps)
  ratio = np.arange(1, settings.num_steps + 1, dtype=np.float32) / steps
  if settings.schedule == "cosine":
    return np.cos(ratio * np.float32(math.pi) / np.float32(2))
  return np.float32(1) - ratio


def num_still_masked(step: jax.Array, start_fraction: jax.Array, num_masked: jax.Array,
                     seq_len: int, settings: DecodeSettings) -> jax.Array:
  """(B,) int32 tokens left masked after `step`: floor(L * f0 * share), at most the
  currently masked minus one, at least one (the last step re-masks none, see
  `select_tokens`). float32 in the scheduler's order of operations."""
  share = jnp.asarray(schedule_shares(settings))[step]
  count = jnp.floor(jnp.float32(seq_len) * (start_fraction.astype(jnp.float32) * share))
  count = jnp.minimum(num_masked.astype(jnp.float32) - 1., count)
  return jnp.maximum(1., count).astype(jnp.int32)


def masked_fraction(masked: jax.Array) -> jax.Array:
  """(B, L) bool -> (B,) float32 share masked, an exact division as torch's (XLA
  turns a division by a broadcast scalar into a multiplication by its rounded
  reciprocal; the barrier hides the broadcast)."""
  counts = jnp.sum(masked, axis=-1).astype(jnp.float32)
  seq_len = jax.lax.optimization_barrier(jnp.full_like(counts, masked.shape[-1]))
  return counts / seq_len


def gumbel_from_uniform(uniform: jax.Array) -> jax.Array:
  """Gumbel noise -log(-log(u)) with the scheduler's clamps at 1e-20."""
  return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(uniform, 1e-20)), 1e-20))


def _inverse_cdf(weights: jax.Array, uniform: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(..., n) weights >= 0, (...) uniforms -> the first index whose cumulative weight
  exceeds uniform * total (a rounding overflow falls back to the last positive
  entry), and where the target lies inside that entry, as a uniform in [0, 1)."""
  cdf = jnp.cumsum(weights, axis=-1)
  target = uniform * cdf[..., -1]
  index = jnp.sum(cdf <= target[..., None], axis=-1, dtype=jnp.int32)
  size = weights.shape[-1]
  last_positive = size - 1 - jnp.argmax(weights[..., ::-1] > 0, axis=-1).astype(jnp.int32)
  index = jnp.where(index < size, index, last_positive)
  take = lambda x: jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]
  weight = take(weights)
  inside = (target - (take(cdf) - weight)) / jnp.where(weight > 0, weight, 1.)
  return index, jnp.clip(inside, 0., np.float32(1) - np.finfo(np.float32).epsneg)


def sample_categorical(probs: jax.Array, uniform: jax.Array) -> jax.Array:
  """(..., V) probabilities, (...) uniforms in [0, 1) -> (...) int32 draws.

  Inverse CDF (torch.multinomial's distribution from one random number per token
  instead of V), in two levels: a block of ~sqrt(V) entries, then an entry of that
  block, so no cumulative sum runs over all V. Zero-probability entries are never
  drawn."""
  vocab = probs.shape[-1]
  block = 1 << max(0, math.ceil(math.log2(math.sqrt(vocab))))
  num_blocks = -(-vocab // block)
  padding = [(0, 0)] * (probs.ndim - 1) + [(0, num_blocks * block - vocab)]
  blocks = jnp.pad(probs, padding).reshape(probs.shape[:-1] + (num_blocks, block))
  block_index, inside = _inverse_cdf(blocks.sum(axis=-1), uniform)
  chosen = jnp.take_along_axis(blocks, block_index[..., None, None], axis=-2)[..., 0, :]
  entry, _ = _inverse_cdf(chosen, inside)
  return block_index * block + entry


def guidance_batch(conditional, unconditional, settings: DecodeSettings):
  """The conditioning for `logits_fn`'s rows (arrays or pytrees of (B, ...) arrays):
  [unconditional; conditional] along axis 0 when guided, else the conditional alone."""
  if not settings.guided:
    return conditional
  return jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c]), unconditional,
                                conditional)


def guided_logits(logits: jax.Array, guidance_scale: float) -> jax.Array:
  """(2B, ...) logits, unconditional rows first -> (B, ...) float32 guided logits."""
  uncond, cond = jnp.split(logits.astype(jnp.float32), 2)
  return uncond + guidance_scale * (cond - uncond)


def select_tokens(logits: jax.Array, tokens: jax.Array, masked: jax.Array, step: jax.Array,
                  start_fraction: jax.Array, sample_uniform: jax.Array,
                  choice_uniform: jax.Array,
                  settings: DecodeSettings) -> tuple[jax.Array, jax.Array]:
  """One scheduler step on flattened grids.

  Args:
    logits: (B, L, V) float32 guided logits.
    tokens: (B, L) int32 current tokens (values under `masked` are ignored).
    masked: (B, L) bool, the tokens still to generate.
    step: 0-based step index in [0, num_steps).
    start_fraction: (B,) float32 share of the grid masked at the start (f0).
    sample_uniform: (B, L) uniforms in [0, 1) for sampling (inverse CDF).
    choice_uniform: (B, L) uniforms in [0, 1) for the re-masking confidence.
    settings: schedule and temperatures.

  Returns:
    (tokens, masked) after the step: every masked token sampled, known tokens
    kept; the least confident samples masked again (none at the last step).
  """
  probs = jax.nn.softmax(logits, axis=-1)
  sampled = sample_categorical(probs, sample_uniform)
  sampled = jnp.where(masked, sampled, tokens)
  chosen = jnp.take_along_axis(probs, sampled[..., None], axis=-1)[..., 0]
  temperature = jnp.asarray(temperatures(settings))[step]
  confidence = (jnp.log(jnp.maximum(chosen, 1e-20))
                + temperature * gumbel_from_uniform(choice_uniform))
  confidence = jnp.where(masked, confidence, jnp.inf)
  count = num_still_masked(step, start_fraction, jnp.sum(masked, axis=-1), tokens.shape[-1],
                           settings)
  cutoff = jnp.take_along_axis(jnp.sort(confidence, axis=-1), count[:, None], axis=-1)
  remask = (confidence < cutoff) & (step < settings.num_steps - 1)
  return sampled, remask


def inpaint_with_noise(logits_fn: LogitsFn, ids: jax.Array, mask: jax.Array,
                       noise_fn: NoiseFn, settings: DecodeSettings = DecodeSettings(), *,
                       mask_token_id: int = MASK_TOKEN_ID) -> jax.Array:
  """`inpaint` with the noise of each step given by `noise_fn(step, (B, L))`."""
  if ids.ndim != 3 or mask.shape != ids.shape:
    raise ValueError(f"ids and mask must both be (B, h, w), got {ids.shape}, {mask.shape}.")
  batch, height, width = ids.shape
  seq_len = height * width
  tokens = ids.reshape(batch, seq_len).astype(jnp.int32)
  masked = mask.reshape(batch, seq_len).astype(bool)
  start_fraction = masked_fraction(masked)

  def body(step, carry):
    tokens, masked = carry
    inputs = jnp.where(masked, mask_token_id, tokens).reshape(batch, height, width)
    if settings.guided:
      logits = guided_logits(logits_fn(jnp.concatenate([inputs, inputs])),
                             settings.guidance_scale)
    else:
      logits = logits_fn(inputs).astype(jnp.float32)
    logits = logits.reshape(batch, seq_len, -1)
    sample_uniform, choice_uniform = noise_fn(step, (batch, seq_len))
    return select_tokens(logits, tokens, masked, step, start_fraction, sample_uniform,
                         choice_uniform, settings)

  tokens, _ = jax.lax.fori_loop(settings.start_step, settings.num_steps, body,
                                (tokens, masked), unroll=settings.unroll)
  return tokens.reshape(batch, height, width)


def image_keys(keys: jax.Array, batch: int) -> jax.Array:
  """(B,) typed keys from B keys (typed or raw uint32) or one key (fold_in per image)."""
  keys = jnp.asarray(keys)
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  if keys.ndim == 0:
    return jax.vmap(lambda i: jax.random.fold_in(keys, i))(jnp.arange(batch))
  if keys.shape != (batch,):
    raise ValueError(f"Need one key or {batch} keys, got key shape {keys.shape}.")
  return keys


def key_noise(keys: jax.Array) -> NoiseFn:
  """Noise of each image from its own key: fold_in(key, step), split (sample, choice)."""

  def noise_fn(step, shape):
    _, seq_len = shape

    def one(key):
      sample_key, choice_key = jax.random.split(jax.random.fold_in(key, step))
      return (jax.random.uniform(sample_key, (seq_len,)),
              jax.random.uniform(choice_key, (seq_len,)))

    return jax.vmap(one)(keys)

  return noise_fn


def inpaint(logits_fn: LogitsFn, ids: jax.Array, mask: jax.Array, keys: jax.Array,
            settings: DecodeSettings = DecodeSettings(), *,
            mask_token_id: int = MASK_TOKEN_ID) -> jax.Array:
  """Regenerates the masked tokens of each image; the others stay as they are.

  Args:
    logits_fn: (G*B, h, w) int32 ids (masked tokens = mask_token_id) -> (G*B, h, w, V)
      logits; G = 2 when `settings.guided` (rows [:B] unconditional, i.e. the negative
      or empty prompt, rows [B:] conditional), else G = 1.
    ids: (B, h, w) int32 tokens of the images.
    mask: (B, h, w) bool, True where tokens are regenerated.
    keys: B keys (typed (B,) or raw (B, 2)), one per image, or one key for all
      (then fold_in(key, image)). An image's result depends on its key only.
    settings: the decoding settings; mask_token_id: the model's mask id.

  Returns:
    (B, h, w) int32 tokens, jittable (settings and mask_token_id static).

  Example (an editor): `cond = guidance_batch((hidden, pooled, micro), (hidden_empty,
  pooled_empty, micro), settings)`, then `logits_fn = lambda ids:
  transformer.apply(params, ids, *cond)`.
  """
  noise_fn = key_noise(image_keys(keys, ids.shape[0]))
  return inpaint_with_noise(logits_fn, ids, mask, noise_fn, settings,
                            mask_token_id=mask_token_id)
