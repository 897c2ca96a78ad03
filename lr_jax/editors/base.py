"""The contract between the region method and a generator that edits boxes.

The method needs exactly one thing from a generator: regenerate what is inside
boxes of images. Everything else it knows about the generator is static facts:
the square image size it works at, the grid its boxes are given on, its dtype.

The box grid is the method's unit (anchors, proposals, the RGN's box sizes), not
necessarily the generator's own grid: MaskGIT and aMUSEd regenerate tokens on exactly
that grid; Stable Diffusion's latent grid is finer (2 x 2 latent cells per box cell
at 512 px), which it handles inside `edit`.

A generator module in `lr_jax/editors/` (picked by `config.editor.name`, imported by
name as big_vision picks `models.<name>`) provides:

  * `default_config() -> ConfigDict`: its settings, the `config.editor` section
    beside `name` (`editors.use(config, name)` installs them);
  * `make(config) -> Editor`: the static part alone (no weights: sizes for checks);
    raises a UserError on a bad setting, before anything is loaded;
  * `build(config, weights, rng) -> (Editor, params)` with weights "official" (real
    files, downloaded or local), "tiny" (small random model) or "random" (real
    sizes, random values, for benchmarks);
  * `weight_files(config, to=None) -> {name: path}`: downloads what `build(config,
    "official")` needs and returns where it is (`to`: into `to`/<its folder>, the folder
    `LR_JAX_WEIGHTS` makes the loaders find); `download_lines(config, root)`: the
    paste-ready shell lines that fetch the same files into `root`/<its folder> by hand;
  * `CONFIGS`: (paper config, tiny config), names of files in `configs/` (the
    notebooks and the editor benchmark list editors from these);
  * `RGN_KEYS`: the config keys a trained RGN depends on (the box grid),
    `RESUMABLE_KEYS`: keys that may change when a run resumes (cache folders);
  * optionally `LEGACY_SECTIONS`: {old section: {old key: new key}} of the config
    layout before the single editor section, so old workdirs keep loading.

An `Editor` is a frozen, hashable dataclass (a static argument of the jitted steps).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

Array = jax.Array
Params = Any


class EditOutput(NamedTuple):
  """B images x N boxes, edited in one call."""
  images: Array        # (B, N, S, S, 3) float32 in [0, 1], the edit composited on the input
  pixel_mask: Array    # (B, N, S, S, 1) float32 in [0, 1], the blend weight of the edit
  masked_boxes: Array  # (B, N, 4) int32 (top, left, height, width) box-grid cells regenerated


class Conditioning(NamedTuple):
  """What a batch of examples asks the generator for.

  arrays: name -> (N, ...) host arrays, one row per example (they travel in the
  batch into the jitted steps, and `edit` receives each row's slice).
  records: one JSON-able dict per example, merged into the edit's record (e.g.
  MaskGIT's `class` match with its top 5).
  summaries: one short line per example for the command line.
  """
  arrays: dict[str, np.ndarray]
  records: list[dict[str, Any]]
  summaries: list[str]


@dataclasses.dataclass(frozen=True)
class Editor(abc.ABC):
  """Static facts and pure functions of one generator (see the module docstring)."""

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """The module name under `lr_jax/editors/`."""

  @property
  @abc.abstractmethod
  def image_size(self) -> int:
    """Side of the square images `edit` takes and returns, in pixels."""

  @property
  @abc.abstractmethod
  def box_grid(self) -> int:
    """Cells per side of the grid `edit` takes boxes on (image_size / box_grid pixels
    each); the generator's own token or latent grid may be finer."""

  @property
  @abc.abstractmethod
  def dtype(self) -> str:
    """The compute dtype of the generator ("float32", "bfloat16")."""

  @abc.abstractmethod
  def condition(self, examples: Sequence[Any], text_encoder: Any) -> Conditioning:
    """Host side: the conditioning of each example (`manifest.Example`: prompt,
    optional class id), given the CLIP text encoder (`lr_jax.encoders.text_encoder`)."""

  @abc.abstractmethod
  def dummy_condition(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Conditioning arrays of the right shapes for `batch` examples, valid but
    arbitrary (benchmarks, shape inference)."""

  @abc.abstractmethod
  def edit(self, params: Params, images: Array, boxes: Array, cond: dict[str, Array],
           rng: Array) -> EditOutput:
    """Pure and jittable: edits N boxes (B, N, 4) on the box grid of B images
    (B, S, S, 3) in [0, 1] in one call. Box (b, n) uses the key fold_in(fold_in(rng, b), n), so a
    box alone decodes as it does in the batch; `rng` may also be those (B, N) keys
    themselves (`box_editing.per_box_keys`), so a share of the boxes, on another device
    or in a chunk, decodes as it does in the whole batch."""

  def record(self) -> dict[str, Any]:
    """Facts about this editor for every edit's JSON record."""
    return {"editor": self.name, "editor_dtype": self.dtype}
