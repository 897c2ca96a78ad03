"""The "box" strategy: boxes the user gives, edited and scored without region selection.

No DINO and no RGN: the boxes (B, N, 4) on the box grid are edited in one editor call,
scored by CLIP like any candidates (`step.infer`), and the best is kept. The result is a
`step.Inference` whose region fields are placeholders (zero attention, each box its own
proposal, its anchor the cell at its centre), so records and sheets read it as any other.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lr_jax.method import step as step_lib
from lr_jax.method.bundle import Models
from lr_jax.method.settings import Method


def infer_boxes(frozen: Any, batch: dict[str, Any], boxes: jax.Array, rng: jax.Array, *,
                models: Models, method: Method, split: step_lib.Split = None
                ) -> step_lib.Inference:
  """Edits, scores and picks among the given boxes (B, N, 4) (tokens, float); `split`:
  spread over devices and chunks as `step.infer`'s candidates."""
  b, n = boxes.shape[:2]
  boxes = boxes.astype(jnp.float32)
  out, scores, best = step_lib.edit_and_score(models, frozen, batch, boxes, rng, method.score,
                                              split)
  grid = models.editor.box_grid
  anchors = jnp.floor(boxes[..., :2] + boxes[..., 2:] / 2).astype(jnp.int32)
  anchors = jnp.clip(anchors, 0, grid - 1)
  regions = step_lib.Regions(jnp.zeros((b, grid, grid), jnp.float32), anchors,
                             boxes[:, :, None], jnp.zeros((b, n, 1, 1, 1, 1), jnp.float32))
  return step_lib.Inference(regions, step_lib.Candidates(anchors, boxes[:, :, None]),
                            jnp.zeros((b, n, 1), jnp.float32), jnp.zeros((b, n), jnp.int32),
                            boxes, out, scores, best)


def make_infer_boxes(models: Models, method: Method, split: step_lib.Split = None):
  """`infer_boxes` jitted for these models, settings and split (one compile per box count)."""
  return _jitted_infer_boxes(models, method, split)


@functools.lru_cache(maxsize=16)
def _jitted_infer_boxes(models: Models, method: Method, split: step_lib.Split):
  if split is None:
    return jax.jit(functools.partial(infer_boxes, models=models, method=method))
  return jax.jit(functools.partial(infer_boxes, models=models, method=method, split=split),
                 in_shardings=split.replicated(), out_shardings=split.replicated())
