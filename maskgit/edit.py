r"""Edit boxes of an image with class-conditional MaskGIT.

  python -m maskgit.edit --image in.png --box 64,64,96,96 --label 291 --out out.png

Boxes are top,left,height,width in the input image's pixels (--box_units pixels)
or in tokens of the model grid (--box_units tokens). The image is converted to
RGB and resized to the model size; each box is edited independently in one
batched call, and with several boxes the results go to OUT_0.png, OUT_1.png...
"""

import pathlib
import sys
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image, UnidentifiedImageError

FLAGS = flags.FLAGS
flags.DEFINE_string("image", None, "Input image file.")
flags.DEFINE_multi_string("box", [], "top,left,height,width (repeat for several boxes).")
flags.DEFINE_enum("box_units", "pixels", ["pixels", "tokens"], "Units of --box.")
flags.DEFINE_integer("label", None, "Target ImageNet class id.")
flags.DEFINE_string("out", None, "Output PNG (OUT_k.png for several boxes).")
flags.DEFINE_string("config", "imagenet256", "MaskGIT config name.")
flags.DEFINE_string("tokenizer", None, "Tokenizer checkpoint path or name.")
flags.DEFINE_string("transformer", None, "Transformer checkpoint path or name.")
flags.DEFINE_string("cache_dir", None, "Checkpoint cache folder.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("grow_tokens", 1, "Tokens added around each box before masking.")


class EditCLIError(ValueError):
  """Bad command-line input (message shown to the user without a traceback)."""


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def load_image(path: str) -> np.ndarray:
  """Reads an image as float32 RGB (H, W, 3) in [0, 1], warning on conversions."""
  try:
    with Image.open(path) as image:
      image.load()
  except FileNotFoundError:
    raise EditCLIError(f"image file not found: {path}") from None
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise EditCLIError(f"cannot read image {path}: {e}") from None
  mode = image.mode
  if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    data = np.asarray(image, np.float64)
    top = 65535. if mode.startswith("I;16") or data.max() > 255 else 255.
    if mode == "F":
      top = max(1., float(data.max()))
    _warn(f"{mode} image (high bit depth, grayscale) scaled to [0, 1] and copied to RGB")
    gray = np.clip(data / top, 0., 1.).astype(np.float32)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode in ("L", "1", "LA"):
    _warn(f"grayscale image (mode {mode}) converted to RGB")
  elif mode in ("RGBA", "PA") or (mode == "P" and "transparency" in image.info):
    _warn(f"alpha channel of the {mode} image dropped")
  elif mode not in ("RGB", "P"):
    _warn(f"{mode} image converted to RGB")
  return np.asarray(image.convert("RGB"), np.float32) / 255.


def parse_boxes(specs: Sequence[str]) -> np.ndarray:
  """['t,l,h,w', ...] -> (K, 4) float array."""
  if not specs:
    raise EditCLIError("give at least one --box top,left,height,width")
  boxes = []
  for spec in specs:
    parts = [p for p in spec.replace(" ", "").split(",") if p]
    try:
      values = [float(p) for p in parts]
    except ValueError:
      values = []
    if len(values) != 4:
      raise EditCLIError(f"--box {spec!r} must be four numbers: top,left,height,width")
    boxes.append(values)
  return np.asarray(boxes, np.float64)


def output_paths(out: str, count: int) -> list[pathlib.Path]:
  path = pathlib.Path(out)
  if path.suffix == "":
    path = path.with_suffix(".png")
  if count == 1:
    return [path]
  return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(count)]


def run(image: str, boxes: Sequence[str], label: int, out: str, *,
        box_units: str = "pixels", config: str = "imagenet256",
        tokenizer: str | None = None, transformer: str | None = None,
        cache_dir: str | None = None, seed: int = 0, dtype: str = "float32",
        grow_tokens: int = 1) -> list[pathlib.Path]:
  """Edits the boxes of one image and writes the results; returns the paths."""
  import jax  # pylint: disable=g-import-not-at-top
  from maskgit import checkpoints, configs, editing  # pylint: disable=g-import-not-at-top

  model = configs.get_config(config)
  if label is None or not 0 <= label < model.transformer.num_class:
    raise EditCLIError(
        f"--label must be a class id in [0, {model.transformer.num_class}), got {label}")
  if not out:
    raise EditCLIError("--out is required")
  pixels = load_image(image)
  box_array = parse_boxes(boxes)
  size, side = model.image_size, model.tokens_per_side
  height, width = pixels.shape[:2]
  if box_units == "pixels":
    scale = np.array([size / height, size / width, size / height, size / width])
    if np.any(box_array[:, 2:] <= 0):
      raise EditCLIError(f"boxes must have positive height and width: {boxes}")
    box_tokens = np.asarray(editing.pixel_boxes_to_tokens(box_array * scale, size, side))
  else:
    box_tokens = box_array.astype(np.int32)
  editing.validate_boxes(box_tokens, side)
  if (height, width) != (size, size):
    if height != width:
      _warn(f"{width}x{height} image resized to {size}x{size} (aspect ratio not kept)")
    pil = Image.fromarray(np.uint8(np.round(pixels * 255.)))
    pixels = np.asarray(pil.resize((size, size), Image.BICUBIC), np.float32) / 255.

  tok_params, tr_params = checkpoints.load_maskgit(model, tokenizer, transformer, cache_dir)
  edit = editing.EditConfig(dtype=dtype, grow_tokens=grow_tokens)
  editor = editing.make_editor(model, edit)
  num_boxes = box_tokens.shape[0]
  keys = editing.box_keys(jax.random.PRNGKey(seed), 1, num_boxes)
  result = editor(tok_params, tr_params, pixels[None], box_tokens[None],
                  np.array([label], np.int32), keys)
  images = np.asarray(result["images"][0])
  paths = output_paths(out, num_boxes)
  for path, picture in zip(paths, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.uint8(np.round(np.clip(picture, 0., 1.) * 255.))).save(path)
    print(f"wrote {path}", flush=True)
  return paths


def cli(argv: Sequence[str]) -> int:
  """Parses `argv` (program name first), edits, returns the exit code."""
  FLAGS.unparse_flags()
  try:
    rest = FLAGS(list(argv))
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return _run_from_flags(rest)


def _run_from_flags(argv: Sequence[str]) -> int:
  from maskgit.checkpoints import CheckpointError  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
    return 1
  if not FLAGS.image:
    print("error: --image is required", file=sys.stderr)
    return 1
  try:
    run(FLAGS.image, FLAGS.box, FLAGS.label, FLAGS.out, box_units=FLAGS.box_units,
        config=FLAGS.config, tokenizer=FLAGS.tokenizer, transformer=FLAGS.transformer,
        cache_dir=FLAGS.cache_dir, seed=FLAGS.seed, dtype=FLAGS.dtype,
        grow_tokens=FLAGS.grow_tokens)
  except (CheckpointError, EditCLIError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv: Sequence[str]) -> None:
  sys.exit(_run_from_flags(argv))


if __name__ == "__main__":
  app.run(main)
