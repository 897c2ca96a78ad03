r"""The paper's method with aMUSEd as the editor: free-text prompts, CLIP-L text encoder.

amused/amused-256 (16x16 tokens; `configs/amused.py:512` for amused/amused-512, 32x32),
DINO ViT-B/16 and CLIP ViT-B/16; everything else as configs/maskgit_imagenet256.py.
Weights come from the Hugging Face hub on first use (or --config.editor.repo=DIR, a
local copy of the repo; --config.editor.variant=fp16 for the half-size files).

  python -m lr_jax.edit --config configs/amused.py --image cat.jpg \
      --prompt "a cat wearing sunglasses" --refine_steps 10 --out results/
  python -m lr_jax.train --config configs/amused.py --workdir /tmp/lr_amused \
      --config.data.manifest=images/manifest.json
"""
import ml_collections

from lr_jax import defaults
from lr_jax import editors


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  editors.use(c, "amused")
  if arg in (None, "", "256"):
    c.editor.resolution = 256
  elif arg == "512":
    c.editor.resolution = 512
  else:
    raise ValueError(f"config argument must be 256 or 512, got {arg!r}")
  return c
