"""MaskGIT iterative parallel decoding (semantics of the official MaskGIT decoder).

Each iteration runs the transformer on the current sequence, samples every
masked position from its categorical distribution, scores the sampled tokens by
log-probability plus Gumbel noise annealed by `choice_temperature * (1 - t/T)`,
and re-masks the least confident ones so that the number still masked follows
the mask schedule. Tokens given in the input are never changed.

The random stream reproduces the official code: one key for the whole batch is
split into (carry, sample) then (carry, choice) each iteration. With a batch of
keys (one per row), every row follows the stream the official code would use
for a batch of one with that key, so a row's result does not depend on the
rest of the batch.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]

SCHEDULES = ("cosine", "linear", "uniform", "square", "cubic", "log", "exp")


def check_schedule(schedule: str) -> None:
  """Raises ValueError for an unknown mask schedule name (plain Python, no arrays)."""
  if schedule in SCHEDULES:
    return
  if schedule.startswith("pow"):
    try:
      float(schedule[3:])
      return
    except ValueError:
      pass
  raise ValueError(
      f"Unknown mask schedule {schedule!r}; expected one of {SCHEDULES} or 'powP'.")


def mask_ratio(ratio: jax.Array, total_unknown: jax.Array,
               schedule: str = "cosine") -> jax.Array:
  """Fraction of the initially unknown tokens that stays masked after `ratio`.

  `ratio` is t/T in (0, 1]. Supported: cosine (the MaskGIT default),
  linear (alias uniform), square, cubic, powP (e.g. "pow2.5"), log, exp.
  The result is clipped to [1e-6, 1].
  """
  check_schedule(schedule)
  if schedule == "cosine":
    value = jnp.cos(math.pi / 2. * ratio)
  elif schedule in ("linear", "uniform"):
    value = 1. - ratio
  elif schedule == "square":
    value = 1. - ratio**2
  elif schedule == "cubic":
    value = 1. - ratio**3
  elif schedule == "log":
    value = -jnp.log2(ratio) / jnp.log2(total_unknown)
  elif schedule == "exp":
    value = 1. - jnp.exp2(-jnp.log2(total_unknown) * (1. - ratio))
  else:  # "powP", checked above
    value = 1. - ratio**float(schedule[3:])
  return jnp.clip(value, 1e-6, 1.)


def _as_typed_keys(rng: jax.Array) -> jax.Array:
  """Returns typed PRNG keys (raw uint32 keys are wrapped, bits unchanged)."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(rng)


def _split2(keys: jax.Array, per_row: bool) -> tuple[jax.Array, jax.Array]:
  if per_row:
    pairs = jax.vmap(jax.random.split)(keys)  # (B, 2)
    return pairs[:, 0], pairs[:, 1]
  pair = jax.random.split(keys)
  return pair[0], pair[1]


def _sample(key: jax.Array, logits: jax.Array, per_row: bool) -> jax.Array:
  """Categorical sample over the last axis; per row as a batch of one."""
  if per_row:
    one = lambda k, l: jax.random.categorical(k, l[None])[0]
    return jax.vmap(one)(key, logits)
  return jax.random.categorical(key, logits)


def _gumbel(key: jax.Array, shape: tuple[int, ...], per_row: bool) -> jax.Array:
  if per_row:
    one = lambda k: jax.random.gumbel(k, (1,) + shape[1:])[0]
    return jax.vmap(one)(key)
  return jax.random.gumbel(key, shape)


def decode(input_ids: jax.Array,
           rng: jax.Array,
           logits_fn: LogitsFn,
           *,
           num_iter: int,
           start_iter: int = 0,
           choice_temperature: float = 4.5,
           codebook_size: int | None = None,
           mask_token_id: int = -1,
           schedule: str = "cosine",
           unroll: int | bool = 1) -> jax.Array:
  """Fills the masked tokens of `input_ids` by MaskGIT parallel decoding.

  Args:
    input_ids: (B, L) int32, `mask_token_id` where tokens are to be generated.
    rng: one PRNG key for the whole batch (official semantics), or a batch of
      B keys (raw (B, 2) uint32 or typed (B,)) giving each row its own stream.
    logits_fn: maps (B, L) int32 ids to (B, L, V) logits.
    num_iter: total number of iterations T of the schedule.
    start_iter: first iteration to run (editing starts later in the schedule).
    choice_temperature: scale of the Gumbel noise on the confidence.
    codebook_size: if given, logits are restricted to the first entries.
    mask_token_id: id marking masked positions.
    schedule: mask schedule name, see `mask_ratio`.
    unroll: iterations unrolled into one loop body (True: all). Same numbers;
      a fully unrolled loop lets XLA schedule and fuse across iterations.

  Returns:
    (B, L) int32: the tokens sampled at the last iteration (known tokens
    unchanged); the input itself if start_iter >= num_iter.
  """
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be (batch, length), got {input_ids.shape}.")
  if num_iter < 1 or not 0 <= start_iter:
    raise ValueError(
        f"Need num_iter >= 1 and start_iter >= 0, got {num_iter}, {start_iter}.")
  check_schedule(schedule)
  ids0 = input_ids.astype(jnp.int32)
  keys = _as_typed_keys(jnp.asarray(rng))
  per_row = keys.ndim == 1
  if per_row and keys.shape[0] != ids0.shape[0]:
    raise ValueError(
        f"Got {keys.shape[0]} keys for a batch of {ids0.shape[0]} sequences.")
  if keys.ndim > 1:
    raise ValueError(f"rng must be one key or a vector of keys, got {keys.shape}.")
  unknown_at_start = jnp.sum(ids0 == mask_token_id, axis=-1)

  def body(step, carry):
    cur_ids, keys, _ = carry
    logits = logits_fn(cur_ids)
    if codebook_size is not None:
      logits = logits[..., :codebook_size]
    logits = logits.astype(jnp.float32)
    keys, sample_key = _split2(keys, per_row)
    sampled = _sample(sample_key, logits, per_row)
    unknown = cur_ids == mask_token_id
    sampled = jnp.where(unknown, sampled, cur_ids)

    ratio = 1. * (step + 1) / num_iter
    ratio_masked = mask_ratio(ratio, unknown_at_start, schedule)
    probs = jax.nn.softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(probs, sampled[..., None], axis=-1)[..., 0]
    chosen = jnp.where(unknown, chosen, jnp.inf)
    mask_len = jnp.floor(unknown_at_start * ratio_masked)[:, None]
    mask_len = jnp.maximum(
        1, jnp.minimum(jnp.sum(unknown, axis=-1, keepdims=True) - 1, mask_len))

    keys, choice_key = _split2(keys, per_row)
    temperature = choice_temperature * (1. - ratio)
    noise = _gumbel(choice_key, chosen.shape, per_row)
    confidence = jnp.log(chosen) + temperature * noise
    threshold = jnp.take_along_axis(
        jnp.sort(confidence, axis=-1), mask_len.astype(jnp.int32), axis=-1)
    next_ids = jnp.where(confidence < threshold, mask_token_id, sampled)
    return next_ids, keys, sampled

  if start_iter >= num_iter:
    return ids0
  _, _, last = jax.lax.fori_loop(start_iter, num_iter, body, (ids0, keys, ids0),
                                 unroll=unroll)
  return last
