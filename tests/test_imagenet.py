"""Tests for lr_jax.encoders.imagenet: the class table and prompt -> class matching."""
import re

import numpy as np
import pytest

from lr_jax.encoders import imagenet
from lr_jax.encoders.imagenet import PromptError, match_prompt

# Well-known ImageNet-1k ids (standard sorted-wnid order).
ANCHORS = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"), 7: ("n01514668", "cock"),
           207: ("n02099601", "golden retriever"), 281: ("n02123045", "tabby"),
           285: ("n02124075", "Egyptian cat"), 291: ("n02129165", "lion"),
           340: ("n02391049", "zebra"), 409: ("n02708093", "analog clock"),
           430: ("n02802426", "basketball"), 817: ("n04285008", "sports car"),
           948: ("n07742313", "Granny Smith"), 999: ("n15075141", "toilet tissue")}


def test_table_has_1000_unique_rows_and_anchors():
  classes = imagenet.load_classes()
  assert len(classes) == 1000
  assert [c.index for c in classes] == list(range(1000))
  assert len({c.wnid for c in classes}) == 1000
  assert [c.wnid for c in classes] == sorted(c.wnid for c in classes)
  names = imagenet.class_names()
  assert len({n.lower() for n in names}) == 1000
  for index, (wnid, name) in ANCHORS.items():
    assert classes[index].wnid == wnid
    assert names[index] == name
  assert "tabby cat" in classes[281].lemmas
  assert "rooster" in classes[7].aliases


@pytest.mark.parametrize("prompt, class_id, method", [
    ("a lion", 291, "exact"),
    ("A photo of a Lion!", 291, "exact"),
    ("lions", 291, "exact"),
    ("the Egyptian cat", 285, "exact"),
    ("a rooster", 7, "synonym"),
    ("Rooster.", 7, "synonym"),
    ("a tabby cat", 281, "synonym"),
    ("king of beasts", 291, "synonym"),
    ("mountain lions", 286, "synonym"),
])
def test_name_matches(prompt, class_id, method):
  match = match_prompt(prompt)
  assert (match.class_id, match.method) == (class_id, method)
  assert match.name == imagenet.class_names()[class_id]
  assert match.top5[0] == (class_id, match.name, 1.0)


def test_explicit_class_id_overrides_prompt_and_is_validated():
  match = match_prompt("a lion", class_id=7)
  assert (match.class_id, match.name, match.method) == (7, "cock", "id")
  assert match_prompt("", class_id=np.int64(285)).class_id == 285
  for bad in (-1, 1000, "7", 3.0, True):
    with pytest.raises(PromptError, match="class_id"):
      match_prompt("a lion", class_id=bad)


@pytest.mark.parametrize("prompt", ["", "   ", None, "?!"])
def test_empty_prompt(prompt):
  with pytest.raises(PromptError):
    match_prompt(prompt)
  assert issubclass(PromptError, ValueError)


def test_no_match_without_encoder_lists_suggestions():
  with pytest.raises(PromptError) as info:
    match_prompt("cat face")
  message = str(info.value)
  assert "cat face" in message and "closest" in message
  suggested = [int(i) for i in re.findall(r"'(\d+) [^']*'", message)]
  assert len(suggested) == 5
  classes = imagenet.load_classes()
  for cid in suggested:  # every suggestion shares a word with the prompt
    words = {w for t in (classes[cid].name,) + classes[cid].lemmas
             for w in t.lower().replace("-", " ").split()}
    assert words & {"cat", "face"}, classes[cid]
  assert len(set(suggested) & {281, 282, 283, 284, 285}) >= 2


def test_ambiguous_synonym_lists_all_candidates():
  match = match_prompt("a crane")
  assert match.method == "synonym"
  assert {cid for cid, _, _ in match.top5} == {134, 517}
  assert match.class_id == 134


def test_ambiguous_synonym_with_class_embeddings_but_no_encoder():
  # Precomputed class embeddings cannot embed the prompt: keep the name match.
  embeds = np.eye(1000, dtype=np.float32)
  match = match_prompt("a crane", class_embeds=embeds)
  assert match.method == "synonym" and match.class_id == 134
  assert match_prompt("a lion", class_embeds=embeds).class_id == 291


class FakeTextEncoder:
  """Class prompts map to one-hot vectors; chosen prompts to fixed mixtures."""

  def __init__(self, custom):
    self.names = imagenet.class_names()
    self.index = {imagenet.CLASS_PROMPT_TEMPLATE.format(n): i
                  for i, n in enumerate(self.names)}
    self.custom = custom
    self.calls = 0

  def __call__(self, prompts):
    self.calls += 1
    out = np.zeros((len(prompts), 1000), np.float32)
    for row, prompt in enumerate(prompts):
      if prompt in self.index:
        out[row, self.index[prompt]] = 3.0  # unnormalized on purpose
      else:
        for cid, weight in self.custom[prompt].items():
          out[row, cid] = weight
    return out


def test_clip_match_top5_order_and_similarities():
  weights = {285: 0.9, 281: 0.5, 282: 0.3, 7: 0.2, 291: 0.1, 0: 0.05}
  encoder = FakeTextEncoder({"cat face": weights})
  match = match_prompt("cat face", text_encoder=encoder)
  norm = np.sqrt(sum(w * w for w in weights.values()))
  assert match.method == "clip" and match.class_id == 285
  assert [cid for cid, _, _ in match.top5] == [285, 281, 282, 7, 291]
  np.testing.assert_allclose([s for _, _, s in match.top5],
                             [w / norm for w in (0.9, 0.5, 0.3, 0.2, 0.1)], rtol=1e-5)
  assert [n for _, n, _ in match.top5][:2] == ["Egyptian cat", "tabby"]
  # Precomputed class embeddings (or a function giving them): only the prompt is embedded.
  embeds = imagenet.class_text_embeddings(encoder)
  calls = encoder.calls
  assert match_prompt("cat face", text_encoder=encoder, class_embeds=lambda: embeds) == match
  assert encoder.calls == calls + 1
  assert match_prompt("a lion", text_encoder=encoder,
                      class_embeds=lambda: 1 / 0).class_id == 291   # not needed: not called
  with pytest.raises(PromptError) as info:
    match_prompt("cat face", text_encoder=encoder, min_similarity=0.95)
  assert "Egyptian cat" in str(info.value) and "0.8" in str(info.value)


def test_clip_breaks_synonym_ties():
  encoder = FakeTextEncoder({"a crane": {517: 1.0, 134: 0.4}})
  match = match_prompt("a crane", text_encoder=encoder)
  assert (match.class_id, match.method) == (517, "synonym")


def test_zero_shot_class_and_source_prompt():
  rng = np.random.default_rng(0)
  class_embeds = rng.normal(size=(1000, 16)).astype(np.float32)
  image = 2.0 * class_embeds[291] / np.linalg.norm(class_embeds[291])
  image += 0.01 * rng.normal(size=16).astype(np.float32)
  unit = class_embeds / np.linalg.norm(class_embeds, axis=1, keepdims=True)
  expected = int(np.argmax(unit @ (image / np.linalg.norm(image))))
  names = imagenet.class_names()
  assert imagenet.zero_shot_class(image, class_embeds) == (expected, names[expected])
  assert expected == 291
  assert imagenet.source_prompt(" a cat ", image, class_embeds) == "a cat"
  assert imagenet.source_prompt(None, image, class_embeds) == "a photo of a lion."
  with pytest.raises(PromptError):
    imagenet.source_prompt(None)
  with pytest.raises(ValueError):
    imagenet.zero_shot_class(image, class_embeds[:10])
