r"""Tiny random models for the whole train + edit path, offline, on a CPU.

Builds small random DINO, CLIP and MaskGIT models (no weights, no network), so the
full pipeline runs in well under a minute. The edits are noise: this config checks
plumbing and speed, not quality.

  python -m lr_jax.train --config configs/tiny.py --workdir /tmp/lr_tiny
  python -m lr_jax.edit --config configs/tiny.py --image cat.png --prompt "a lion" --out /tmp/out
"""
import ml_collections

from lr_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = defaults.base_config()
  c.models = "tiny"
  c.maskgit.name = "tiny"                 # 64x64 images, 4x4 tokens
  c.region.num_anchors = 2
  c.region.sizes = (1, 2, 3)
  c.region.roi_size = 3
  c.rgn.conv_features = (8, 8)
  c.rgn.dense_features = 16
  c.edit.start_iter = 0
  c.edit.num_iter = 4
  c.edit.grow_tokens = 0                  # the 4x4 grid has no room to grow boxes
  c.train.epochs = 2
  c.train.batch_size = 1
  c.train.checkpoint_every = 2
  return c
