"""Turns a manifest of (image, prompt) pairs into model-ready arrays: pixels, the editor's
conditioning, text embeddings."""
from __future__ import annotations

import dataclasses
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
from lr_jax.models import Built

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

  @property
  def arrays(self) -> dict[str, Any]:
    """What the jitted steps take, one row per example (`batch` picks rows)."""
    return dict(images=self.images, valid=self.valid, text_embed=self.text_embed,
                src_text_embed=self.src_text_embed, cond=self.cond)

  def batch(self, indices: np.ndarray) -> dict[str, Any]:
    return jax.tree.map(lambda a: a[indices], self.arrays)


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


# CLIP's image embeddings and tokens, jitted once per set of models.
_clip_images = jax.jit(step_lib.clip_images, static_argnums=0)


def prepare(built: Built, examples: list[manifest_lib.Example],
            loaded: list[images_lib.LoadedImage], canvas: str = "pad") -> Prepared:
  """Puts every loaded image on its `canvas` ("pad" or "squeeze": `lr_common.canvas`),
  asks the editor for its conditioning, embeds the texts (and, for examples without a
  source prompt, the canvases: the closest ImageNet class names the source)."""
  if built.text_encoder is None:
    raise ValueError("These models have no CLIP tokenizer (random benchmark models): "
                     "prompts cannot be encoded.")
  editor, text = built.models.editor, built.text_encoder
  for im in loaded:
    for note in im.notes:
      logging.warning("%s: %s", im.path, note)
  pixels, layouts = canvas_lib.canvases([im.original for im in loaded], editor.image_size,
                                        editor.box_grid, canvas)
  text_embed = text([ex.prompt for ex in examples])   # once, batched
  cond = editor.condition(examples, text)
  need_zero_shot = [i for i, ex in enumerate(examples) if not ex.source_prompt]
  image_embed, class_emb = {}, None
  if need_zero_shot:
    chunks = []   # fixed batches: the image encoder compiles once
    for i in range(0, len(need_zero_shot), _IMAGE_BATCH):
      chunk = pixels[need_zero_shot[i:i + _IMAGE_BATCH]]
      padded = np.concatenate(
          [chunk, np.zeros((_IMAGE_BATCH - len(chunk),) + chunk.shape[1:], np.float32)])
      embeds, _ = _clip_images(built.models, {"clip": built.frozen["clip"]}, padded)
      chunks.append(np.asarray(embeds)[:len(chunk)])
    image_embed = dict(zip(need_zero_shot, np.concatenate(chunks)))
    class_emb = text.class_name_embeddings()
  sources = [imagenet.source_prompt(ex.source_prompt, image_embed.get(i), class_emb)
             for i, ex in enumerate(examples)]
  src_text_embed = text(sources)
  return Prepared(examples=list(examples), images=pixels,
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
