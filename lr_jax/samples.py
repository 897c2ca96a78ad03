r"""Sample inputs that ship with a dependency (scikit-image's public-domain pictures).

  python -m lr_jax.samples DIR     # writes DIR/chelsea.png and DIR/manifest.json
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Sequence

import numpy as np

# The paper's MaskGIT examples (Figure 6) on the sample cat.
SAMPLE_PROMPTS = ("a lion", "cat face")
# (skimage.data picture, prompt, source prompt) rows of a manifest.
SAMPLE_SET = tuple(("chelsea", p, "a photo of a cat") for p in SAMPLE_PROMPTS)
TRAINING_SET = (
    ("chelsea", "a lion", "a photo of a cat"),
    ("chelsea", "a tiger", "a photo of a cat"),
    ("coffee", "a teapot", "a cup of coffee"),
)
USAGE = "usage: python -m lr_jax.samples DIR   (writes DIR/chelsea.png and DIR/manifest.json)"


def _picture(name: str) -> np.ndarray:
  from skimage import data  # pylint: disable=g-import-not-at-top
  loader = getattr(data, name, None)
  if loader is None or not callable(loader):
    raise ValueError(f"skimage.data has no image {name!r}")
  pixels = np.asarray(loader())
  if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
    raise ValueError(f"skimage.data.{name} is not an 8-bit RGB picture: {pixels.shape}")
  return pixels


def chelsea() -> np.ndarray:
  """The 300x451 RGB cat photo from scikit-image, float32 in [0, 1]."""
  return _picture("chelsea").astype(np.float32) / 255.


def write_samples(directory: str | pathlib.Path,
                  entries: Sequence[tuple[str, str, str]] = SAMPLE_SET) -> pathlib.Path:
  """Writes each entry's skimage picture as `<name>.png` and a manifest of
  (image, prompt, source_prompt) rows; returns the manifest's path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name in dict.fromkeys(e[0] for e in entries):
    Image.fromarray(_picture(name)).save(directory / f"{name}.png")
  manifest = [{"image": f"{name}.png", "prompt": prompt, "source_prompt": source}
              for name, prompt, source in entries]
  path = directory / "manifest.json"
  path.write_text(json.dumps(manifest, indent=2))
  return path


def sample_examples(directory: str | pathlib.Path | None = None) -> list:
  """The sample manifest's examples, written once to `directory` (default: a per-user
  cache folder, $LR_JAX_SAMPLES_DIR or ~/.cache/lr_jax/samples)."""
  from lr_jax.files import manifest  # pylint: disable=g-import-not-at-top
  if directory is None:
    directory = os.environ.get("LR_JAX_SAMPLES_DIR") or (
        pathlib.Path.home() / ".cache" / "lr_jax" / "samples")
  directory = pathlib.Path(directory)
  path = directory / "manifest.json"
  if not (path.exists() and (directory / "chelsea.png").exists()):
    path = write_samples(directory)
  return manifest.read_manifest(path)


def main(argv: Sequence[str]) -> int:
  args = list(argv[1:])
  if len(args) != 1 or args[0].startswith("-"):
    print(USAGE, file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
    return 0 if args and args[0] in ("-h", "--help") else 2
  from lr_common import output_files  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(args[0])
  try:   # before anything is written
    output_files.check_folder(folder)
    output_files.check_outputs([folder / "chelsea.png", folder / "manifest.json"],
                               overwrite=True)
  except output_files.OutputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(write_samples(folder))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
