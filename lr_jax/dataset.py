"""Turns a manifest of (image, prompt) pairs into model-ready arrays: pixels, the editor's
conditioning, text embeddings."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import pathlib
from typing import Any

import jax
import numpy as np

from lr_common import image_files as images_lib
from lr_common import seeds
from lr_common import canvas as canvas_lib
from lr_jax.encoders import imagenet
from lr_jax.files import manifest as manifest_lib
from lr_jax.method import step as step_lib
from lr_jax.models import Built, Models

_IMAGE_BATCH = 8   # images per zero-shot image-encoder call


@dataclasses.dataclass
class Prepared:
  """Everything the jitted steps need about a set of examples, as host arrays."""
  examples: list[manifest_lib.Example]
  images: np.ndarray            # (N, S, S, 3) float32 canvases at the editor's size
  text_embed: np.ndarray        # (N, P) CLIP text embeddings of the target prompts
  src_text_embed: np.ndarray    # (N, P) ... of the source prompts
  cond: dict[str, np.ndarray]   # the editor's conditioning arrays, one row per example
  cond_records: list[dict]      # the editor's per-example record (MaskGIT: the class match)
  summaries: list[str]          # ... and its one-line summary
  source_prompts: list[str]
  layouts: list[canvas_lib.Layout]   # where each photo lies on its canvas

  @property
  def valid(self) -> np.ndarray:
    """(N, 4) int32: the token area of each canvas that shows the photo."""
    return np.asarray([lay.valid_tlhw_tokens for lay in self.layouts], np.int32).reshape(-1, 4)

  def __len__(self) -> int:
    return len(self.examples)

  def batch(self, indices: np.ndarray) -> dict[str, Any]:
    return dict(images=self.images[indices], valid=self.valid[indices],
                text_embed=self.text_embed[indices],
                src_text_embed=self.src_text_embed[indices],
                cond={k: v[indices] for k, v in self.cond.items()})


@dataclasses.dataclass(frozen=True)
class Examples:
  """A run's examples with their images, checked and loaded, and their fingerprint."""
  examples: list[manifest_lib.Example]
  loaded: list[images_lib.LoadedImage]
  fingerprint: list[dict[str, object]]   # what a resumed run must see again


def read(data, examples: list[manifest_lib.Example] | None = None) -> Examples:
  """The examples named by the data settings (or `examples` as given), every image
  loaded (all unusable ones reported in one ImageError), and their fingerprint: each
  image's name and content hash, the prompts and class id (folders may move; the images
  and texts of a resumed run may not change)."""
  examples = examples_from_settings(data) if examples is None else list(examples)
  loaded = images_lib.load_images([ex.image_path for ex in examples])
  prints = [{"image": pathlib.Path(ex.image_path).name,
             "sha1": hashlib.sha1(pathlib.Path(ex.image_path).read_bytes()).hexdigest(),
             "prompt": ex.prompt, "source_prompt": ex.source_prompt, "class_id": ex.class_id}
            for ex in examples]
  return Examples(examples, loaded, prints)


def examples_from_settings(data) -> list[manifest_lib.Example]:
  """The examples named by the data settings (`run_settings.DataSettings`: a manifest,
  or a folder + one prompt, or the shipped sample)."""
  if data.manifest:
    return manifest_lib.read_manifest(data.manifest)
  if data.image_dir:
    if not data.prompt:
      raise manifest_lib.ManifestError("config.data.image_dir needs config.data.prompt (the edit text)")
    return manifest_lib.examples_from_folder(data.image_dir, data.prompt)
  if data.samples:
    from lr_jax import samples  # pylint: disable=g-import-not-at-top
    return samples.sample_examples()
  raise manifest_lib.ManifestError(
      "No training data: set --config.data.manifest=FILE (JSON/CSV of image, "
      "prompt[, source_prompt]), or --config.data.image_dir=DIR with "
      "--config.data.prompt=TEXT, or --config.data.samples=True for the shipped sample.")


def load_images(examples: list[manifest_lib.Example]) -> list[images_lib.LoadedImage]:
  """Loads every example's image; all unusable ones are reported in one ImageError."""
  return images_lib.load_images([ex.image_path for ex in examples])


@functools.partial(jax.jit, static_argnums=0)
def _image_embeds(models: Models, frozen: Any, images: jax.Array) -> jax.Array:
  return step_lib.clip_images(models, frozen, images)[0]


def image_embeddings(built: Built, images: np.ndarray) -> np.ndarray:
  """CLIP image embeddings (N, P) of images (N, S, S, 3) in [0, 1], in fixed batches
  (so the encoder compiles once)."""
  out = []
  for i in range(0, len(images), _IMAGE_BATCH):
    chunk = np.asarray(images[i:i + _IMAGE_BATCH], np.float32)
    padded = np.concatenate(
        [chunk, np.zeros((_IMAGE_BATCH - len(chunk),) + chunk.shape[1:], np.float32)])
    out.append(np.asarray(_image_embeds(built.models, {"clip": built.frozen["clip"]},
                                        padded))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, built.models.clip.config.projection_dim))


def canvases(built: Built, loaded: list[images_lib.LoadedImage], canvas: str
             ) -> tuple[np.ndarray, list[canvas_lib.Layout]]:
  """The (N, S, S, 3) float32 canvases of loaded images and their layouts: what
  training and inference both feed DINO, the editor and CLIP."""
  editor = built.models.editor
  layouts = [canvas_lib.layout(im.original.shape, editor.image_size, editor.box_grid, canvas)
             for im in loaded]
  pixels = [canvas_lib.to_canvas(im.original, lay) for im, lay in zip(loaded, layouts)]
  size = editor.image_size
  return (np.stack(pixels).astype(np.float32) if pixels
          else np.zeros((0, size, size, 3), np.float32)), layouts


def prepare(built: Built, examples: list[manifest_lib.Example],
            loaded: list[images_lib.LoadedImage] | None = None,
            canvas: str = "pad") -> Prepared:
  """Loads every image and puts it on its `canvas` ("pad" or "squeeze": `lr_common.canvas`),
  asks the editor for its conditioning, embeds the texts.

  All problems with the images are collected and reported together.
  """
  if built.text_encoder is None:
    raise ValueError("These models have no CLIP tokenizer (random benchmark models): "
                     "prompts cannot be encoded.")
  editor, text = built.models.editor, built.text_encoder
  loaded = load_images(examples) if loaded is None else loaded
  for im in loaded:
    for note in im.notes:
      logging.warning("%s: %s", im.path, note)
  pixels, layouts = canvases(built, loaded, canvas)
  text_embed = text([ex.prompt for ex in examples])   # once, batched
  cond = editor.condition(examples, text)
  need_zero_shot = [i for i, ex in enumerate(examples) if not ex.source_prompt]
  image_embed = dict(zip(need_zero_shot, image_embeddings(built, pixels[need_zero_shot])
                         if need_zero_shot else []))
  class_emb = text.class_name_embeddings() if need_zero_shot else None
  sources = [imagenet.source_prompt(ex.source_prompt, image_embed.get(i), class_emb)
             for i, ex in enumerate(examples)]
  src_text_embed = text(sources)
  return Prepared(examples=list(examples), images=pixels.astype(np.float32),
                  text_embed=np.asarray(text_embed, np.float32),
                  src_text_embed=np.asarray(src_text_embed, np.float32),
                  cond=cond.arrays, cond_records=cond.records, summaries=cond.summaries,
                  source_prompts=sources, layouts=layouts)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of an epoch: a permutation fixed by (seed, epoch)."""
  return seeds.numpy_rng(seed, epoch).permutation(n)


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Indices of a step's batch; epochs are ceil(n / batch_size) steps, the last one
  filled up from the start of the epoch's order."""
  epoch, i = divmod(step, steps_per_epoch(n, batch_size))
  order = epoch_order(seed, epoch, n)
  idx = np.arange(i * batch_size, (i + 1) * batch_size) % n
  return order[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
  """ceil(n / batch_size): the last batch of an epoch is filled up, never dropped."""
  return -(-n // batch_size)
