"""Sizes of the official MaskGIT models (VQGAN tokenizer + class-conditional transformer).

The ImageNet sizes follow google-research/maskgit (``vqgan_config`` and
``maskgit_class_cond_config``); they reproduce the parameter trees of the released
checkpoints exactly. ``tiny`` is the configuration of the official-output fixtures
in ``tests/fixtures/maskgit_official_tiny``.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

MASK_TOKEN_ID = -1


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """VQGAN tokenizer sizes (encoder/decoder with GroupNorm + swish, VQ codebook)."""
  image_size: int = 256
  filters: int = 128
  channel_multipliers: Tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  embedding_dim: int = 256
  codebook_size: int = 1024

  def __post_init__(self):
    object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
    if not self.channel_multipliers:
      raise ValueError("channel_multipliers must not be empty")
    if self.image_size % self.downsample_factor:
      raise ValueError(
          f"image_size {self.image_size} is not divisible by the tokenizer's "
          f"downsampling factor {self.downsample_factor}")

  @property
  def downsample_factor(self) -> int:
    """Pixels per token along one side (2 per resolution level but the last)."""
    return 2 ** (len(self.channel_multipliers) - 1)

  @property
  def tokens_per_side(self) -> int:
    return self.image_size // self.downsample_factor


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Bidirectional (BERT-style) transformer sizes of the official MaskGIT."""
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  sequence_length: int
  codebook_size: int
  num_class: int
  hidden_dropout_prob: float = 0.1
  attention_dropout_prob: float = 0.1
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    # Vocabulary: image codes, then one token per class, then the mask token (last row).
    if self.vocab_size != self.codebook_size + self.num_class + 1:
      raise ValueError(
          f"vocab_size {self.vocab_size} != codebook_size + num_class + 1 "
          f"({self.codebook_size} + {self.num_class} + 1)")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class MaskGITConfig:
  """A tokenizer and a transformer that work together."""
  name: str
  tokenizer: TokenizerConfig
  transformer: TransformerConfig

  def __post_init__(self):
    if self.transformer.codebook_size != self.tokenizer.codebook_size:
      raise ValueError("tokenizer and transformer codebook sizes differ")
    if self.transformer.sequence_length != self.tokens_per_side ** 2 + 1:
      raise ValueError(
          f"transformer sequence_length {self.transformer.sequence_length} != "
          f"tokens_per_side**2 + 1 = {self.tokens_per_side ** 2 + 1}")

  @property
  def image_size(self) -> int:
    return self.tokenizer.image_size

  @property
  def tokens_per_side(self) -> int:
    return self.tokenizer.tokens_per_side

  @property
  def codebook_size(self) -> int:
    return self.tokenizer.codebook_size

  @property
  def mask_token_id(self) -> int:
    return MASK_TOKEN_ID

  def class_token(self, label):
    """Token id of class ``label`` (ints or integer arrays): ``label + codebook_size``."""
    return label + self.tokenizer.codebook_size


def _imagenet(image_size: int) -> MaskGITConfig:
  tokenizer = TokenizerConfig(image_size=image_size)
  side = tokenizer.tokens_per_side
  transformer = TransformerConfig(
      vocab_size=tokenizer.codebook_size + 1000 + 1,
      hidden_size=768,
      num_layers=24,
      num_heads=16,
      intermediate_size=3072,
      sequence_length=side * side + 1,
      codebook_size=tokenizer.codebook_size,
      num_class=1000)
  return MaskGITConfig(f"imagenet{image_size}", tokenizer, transformer)


def _tiny() -> MaskGITConfig:
  tokenizer = TokenizerConfig(
      image_size=64, filters=32, channel_multipliers=(1, 1, 2, 2, 4),
      num_res_blocks=2, embedding_dim=32, codebook_size=64)
  transformer = TransformerConfig(
      vocab_size=75, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
      sequence_length=17, codebook_size=64, num_class=10)
  return MaskGITConfig("tiny", tokenizer, transformer)


_CONFIGS = {
    "imagenet256": lambda: _imagenet(256),
    "imagenet512": lambda: _imagenet(512),
    "tiny": _tiny,
}

CONFIG_NAMES = tuple(_CONFIGS)


def get_config(name: str) -> MaskGITConfig:
  """Returns the named configuration: one of ``CONFIG_NAMES``."""
  if name not in _CONFIGS:
    raise ValueError(
        f"unknown MaskGIT config {name!r}; valid names: {', '.join(CONFIG_NAMES)}")
  return _CONFIGS[name]()
