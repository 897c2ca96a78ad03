"""A tiny editor that is not MaskGIT, for the contract test (`config.editor.name =
"tests.fake_editor"`): it paints each box with the prompt's colour plus a little
per-box noise, on a 2x2 token grid of 64x64 images."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lr_jax.editors import base
from lr_jax.method.settings import SettingsError

CONFIG_SECTIONS = ("fake",)
RGN_KEYS = ("fake.grid",)
RESUMABLE_KEYS = ()


def default_config() -> dict[str, ml_collections.ConfigDict]:
  return {"fake": ml_collections.ConfigDict({"image_size": 64, "grid": 2, "noise": 0.1})}


def check_config(config) -> None:
  f = config.fake
  if f.grid < 1 or f.image_size % f.grid:
    raise SettingsError(f"config fake.grid must divide fake.image_size, got {f.grid}")


def prompt_colour(prompt: str) -> np.ndarray:
  return np.frombuffer(hashlib.sha1(prompt.encode()).digest()[:3], np.uint8) / np.float32(255)


@dataclasses.dataclass(frozen=True)
class FakeEditor(base.Editor):
  size: int
  cells: int
  noise: float

  name = property(lambda self: "tests.fake_editor")
  image_size = property(lambda self: self.size)
  grid = property(lambda self: self.cells)
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
    boxes = jnp.clip(jnp.round(boxes).astype(jnp.int32), 0, self.cells)
    top, left = boxes[..., 0], boxes[..., 1]
    bottom = jnp.minimum(top + boxes[..., 2], self.cells)
    right = jnp.minimum(left + boxes[..., 3], self.cells)
    cell = (jnp.arange(self.size) * self.cells) // self.size          # pixel -> token
    rows = (cell >= top[..., None]) & (cell < bottom[..., None])       # (B, N, S)
    cols = (cell >= left[..., None]) & (cell < right[..., None])
    mask = (rows[..., :, None] & cols[..., None, :])[..., None].astype(jnp.float32)
    keys = jax.vmap(lambda i: jax.vmap(lambda j: jax.random.fold_in(
        jax.random.fold_in(rng, i), j))(jnp.arange(n)))(jnp.arange(b))
    noise = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (3,))))(keys) * self.noise
    paint = jnp.clip(cond["colour"][:, None] * params["gain"] + noise, 0., 1.)
    out = mask * paint[:, :, None, None, :] + (1. - mask) * images[:, None]
    masked = jnp.stack([top, left, bottom - top, right - left], -1)
    return base.EditOutput(out, mask, masked)


def make(config) -> FakeEditor:
  f = config.fake
  return FakeEditor(f.image_size, f.grid, f.noise)


def build(config, weights: str, rng) -> tuple[FakeEditor, dict[str, Any]]:
  del weights, rng
  return make(config), {"gain": jnp.ones((), jnp.float32)}


def weight_files(config) -> dict[str, Any]:
  return {}
