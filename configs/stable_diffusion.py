r"""The paper's method with Stable Diffusion inpainting as the editor (the official code's).

`:1.5` (default) is stable-diffusion-v1-5/stable-diffusion-inpainting (the mirror of the
runwayml checkpoint the official code loads), `:2` is stabilityai/stable-diffusion-2-
inpainting (what the official README now names). Edits are made at 512 x 512 px; the box
grid is 32 x 32 cells of 16 px (DINO ViT-B/16's patch grid at 512 px; 2 x 2 SD latents per
cell). As the official code: 50 steps, guidance 7.5, prompts sent as "a high quality image
of {prompt}.", the repo's own scheduler (DDIM for 1.5, PNDM for 2), no negative prompt.
Unlike it, the box is feathered into the photo (pixels beyond the edge stay the input's)
and the RGN trains through the edits.

Regions: K = 4 anchors, M = 7 square sides of 7, 11, ..., 31 cells on the 32-grid: odd
sides (centred on the anchor patch) covering the same shares of the image as the MaskGIT
configs' 3, 5, ..., 15 on their 16-grid (the official SD code: 6 sides of 8..28 cells).
Everything else as configs/maskgit_imagenet256.py. Weights come from the Hugging Face hub on
first use (float32: 4.3 GB for 1.5, 5.2 GB for 2; --config.editor.variant=fp16 for half), or
--config.editor.repo=DIR, a local copy of the repo's five subfolders.

  python -m lr_jax.edit --config configs/stable_diffusion.py --image cat.jpg \
      --prompt "a cat wearing sunglasses" --strategy search --out results/
  python -m lr_jax.train --config configs/stable_diffusion.py:2 --workdir runs/sd2 \
      --config.data.manifest=images/manifest.json
  python -m lr_jax.evaluate --config configs/stable_diffusion.py \
      --manifest images/manifest.json --out eval/
"""
import ml_collections

from lr_jax import defaults
from lr_jax import editors

MODELS = ("1.5", "2")
SIZES_32 = (7, 11, 15, 19, 23, 27, 31)   # M = 7 box sides on the 32 x 32 box grid


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model = "1.5" if arg in (None, "") else arg
  if model not in MODELS:
    raise ValueError(f"config argument must be one of {MODELS}, got {arg!r}")
  c = defaults.base_config()
  editors.use(c, "stable_diffusion")
  c.editor.model = model
  c.editor.resolution = 512
  c.region.num_anchors = 4
  c.region.sizes = SIZES_32
  return c
