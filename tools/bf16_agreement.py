r"""How often MaskGIT's bfloat16 edits pick the same tokens as float32, on many boxes.

  python -m lr_common.cpu_matmul.build       # once: the bf16 products on oneDNN
  python tools/bf16_agreement.py --boxes 8 --seeds 0,1,2,3 [--config imagenet256]

For each seed: random weights at the config's full size, a random image, `--boxes`
boxes of varied sizes (`bench_boxes`) and one key per box; every box is edited in
float32 and in bfloat16 (`cpu_matmul="auto"`: oneDNN where built, else XLA) with the
same keys. Printed: per seed and over all, the share of the regenerated tokens (those
under the boxes' masks) that are equal, with a 95% interval (Wilson). No timing: run it
beside anything.
"""
from __future__ import annotations

import math
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from lr_common import cpu_matmul
from lr_common.benchmarking import bench_boxes
from maskgit import checkpoints, configs, editing

_BOXES = flags.DEFINE_integer("boxes", 8, "Boxes per seed (one editing call each dtype).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3"], "Seeds of weights, image, boxes, keys.")
_CONFIG = flags.DEFINE_string("config", "imagenet256", "MaskGIT config name.")


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
  """The 95% Wilson score interval of a share `hits / total`."""
  if total == 0:
    return 0.0, 1.0
  p = hits / total
  centre = (p + z * z / (2 * total)) / (1 + z * z / total)
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
  return max(0.0, centre - half), min(1.0, centre + half)


def seed_agreement(config: configs.MaskGITConfig, seed: int, num_boxes: int) -> tuple[int, int]:
  """(equal, edited) token counts of one seed's boxes, bfloat16 against float32."""
  tok, tr = checkpoints.init_params(config, jax.random.PRNGKey(seed))
  size, side = config.image_size, config.tokens_per_side
  image = jax.random.uniform(jax.random.PRNGKey(seed + 1), (1, size, size, 3))
  boxes = bench_boxes(num_boxes, side, seed + num_boxes)
  labels = jnp.array([seed % config.transformer.num_class], jnp.int32)
  keys = editing.box_keys(jax.random.PRNGKey(seed + 2), 1, num_boxes)
  tokens = {}
  for dtype, params in (("float32", tr), ("bfloat16", editing.cast_params(tr, jnp.bfloat16))):
    editor = editing.make_editor(config, editing.EditConfig(dtype=dtype, cpu_matmul="auto"))
    out = jax.block_until_ready(editor(tok, params, image, boxes, labels, keys))
    tokens[dtype] = np.asarray(out["tokens"])
    mask = np.asarray(out["token_mask"]).reshape(tokens[dtype].shape)
  same = tokens["bfloat16"] == tokens["float32"]
  return int(same[mask].sum()), int(mask.sum())


def main(argv: Sequence[str]) -> None:
  del argv
  config = configs.get_config(_CONFIG.value)
  usable, what = cpu_matmul.status()
  print(f"bfloat16 products: {what if usable else 'XLA (' + what + ')'}")
  print(f"{'seed':>5} {'edited tokens':>13} {'equal':>8} {'95% interval':>17}")
  total_hits = total = 0
  for seed in map(int, _SEEDS.value):
    hits, count = seed_agreement(config, seed, _BOXES.value)
    low, high = wilson(hits, count)
    print(f"{seed:>5} {count:>13} {hits / count:8.4f} {low:8.4f}..{high:.4f}", flush=True)
    total_hits, total = total_hits + hits, total + count
  low, high = wilson(total_hits, total)
  print(f"{'all':>5} {total:>13} {total_hits / total:8.4f} {low:8.4f}..{high:.4f}")


if __name__ == "__main__":
  app.run(main)
