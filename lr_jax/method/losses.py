"""The editing losses (paper Eq. 3-6) and the table of terms the training step sums.

Everything here works on arrays (embeddings, tokens), so it does not depend on a
particular CLIP implementation, and is differentiable and jittable.

Conventions:
  * Embeddings are (..., P); tokens are (..., 1 + N, D) with [CLS] first.
  * Loss functions are batched over leading dims and broadcast, and return the
    unreduced per-item values.
  * `TERMS` maps each term's name (its config key under `loss`) to a function of
    `LossInputs`; `total_loss` is their weighted sum. Adding a loss is one function,
    one row of `TERMS` and one default weight in `lr_jax/defaults.py`.
"""
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

_EPS = 1e-8


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


class LossInputs(NamedTuple):
  """What the loss terms see of a batch of edits; sources and texts broadcast.

  view_embeds: optional (V, ...) embeddings of V augmented views of each edit; the
  guidance and directional terms are then averaged over the views.
  """
  edit_embeds: jnp.ndarray
  text_embeds: jnp.ndarray
  src_embeds: Optional[jnp.ndarray] = None
  src_text_embeds: Optional[jnp.ndarray] = None
  edit_tokens: Optional[jnp.ndarray] = None
  src_tokens: Optional[jnp.ndarray] = None
  view_embeds: Optional[jnp.ndarray] = None


def _over_views(fn: Callable[[jnp.ndarray], jnp.ndarray], x: LossInputs) -> jnp.ndarray:
  if x.view_embeds is None:
    return fn(x.edit_embeds)
  return fn(x.view_embeds).mean(axis=0)


def _needs(x: LossInputs, term: str, *names: str) -> None:
  missing = [n for n in names if getattr(x, n) is None]
  if missing:
    raise ValueError(f"the {term} loss needs {', '.join(missing)} (or give it weight 0)")


def guidance_term(x: LossInputs) -> jnp.ndarray:
  """L_Clip of each edit (over its views, if any)."""
  return _over_views(lambda e: guidance_loss(e, x.text_embeds), x)


def directional_term(x: LossInputs) -> jnp.ndarray:
  """L_Dir of each edit (over its views, if any)."""
  _needs(x, "directional", "src_embeds", "src_text_embeds")
  return _over_views(
      lambda e: directional_loss(e, x.src_embeds, x.text_embeds, x.src_text_embeds), x)


def structure_term(x: LossInputs) -> jnp.ndarray:
  """L_Str of each edit (always the un-augmented edit against the source)."""
  _needs(x, "structure", "edit_tokens", "src_tokens")
  return structure_loss(x.edit_tokens, x.src_tokens)


TERMS: Dict[str, Callable[[LossInputs], jnp.ndarray]] = {
    "clip": guidance_term,
    "dir": directional_term,
    "structure": structure_term,
}


def total_loss(inputs: LossInputs, weights: Mapping[str, float]
               ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Per-edit L = sum_t w_t L_t over `TERMS` (paper Eq. 3: weights 1, 1, 1).

  A term whose weight is 0 is skipped (its inputs may then be None) and reported as
  zeros. Returns (per-edit total, {term: per-edit values}).
  """
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise ValueError(f"unknown loss terms {unknown}; terms: {list(TERMS)}")
  terms, total = {}, None
  for name, term in TERMS.items():
    weight = weights.get(name, 0.0)
    if weight:
      terms[name] = term(inputs)
      weighted = weight * terms[name]
      total = weighted if total is None else total + weighted
  if total is None:
    raise ValueError("every loss weight is 0: nothing to train")
  for name in TERMS:
    terms.setdefault(name, jnp.zeros_like(total))
  return total, terms
