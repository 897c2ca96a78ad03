"""CLIP text embeddings on the host: the tokenizer, one jitted encode, and their caches.

One `TextEncoder` per CLIP (built with the models): prompts are tokenized and encoded
in fixed batches of `batch_size` (padded with empty prompts, so the encode compiles
once), each prompt's embedding is kept (a prompt is encoded once per process), and the
ImageNet class-name embeddings are computed on first use and kept.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders import imagenet
from lr_jax.encoders.clip import CLIP


@functools.partial(jax.jit, static_argnums=0)
def _encode(clip: CLIP, params: Any, input_ids: jax.Array, attention_mask: jax.Array):
  return clip.apply({"params": params}, input_ids, attention_mask, method=CLIP.encode_text)


class TextEncoder:
  """Maps prompts to (N, P) CLIP text embeddings (unnormalized), with caches."""

  def __init__(self, clip: CLIP, params: Any, tokenizer: Any, batch_size: int = 50):
    self.clip, self.params, self.tokenizer = clip, params, tokenizer
    self.batch_size = batch_size
    self._prompts: dict[str, np.ndarray] = {}
    self._class_names: np.ndarray | None = None

  @property
  def dim(self) -> int:
    return self.clip.config.projection_dim

  def __call__(self, prompts: Sequence[str]) -> np.ndarray:
    """(N, P) embeddings; prompts seen before are not encoded again."""
    if self.tokenizer is None:
      raise ValueError("This CLIP has no tokenizer; load it with its tokenizer files.")
    todo = list(dict.fromkeys(p for p in prompts if p not in self._prompts))
    length = self.clip.config.text.max_positions
    for i in range(0, len(todo), self.batch_size):
      chunk = todo[i:i + self.batch_size]
      padded = chunk + [""] * (self.batch_size - len(chunk))
      tok = self.tokenizer(padded, padding="max_length", max_length=length, truncation=True,
                           return_tensors="np")
      emb = np.asarray(_encode(self.clip, self.params,
                               jnp.asarray(tok["input_ids"], jnp.int32),
                               jnp.asarray(tok["attention_mask"], jnp.int32)))
      self._prompts.update(zip(chunk, emb[:len(chunk)]))
    if not prompts:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self._prompts[p] for p in prompts])

  def class_name_embeddings(self) -> np.ndarray:
    """(1000, P) unit embeddings of the ImageNet class names in CLIP's template."""
    if self._class_names is None:
      self._class_names = np.asarray(imagenet.class_text_embeddings(self))
    return self._class_names
