r"""Tiny random models for the whole train + edit path, offline, on a CPU.

Builds small random DINO, CLIP and MaskGIT models (no weights, no network), so the
full pipeline runs in well under a minute. The edits are noise: this config checks
plumbing and speed, not quality.

Without data flags it trains on the shipped sample (`data.samples=True`: the
scikit-image cat photo "chelsea" edited into "a lion" and "cat face", written
once to ~/.cache/lr_jax/samples or $LR_JAX_SAMPLES_DIR by `lr_jax.samples`);
`--config.data.manifest=FILE` or `--config.data.image_dir=DIR
--config.data.prompt=TEXT` take precedence.

  python -m lr_jax.train --config configs/tiny.py --workdir /tmp/lr_tiny
  python -m lr_jax.edit --config configs/tiny.py --image cat.png --prompt "a lion" \
      --out /tmp/out --rgn_checkpoint /tmp/lr_tiny
"""
import ml_collections

from lr_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = defaults.base_config()
  c.models = "tiny"
  c.editor.model = "tiny"                 # 64x64 images, 4x4 tokens
  c.region.num_anchors = 2
  c.region.sizes = (1, 2, 3)
  c.region.roi_size = 3
  c.rgn.conv_features = (8, 8)
  c.rgn.dense_features = 16
  c.editor.start_iter = 0
  c.editor.num_iter = 4
  c.editor.grow_tokens = 0                  # the 4x4 grid has no room to grow boxes
  c.editor.dtype = "float32"                # the same numbers on every CPU ("auto": bf16 where fast)
  c.train.epochs = 2
  c.train.batch_size = 1
  c.train.checkpoint_every = 2
  c.data.samples = True                   # the shipped sample unless data is given
  return c
