"""A tiny editor that is not MaskGIT, for the contract test (`config.editor.name =
"tests.fake_editor"`): it paints each box with the prompt's colour plus a little
per-box noise. Boxes come on a 2x2 box grid of 64x64 images; the editor works on its
own grid `fine` times finer (as Stable Diffusion's latents are finer than its boxes)."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lr_common import box_editing
from lr_common.errors import SettingsError
from lr_jax.editors import base

CONFIGS = ("tiny", "tiny")
RGN_KEYS = ("editor.grid",)
RESUMABLE_KEYS = ()


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"image_size": 64, "grid": 2, "fine": 1, "noise": 0.1})


def prompt_colour(prompt: str) -> np.ndarray:
  return np.frombuffer(hashlib.sha1(prompt.encode()).digest()[:3], np.uint8) / np.float32(255)


@dataclasses.dataclass(frozen=True)
class FakeEditor(base.Editor):
  size: int
  cells: int
  noise: float
  fine: int = 1

  name = property(lambda self: "tests.fake_editor")
  image_size = property(lambda self: self.size)
  box_grid = property(lambda self: self.cells)
  dtype = property(lambda self: "float32")

  def condition(self, examples: Sequence[Any], text_encoder: Any) -> base.Conditioning:
    colours = np.stack([prompt_colour(ex.prompt) for ex in examples]).astype(np.float32)
    records = [{"fake_colour": c.tolist()} for c in colours]
    return base.Conditioning({"colour": colours}, records,
                             [f"colour {np.round(c, 2).tolist()}" for c in colours])

  def dummy_condition(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"colour": np.random.default_rng(seed).random((batch, 3)).astype(np.float32)}

  def edit(self, params, images, boxes, cond, rng) -> base.EditOutput:
    b, n = boxes.shape[:2]
    boxes = jnp.clip(box_editing.round_boxes(boxes), 0, self.cells)
    top, left = boxes[..., 0], boxes[..., 1]
    bottom = jnp.minimum(top + boxes[..., 2], self.cells)
    right = jnp.minimum(left + boxes[..., 3], self.cells)
    # The box on the editor's own, finer grid, then to pixels.
    side = self.cells * self.fine
    cells = box_editing.box_token_mask(box_editing.scale_boxes(boxes, self.fine), side)
    mask = box_editing.feathered_mask(cells, self.size, 0.)
    keys = jax.vmap(lambda i: jax.vmap(lambda j: jax.random.fold_in(
        jax.random.fold_in(rng, i), j))(jnp.arange(n)))(jnp.arange(b))
    noise = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (3,))))(keys) * self.noise
    paint = jnp.clip(cond["colour"][:, None] * params["gain"] + noise, 0., 1.)
    out = mask * paint[:, :, None, None, :] + (1. - mask) * images[:, None]
    masked = jnp.stack([top, left, bottom - top, right - left], -1)
    return base.EditOutput(out, mask, masked)


def make(config) -> FakeEditor:
  f = config.editor
  if f.grid < 1 or f.fine < 1 or f.image_size % (f.grid * f.fine):
    raise SettingsError(f"config editor.grid x editor.fine must divide editor.image_size, "
                        f"got {f.grid} x {f.fine}")
  return FakeEditor(f.image_size, f.grid, f.noise, f.fine)


def build(config, weights: str, rng) -> tuple[FakeEditor, dict[str, Any]]:
  del weights, rng
  return make(config), {"gain": jnp.ones((), jnp.float32)}


def weight_files(config, to=None) -> dict[str, Any]:
  return {}


def download_lines(config, root: str) -> list[str]:
  return []
