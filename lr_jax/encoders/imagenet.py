"""ImageNet-1k class table and matching of a free-text prompt to a class id.

MaskGIT is class-conditional, so an edit prompt ("a lion") must become one of
the 1000 ImageNet classes. `match_prompt` tries, in order: an explicit class
id, an exact readable-name match, a WordNet lemma / alias match, then the
nearest class by CLIP text embedding (when a text encoder is given).

The table (lr_jax/data/imagenet_classes.tsv) is written by
tools/make_imagenet_classes.py from the WordNet data shipped with timm.
"""
import dataclasses
import difflib
import functools
import pathlib
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from lr_common.errors import PromptError  # pylint: disable=unused-import (re-exported)

NUM_CLASSES = 1000
CLASS_PROMPT_TEMPLATE = "a photo of a {}."
TextEncoder = Callable[[Sequence[str]], jnp.ndarray]
"""Maps N prompts to (N, P) CLIP text embeddings (normalized or not)."""

_TABLE_PATH = pathlib.Path(__file__).parents[1] / "data" / "imagenet_classes.tsv"
_LEADING_PHRASES = (
    "a high quality photo of", "a photo of", "a picture of", "an image of",
    "a photograph of", "photo of", "picture of", "image of")
_ARTICLES = ("a", "an", "the")


@dataclasses.dataclass(frozen=True)
class ImageNetClass:
  index: int
  wnid: str
  name: str
  lemmas: Tuple[str, ...]
  aliases: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ClassMatch:
  """Result of `match_prompt`.

  method is "id" (explicit class id), "exact" (readable name), "synonym"
  (WordNet lemma or alias) or "clip" (nearest CLIP text embedding). top5 lists
  (class_id, name, similarity): cosine similarities for "clip"; for the other
  methods the matched class first with similarity 1.0 (plus any other classes
  sharing the same synonym, also 1.0).
  """
  class_id: int
  name: str
  method: str
  top5: List[Tuple[int, str, float]]


@functools.lru_cache(maxsize=1)
def load_classes() -> Tuple[ImageNetClass, ...]:
  """The 1000 classes in class-id order."""
  lines = _TABLE_PATH.read_text(encoding="utf-8").splitlines()
  header = lines[0].split("\t")
  if header != ["index", "wnid", "name", "lemmas", "aliases"]:
    raise ValueError(f"unexpected header in {_TABLE_PATH}: {header}")
  classes = []
  for line in lines[1:]:
    index, wnid, name, lemmas, aliases = line.split("\t")
    classes.append(ImageNetClass(
        int(index), wnid, name, tuple(t for t in lemmas.split("|") if t),
        tuple(t for t in aliases.split("|") if t)))
  if [c.index for c in classes] != list(range(NUM_CLASSES)):
    raise ValueError(f"{_TABLE_PATH} must list class ids 0..999 in order")
  return tuple(classes)


def class_names() -> List[str]:
  """Readable names of the 1000 classes, indexed by class id."""
  return [c.name for c in load_classes()]


def normalize_prompt(prompt: str) -> str:
  """Lowercases, drops punctuation, 'a photo of'-style prefixes and articles."""
  text = prompt.lower().replace("'", "")
  text = re.sub(r"[^0-9a-z]+", " ", text).strip()
  changed = True
  while changed:
    changed = False
    for phrase in _LEADING_PHRASES:
      if text == phrase or text.startswith(phrase + " "):
        text, changed = text[len(phrase):].strip(), True
    words = text.split(" ")
    if len(words) > 1 and words[0] in _ARTICLES:
      text, changed = " ".join(words[1:]), True
  return text


def _singular_forms(text: str) -> List[str]:
  """Naive singulars of the last word: lions -> lion, foxes -> fox, ..."""
  forms = []
  head, _, last = text.rpartition(" ")
  prefix = head + " " if head else ""
  if last.endswith("ies") and len(last) > 4:
    forms.append(prefix + last[:-3] + "y")
  if last.endswith("es") and len(last) > 3:
    forms.append(prefix + last[:-2])
  if last.endswith("s") and not last.endswith("ss") and len(last) > 2:
    forms.append(prefix + last[:-1])
  return forms


@functools.lru_cache(maxsize=1)
def _lookup_tables() -> Tuple[Dict[str, int], Dict[str, List[int]]]:
  exact: Dict[str, int] = {}
  synonym: Dict[str, List[int]] = {}
  for c in load_classes():
    exact[normalize_prompt(c.name)] = c.index
    for word in c.lemmas + c.aliases:
      ids = synonym.setdefault(normalize_prompt(word), [])
      if c.index not in ids:
        ids.append(c.index)
  return exact, synonym


def _name_match(text: str) -> Optional[Tuple[str, List[int]]]:
  exact, synonym = _lookup_tables()
  for candidate in [text] + _singular_forms(text):
    if candidate in exact:
      return "exact", [exact[candidate]]
  for candidate in [text] + _singular_forms(text):
    if candidate in synonym:
      return "synonym", synonym[candidate]
  return None


def class_text_embeddings(text_encoder: TextEncoder,
                          template: str = CLASS_PROMPT_TEMPLATE,
                          batch_size: int = 250) -> jnp.ndarray:
  """(1000, P) L2-normalized CLIP embeddings of `template.format(name)`.

  Not cached here: `lr_jax.encoders.text_encoder.TextEncoder.class_name_embeddings` keeps them.
  """
  prompts = [template.format(name) for name in class_names()]
  chunks = [np.asarray(text_encoder(prompts[i:i + batch_size]))
            for i in range(0, len(prompts), batch_size)]
  embeds = np.concatenate(chunks, axis=0)
  if embeds.shape[0] != NUM_CLASSES or embeds.ndim != 2:
    raise ValueError(f"text encoder returned {embeds.shape} for {NUM_CLASSES} prompts")
  return jnp.asarray(_unit_rows(embeds))


def _unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _suggestions(text: str, count: int = 5) -> List[str]:
  """Closest classes by string similarity (no encoder needed).

  Ranks by the fraction of the prompt's words found in a class name or lemma,
  then by difflib's character similarity.
  """
  words = set(text.split())
  best: Dict[int, float] = {}
  for c in load_classes():
    for key in {normalize_prompt(w) for w in (c.name,) + c.lemmas + c.aliases}:
      overlap = len(words & set(key.split())) / max(len(words), 1)
      ratio = difflib.SequenceMatcher(None, text, key).ratio()
      best[c.index] = max(best.get(c.index, 0.0), overlap + 0.5 * ratio)
  ranked = sorted(best, key=lambda i: (-best[i], i))[:count]
  names = class_names()
  return [f"{i} {names[i]}" for i in ranked]


def match_prompt(prompt: str, text_encoder: Optional[TextEncoder] = None,
                 class_id: Optional[int] = None,
                 min_similarity: Optional[float] = None,
                 class_embeds: Optional[jnp.ndarray] = None,
                 prompt_embed: Optional[np.ndarray] = None) -> ClassMatch:
  """Turns an edit prompt into an ImageNet class for class-conditional MaskGIT.

  Args:
    prompt: the edit text, e.g. "a lion".
    text_encoder: optional CLIP text encoder for the nearest-class fallback.
    class_id: explicit class id 0..999; overrides the prompt.
    min_similarity: reject a CLIP match whose cosine similarity is lower.
    class_embeds: precomputed (1000, P) class embeddings, or a function returning
      them (called only when a CLIP match is needed); else computed with
      `class_text_embeddings(text_encoder)`.
    prompt_embed: the prompt's CLIP text embedding (P,), if already computed.

  Raises:
    PromptError: empty prompt, bad class id, or no acceptable match; the
      message lists the closest classes.
  """
  names = class_names()
  if class_id is not None:
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) \
        or not 0 <= int(class_id) < NUM_CLASSES:
      raise PromptError(f"class_id must be an int in 0..{NUM_CLASSES - 1}, got {class_id!r}")
    cid = int(class_id)
    return ClassMatch(cid, names[cid], "id", [(cid, names[cid], 1.0)])
  if not isinstance(prompt, str) or not prompt.strip():
    raise PromptError("the edit prompt is empty: give a text such as 'a lion' "
                      "or an explicit ImageNet class id")
  text = normalize_prompt(prompt)
  if not text:
    raise PromptError(f"the edit prompt {prompt!r} has no words after removing "
                      "punctuation and articles")
  found = _name_match(text)
  if found is not None:
    method, ids = found
    if len(ids) > 1 and text_encoder is not None:  # the prompt itself must be embedded
      ranked = _rank_by_clip(prompt, text_encoder, class_embeds, prompt_embed)
      order = {cid: rank for rank, (cid, _, _) in enumerate(ranked)}
      ids = sorted(ids, key=lambda cid: order[cid])
    top = [(cid, names[cid], 1.0) for cid in ids[:5]]
    return ClassMatch(ids[0], names[ids[0]], method, top)
  if text_encoder is None and class_embeds is None:
    raise PromptError(
        f"no ImageNet class matches the prompt {prompt!r} by name, and no CLIP "
        f"text encoder was given; closest class names: {_suggestions(text)}")
  ranked = _rank_by_clip(prompt, text_encoder, class_embeds, prompt_embed)
  top5 = ranked[:5]
  if min_similarity is not None and top5[0][2] < min_similarity:
    listed = ", ".join(f"{cid} {name} ({sim:.3f})" for cid, name, sim in top5)
    raise PromptError(
        f"no ImageNet class is close enough to {prompt!r} (best cosine "
        f"similarity {top5[0][2]:.3f} < {min_similarity}); closest: {listed}")
  return ClassMatch(top5[0][0], top5[0][1], "clip", top5)


def _rank_by_clip(prompt: str, text_encoder: Optional[TextEncoder],
                  class_embeds: Optional[jnp.ndarray],
                  prompt_embed: Optional[np.ndarray] = None
                  ) -> List[Tuple[int, str, float]]:
  """All classes sorted by cosine similarity to the prompt's text embedding."""
  if class_embeds is None:
    class_embeds = class_text_embeddings(text_encoder)
  elif callable(class_embeds):
    class_embeds = class_embeds()
  if prompt_embed is None:
    if text_encoder is None:
      raise PromptError("a text encoder is needed to embed the prompt")
    prompt_embed = text_encoder([prompt])
  query = _unit_rows(np.asarray(prompt_embed).reshape(1, -1))[0]
  sims = _unit_rows(np.asarray(class_embeds)) @ query
  order = np.argsort(-sims, kind="stable")
  names = class_names()
  return [(int(i), names[i], float(sims[i])) for i in order]


def zero_shot_class(image_embed: jnp.ndarray, class_text_embeds: jnp.ndarray
                    ) -> Tuple[int, str]:
  """Best ImageNet class for an image by CLIP zero-shot (cosine argmax)."""
  image = _unit_rows(np.asarray(image_embed).reshape(1, -1))[0]
  classes = np.asarray(class_text_embeds)
  if classes.shape != (NUM_CLASSES, image.shape[0]):
    raise ValueError(f"class_text_embeds must be ({NUM_CLASSES}, {image.shape[0]}), "
                     f"got {classes.shape}")
  best = int(np.argmax(_unit_rows(classes) @ image))
  return best, class_names()[best]


def source_prompt(user_source: Optional[str] = None,
                  image_embed: Optional[jnp.ndarray] = None,
                  class_text_embeds: Optional[jnp.ndarray] = None,
                  template: str = CLASS_PROMPT_TEMPLATE) -> str:
  """T_src for the directional loss.

  The user's source prompt if given (non-empty), else `template` filled with
  the zero-shot ImageNet class of the source image (needs `image_embed` (P,)
  and `class_text_embeds` (1000, P)).
  """
  if user_source is not None and user_source.strip():
    return user_source.strip()
  if image_embed is None or class_text_embeds is None:
    raise PromptError("no source prompt given: pass one, or the source image "
                      "embedding and the class text embeddings for zero-shot")
  _, name = zero_shot_class(image_embed, class_text_embeds)
  return template.format(name)
