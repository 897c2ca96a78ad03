"""lr_jax.dataset: examples -> model-ready arrays (editor conditioning, text embeddings,
zero-shot source prompts) and the batch order of training."""
import dataclasses

import numpy as np
import pytest

from configs import tiny
from lr_jax import dataset
from lr_jax.encoders import imagenet
from lr_jax.files import manifest as manifest_lib
from lr_jax import samples
from lr_jax.models import build_models
from lr_jax.encoders.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def built():
  return build_models(tiny.get_config())


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  d = tmp_path_factory.mktemp("samples")
  return manifest_lib.read_manifest(samples.write_samples(d))


def test_prepare_gives_the_editor_conditioning_and_texts(built, examples):
  no_source = [dataclasses.replace(examples[0], source_prompt=None)] + examples[1:]
  prepared = dataset.prepare(built, no_source, dataset.load_images(no_source))
  assert prepared.images.shape == (2, 64, 64, 3) and prepared.images.dtype == np.float32
  assert prepared.cond["labels"].tolist() == [291 % 10, prepared.cond["labels"][1]]
  assert prepared.cond_records[0]["class"]["id"] == 291
  assert prepared.summaries[0] == "class 291 (lion)"
  # No source prompt: the zero-shot ImageNet class in CLIP's template.
  assert prepared.source_prompts[0].startswith("a photo of a")
  assert prepared.source_prompts[1] == "a photo of a cat"
  text = built.text_encoder
  np.testing.assert_array_equal(prepared.text_embed, text([e.prompt for e in examples]))
  np.testing.assert_array_equal(prepared.src_text_embed, text(prepared.source_prompts))
  batch = prepared.batch(np.asarray([1, 1, 0]))
  assert batch["images"].shape == (3, 64, 64, 3) and batch["cond"]["labels"].shape == (3,)


def test_prompt_without_a_close_class_is_an_error(examples):
  c = tiny.get_config()
  c.data.min_class_similarity = 0.9999
  bad = [manifest_lib.Example(examples[0].image_path, "zzqx blorp", None, None)]
  with pytest.raises(imagenet.PromptError, match="(?s)closest|similar"):
    dataset.prepare(build_models(c), bad, dataset.load_images(bad))


def test_text_encoder_encodes_each_prompt_and_the_class_names_once(built):
  calls = []
  real = built.text_encoder.tokenizer
  counting = lambda prompts, **kw: calls.append(list(prompts)) or real(prompts, **kw)
  text = TextEncoder(built.models.clip, built.frozen["clip"], counting)
  first = text(["a lion", "a tiger", "a lion"])
  np.testing.assert_array_equal(first[0], first[2])
  np.testing.assert_array_equal(first, built.text_encoder(["a lion", "a tiger", "a lion"]))
  assert len(calls) == 1
  np.testing.assert_array_equal(text(["a tiger"]), first[1:2])
  assert len(calls) == 1                       # seen before: not encoded again
  names = text.class_name_embeddings()
  assert names.shape == (1000, text.dim) and len(calls) == 21   # + 1000 / 50 prompts
  np.testing.assert_allclose(np.linalg.norm(names, axis=1), 1, rtol=1e-5)
  assert text.class_name_embeddings() is names and len(calls) == 21


def test_epochs_visit_every_example_once_and_fill_the_last_batch():
  n, bs = 5, 2
  assert dataset.steps_per_epoch(n, bs) == 3
  epoch0 = np.concatenate([dataset.batch_indices(0, s, n, bs) for s in range(3)])
  assert sorted(epoch0[:5].tolist()) == list(range(5))
  assert epoch0[5] == epoch0[0]
  epoch1 = np.concatenate([dataset.batch_indices(0, s, n, bs) for s in range(3, 6)])
  assert not np.array_equal(epoch0, epoch1)   # reshuffled per epoch, fixed by the seed
  np.testing.assert_array_equal(epoch1, np.concatenate(
      [dataset.batch_indices(0, s, n, bs) for s in range(3, 6)]))
