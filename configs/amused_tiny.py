r"""configs/tiny.py with a tiny random aMUSEd as the editor: offline, on a CPU.

Small random DINO, CLIP and aMUSEd (VQ, transformer, CLIP text tower with the offline
byte tokenizer; 64x64 images, 8x8 tokens, 4 decoding steps). The edits are noise:
this config checks the plumbing of free-text editing, not its quality.

  python -m lr_jax.train --config configs/amused_tiny.py --workdir /tmp/lr_amused_tiny
  python -m lr_jax.edit --config configs/amused_tiny.py --image cat.png \
      --prompt "a cat wearing sunglasses" --out /tmp/out --rgn_checkpoint /tmp/lr_amused_tiny
"""
import ml_collections

from lr_jax import editors
from lr_jax.files import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.load_sibling(__file__, "tiny", arg)   # configs/tiny.py
  editors.use(c, "amused")
  c.editor.num_steps = 4
  c.editor.dtype = "float32"     # the same numbers on every CPU
  return c
