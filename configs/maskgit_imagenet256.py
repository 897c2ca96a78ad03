r"""The paper's MaskGIT setup: ImageNet-256 MaskGIT, DINO ViT-B/16, CLIP ViT-B/16.

K=4 anchors, M=7 boxes of 3..15 tokens, losses 1/1/1, quality score 2*S_t2i + S_i2i,
Adam 3e-3, 5 epochs. Weights are downloaded on first use.

  python -m lr_jax.train --config configs/maskgit_imagenet256.py \
      --workdir /tmp/lr_run --config.data.manifest=images/manifest.json

The optional argument picks the resolution: `configs/maskgit_imagenet256.py:512`
uses the ImageNet-512 MaskGIT checkpoints.
"""
import ml_collections

from lr_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  if arg in (None, "", "256"):
    c.editor.model = "imagenet256"
  elif arg == "512":
    c.editor.model = "imagenet512"
  else:
    raise ValueError(f"config argument must be 256 or 512, got {arg!r}")
  return c
