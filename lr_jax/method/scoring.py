"""Quality score for ranking the K edited candidates (paper Eq. 7).

S = alpha * S_t2i + beta * S_i2i, with S_t2i = cos(E_v(X_o), E_t(T)) and
S_i2i = cos(E_v(X_o), E_v(X)) on last-layer CLIP embeddings; the paper uses
alpha = 2, beta = 1. The official code picks the best S among the top-3
candidates by S_t2i; `pick_best(..., top_t2i=3)` reproduces that choice.
"""
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from lr_jax.method.losses import cosine_similarity


class QualityScore(NamedTuple):
  """Per-candidate scores, each (K,)."""
  score: jnp.ndarray
  t2i: jnp.ndarray
  i2i: jnp.ndarray


def quality_score(edit_embeds: jnp.ndarray, src_embed: jnp.ndarray,
                  text_embed: jnp.ndarray, alpha: float = 2.0,
                  beta: float = 1.0) -> QualityScore:
  """Scores K edited images.

  Args:
    edit_embeds: (K, P) CLIP image embeddings of the edited images.
    src_embed: (P,) CLIP image embedding of the source image.
    text_embed: (P,) CLIP text embedding of the edit prompt.
    alpha, beta: weights of S_t2i and S_i2i.

  Returns:
    QualityScore(score, t2i, i2i), each (K,). Embeddings need not be
    normalized.
  """
  if edit_embeds.ndim != 2:
    raise ValueError(f"edit_embeds must be (K, P), got {edit_embeds.shape}")
  if src_embed.shape != edit_embeds.shape[-1:] or \
      text_embed.shape != edit_embeds.shape[-1:]:
    raise ValueError(
        f"src_embed {src_embed.shape} and text_embed {text_embed.shape} must be "
        f"({edit_embeds.shape[-1]},)")
  t2i = cosine_similarity(edit_embeds, text_embed[None])
  i2i = cosine_similarity(edit_embeds, src_embed[None])
  return QualityScore(alpha * t2i + beta * i2i, t2i, i2i)


def pick_best(scores: Union[QualityScore, jnp.ndarray],
              top_t2i: Optional[int] = None) -> jnp.ndarray:
  """Index of the best candidate (jittable; `int(...)` it outside jit).

  Args:
    scores: a QualityScore, or a (K,) array of S.
    top_t2i: if given, only the `top_t2i` candidates with the highest S_t2i
      are eligible (the official code uses 3); needs a QualityScore.

  Returns:
    int32 scalar index; ties go to the lowest index.
  """
  if top_t2i is None:
    score = scores.score if isinstance(scores, QualityScore) else scores
    return jnp.argmax(score).astype(jnp.int32)
  if not isinstance(scores, QualityScore):
    raise ValueError("top_t2i needs a QualityScore (with its t2i component)")
  num = scores.score.shape[0]
  if not 1 <= top_t2i:
    raise ValueError(f"top_t2i must be >= 1, got {top_t2i}")
  _, top_idx = jax.lax.top_k(scores.t2i, min(top_t2i, num))
  eligible = jnp.zeros((num,), bool).at[top_idx].set(True)
  masked = jnp.where(eligible, scores.score, -jnp.inf)
  return jnp.argmax(masked).astype(jnp.int32)
