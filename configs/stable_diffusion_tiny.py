r"""configs/tiny.py with a tiny random Stable Diffusion inpainting model as the editor.

Small random DINO, CLIP and SD (UNet, VAE, CLIP text tower with the offline byte
tokenizer): 64 x 64 images, 16 x 16 latents, an 8 x 8 box grid (the tiny DINO's patch grid
at 64 px; 2 x 2 latents per cell, SD's ratio at 512 px), 3 DPM-Solver++ steps. The edits
are noise: this config checks the plumbing, not the quality.

  python -m lr_jax.train --config configs/stable_diffusion_tiny.py --workdir /tmp/lr_sd_tiny
  python -m lr_jax.edit --config configs/stable_diffusion_tiny.py --image cat.png \
      --prompt "a cat wearing sunglasses" --out /tmp/out --rgn_checkpoint /tmp/lr_sd_tiny
"""
import ml_collections

from lr_jax import editors
from lr_jax.files import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.load_sibling(__file__, "tiny", arg)   # configs/tiny.py
  editors.use(c, "stable_diffusion")
  c.editor.resolution = 64     # the tiny model's size (it always works at 64 px)
  c.editor.num_steps = 3
  c.editor.scheduler = "dpmsolver++"
  c.editor.dtype = "float32"     # the same numbers on every CPU
  return c
