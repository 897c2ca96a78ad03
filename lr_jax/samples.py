r"""Sample inputs that ship with a dependency (scikit-image's public-domain cat "chelsea").

  python -m lr_jax.samples DIR     # writes DIR/chelsea.png and DIR/manifest.json
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

# The paper's MaskGIT examples (Figure 6) on the sample cat.
SAMPLE_PROMPTS = ("a lion", "cat face")


def chelsea() -> np.ndarray:
  """The 300x451 RGB cat photo from scikit-image, float32 in [0, 1]."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  return data.chelsea().astype(np.float32) / 255.


def write_samples(directory: str | pathlib.Path) -> pathlib.Path:
  """Writes the sample image and a manifest editing it into each sample prompt."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.round(chelsea() * 255).astype(np.uint8)).save(directory / "chelsea.png")
  manifest = [{"image": "chelsea.png", "prompt": p, "source_prompt": "a photo of a cat"}
              for p in SAMPLE_PROMPTS]
  path = directory / "manifest.json"
  path.write_text(json.dumps(manifest, indent=2))
  return path


def sample_examples(directory: str | pathlib.Path | None = None) -> list:
  """The sample manifest's examples, written once to `directory` (default: a per-user
  cache folder, $LR_JAX_SAMPLES_DIR or ~/.cache/lr_jax/samples)."""
  import os  # pylint: disable=g-import-not-at-top
  from lr_jax import manifest  # pylint: disable=g-import-not-at-top
  if directory is None:
    directory = os.environ.get("LR_JAX_SAMPLES_DIR") or (
        pathlib.Path.home() / ".cache" / "lr_jax" / "samples")
  directory = pathlib.Path(directory)
  path = directory / "manifest.json"
  if not (path.exists() and (directory / "chelsea.png").exists()):
    path = write_samples(directory)
  return manifest.read_manifest(path)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  print(write_samples(sys.argv[1]))
