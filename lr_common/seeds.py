"""Random seeds of any size: every integer a user types gives its own JAX key.

`jax.random.PRNGKey(seed)` only tells seeds in [0, 2**32) apart: 2**32 gives seed 0's
key, -1 gives 2**32 - 1's, and a seed past 64 bits is an OverflowError. Here a seed in
that range keeps exactly the key it always had (`PRNGKey(seed)`, so earlier results
reproduce), and any other integer (negative, or 2**32 and up) is folded into a key
word by word (its sign, its number of 32-bit words, then the words), so no bit of it
is lost. The records keep the seed as given and `describe(seed)` says how its key was
made. `numpy_rng` does the same for NumPy generators.
"""
from __future__ import annotations

import operator

import jax
import numpy as np

from lr_common.errors import UserError

KEY_RANGE = (0, 2**32)   # seeds whose key is PRNGKey(seed), as in every earlier run
_WIDE = 0x5EED           # the root key of the seeds outside KEY_RANGE


class SeedError(UserError, TypeError):
  """A seed that is not an integer."""


def check_seed(seed, what: str = "seed") -> int:
  """The seed as an int (any size); a bool, a float or a text is a SeedError."""
  if isinstance(seed, (bool, np.bool_)):
    raise SeedError(f"{what} must be an integer, got {seed!r}")
  try:
    return operator.index(seed)
  except TypeError:
    raise SeedError(f"{what} must be an integer, got {seed!r}") from None


def _words(seed: int) -> list[int]:
  """Sign, word count, then the 32-bit words of |seed| (least significant first)."""
  magnitude, words = abs(seed), []
  while magnitude:
    words.append(magnitude & 0xFFFFFFFF)
    magnitude >>= 32
  return [1 if seed < 0 else 0, len(words)] + words


def in_key_range(seed: int) -> bool:
  return KEY_RANGE[0] <= seed < KEY_RANGE[1]


def prng_key(seed) -> jax.Array:
  """The JAX key of an integer seed of any size (`PRNGKey(seed)` in [0, 2**32))."""
  seed = check_seed(seed)
  if in_key_range(seed):
    return jax.random.PRNGKey(seed)
  key = jax.random.PRNGKey(_WIDE)
  for word in _words(seed):
    key = jax.random.fold_in(key, np.uint32(word))
  return key


def describe(seed: int) -> str:
  """How the key of `seed` is made, for records: `PRNGKey(7)`, or
  `lr_common.seeds.prng_key(-1)` for a seed outside [0, 2**32)."""
  return f"PRNGKey({seed})" if in_key_range(seed) else f"lr_common.seeds.prng_key({seed})"


def numpy_rng(seed, *more: int) -> np.random.Generator:
  """A NumPy generator fixed by (seed, *more): `default_rng([seed, *more])` for seeds
  in [0, 2**32), as always; any other integer through all of its words."""
  seed = check_seed(seed)
  if in_key_range(seed):
    return np.random.default_rng([seed, *more])
  return np.random.default_rng(np.random.SeedSequence(
      [_WIDE, *_words(seed)], spawn_key=tuple(int(m) for m in more)))
