"""Random parameters for a tree of shapes, drawn with numpy (nothing is compiled)."""
from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def draw_params(abstract: Any, rng: jax.Array,
                std_of: Callable[[Tuple[int, ...]], float]) -> Any:
  """Random params for a tree of `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape`).

  Leaves named `scale` are 1, `bias` 0, the rest N(0, std_of(shape)). The numpy
  generator is seeded from the key's data: the same key gives the same params.
  """
  key = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  gen = np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())

  def leaf(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return jnp.ones(x.shape, jnp.float32)
    if name == "bias":
      return jnp.zeros(x.shape, jnp.float32)
    return jnp.asarray(gen.normal(0.0, std_of(x.shape), x.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(leaf, abstract)
