"""Free-text conditioning, shared by the editors whose generator has its own CLIP text
encoder (aMUSEd, Stable Diffusion): the prompt (in the editor's template) and the negative
prompt tokenized as the diffusers pipelines do, and a record of what conditioned the edit."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from lr_common.errors import PromptError
from lr_jax.editors import base


def tokenize(tokenizer: Any, texts: Sequence[str], length: int,
             editor: str) -> tuple[np.ndarray, list[bool]]:
  """(N, length) int32 ids as the pipelines tokenize (padded to `length`, truncated), and
  whether each text was truncated."""
  if tokenizer is None:
    raise ValueError(f"this {editor} editor has no tokenizer (make() or random weights): "
                     f"build it with official or tiny weights to encode prompts")
  ids = tokenizer(list(texts), padding="max_length", max_length=length,
                  truncation=True, return_tensors="np")["input_ids"]
  full = tokenizer(list(texts), verbose=False)["input_ids"]
  return np.asarray(ids, np.int32), [len(f) > length for f in full]


def condition(examples: Sequence[Any], *, editor: str,
              tokenize_fn: Callable[[Sequence[str]], tuple[np.ndarray, list[bool]]],
              negative_prompt: str, guidance_scale: float, max_length: int,
              template: Callable[[str], str] | None = None) -> base.Conditioning:
  """The conditioning arrays (`prompt_ids`, `negative_ids`) of a batch of examples, one
  `text_condition` record each (with `prompt_as_sent` when a `template` rewrites the
  prompt) and one summary line each."""
  empty = [str(ex.image_path) for ex in examples if not ex.prompt.strip()]
  if empty:
    raise PromptError(f"the {editor} editor needs a text prompt (a class_id alone is "
                      f"MaskGIT's conditioning); none for {', '.join(empty)}")
  ignored = [str(ex.image_path) for ex in examples if ex.class_id is not None]
  if ignored:
    logging.warning("%s conditions on the prompt text; class_id ignored for %s", editor,
                    ", ".join(ignored))
  prompts = [ex.prompt for ex in examples]
  sent = [template(p) for p in prompts] if template else prompts
  prompt_ids, truncated = tokenize_fn(sent)
  negative_ids, _ = tokenize_fn([negative_prompt] * len(prompts))
  records = []
  for p, s, t in zip(prompts, sent, truncated):
    record = {"prompt": p, **({"prompt_as_sent": s} if template else {}),
              "negative_prompt": negative_prompt, "guidance_scale": guidance_scale,
              "truncated_to_tokens": max_length if t else None}
    records.append({"text_condition": record})
  summaries = [f"prompt {s!r}" + (" (truncated)" if t else "") for s, t in zip(sent, truncated)]
  return base.Conditioning({"prompt_ids": prompt_ids, "negative_ids": negative_ids},
                           records, summaries)
