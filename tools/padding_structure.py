"""How much the canvas padding looks like photo content: edge vs reflect padding.

  python tools/padding_structure.py

Puts four scikit-image photos, cropped to 16:9 and 3:1, on the 256-pixel "pad" canvas
(`lr_common.canvas`) with each padding mode and prints the mean gradient magnitude in the
padding divided by the one in the photo (1: as much structure as the photo; a mirrored
copy of it is about 1). A proxy for what DINO and CLIP would make of the padding: no
pretrained weights are needed.
"""
import pathlib
import sys

import numpy as np
from skimage import data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lr_common import pixels as pixels_lib  # noqa: E402
from lr_common import canvas as canvas_lib  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
ASPECTS = (16 / 9, 3.0)


def gradient_energy(pixels: np.ndarray, where: np.ndarray) -> float:
  grey = pixels.mean(-1)
  energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]
  return float(energy[where[:-1, :-1]].mean())


def main() -> None:
  ratios = {"edge": [], "reflect": []}
  for name in PHOTOS:
    photo = getattr(data, name)()
    height, width = photo.shape[:2]
    for aspect in ASPECTS:
      rows = min(height, int(width / aspect))
      crop = photo[(height - rows) // 2:(height - rows) // 2 + rows]
      lay = canvas_lib.layout(crop.shape, 256, 16, "pad")
      top, left, h, w = lay.image_tlhw
      small = pixels_lib.resize_image(crop, (h, w))
      inside = canvas_lib.valid_mask(lay)
      line = [f"{name:10s} {aspect:4.2f}:1 {crop.shape[1]}x{crop.shape[0]}"]
      for mode, values in ratios.items():
        canvas = np.pad(small, ((top, 256 - top - h), (left, 256 - left - w), (0, 0)),
                        mode=mode)
        values.append(gradient_energy(canvas, ~inside) / gradient_energy(canvas, inside))
        line.append(f"{mode} {values[-1]:.3f}")
      print("  ".join(line))
  print("mean  " + "  ".join(f"{mode} {np.mean(v):.3f}" for mode, v in ratios.items()))


if __name__ == "__main__":
  main()
