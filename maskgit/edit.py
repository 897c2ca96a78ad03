r"""Edit boxes of an image with class-conditional MaskGIT.

  python -m maskgit.edit --image in.png --box 64,64,96,96 --label 291 --out out.png

Boxes are top,left,height,width in the input image's pixels (--box_units pixels)
or in tokens of the model's canvas (--box_units tokens). The image is converted to
RGB and put on the model's square keeping its aspect ratio (--canvas pad: resized
until its longer side fills the square, the rest edge padding; --canvas squeeze
stretches it, as before); each box is edited independently in one batched call.
Each edit and its feathered mask are cut to the photo, resized back to the input's
resolution and blended into the original image, so pixels outside the mask are
unchanged (the feather reaches at most a quarter of the grown box's side past it).

Offline, without checkpoints: `--config=tiny --random_weights` edits with a tiny
random MaskGIT (the edits are noise: a check of the command). With several boxes the results go to OUT_0.png, OUT_1.png... When
--out is an existing folder (or ends with a slash) the result is
OUT/<image stem>_edited.png (_edited_0.png, _edited_1.png... for several boxes).

Outputs are checked before any model is loaded: an existing file (or a symbolic
link) at an output name is refused unless --overwrite (which replaces the file or
the link itself, never a link's target). Each output is written to a temporary
file in its folder and renamed into place.
Every failure is one `error: ...` line on stderr and exit status 1.
"""

import os
import pathlib
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from lr_common import canvas as canvas_lib
from lr_common import image_files
from lr_common import output_files
from lr_common import seeds
from lr_common.output_files import check_outputs
from lr_common.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("image", None, "Input image file.")
flags.DEFINE_multi_string("box", [], "top,left,height,width (repeat for several boxes).")
flags.DEFINE_enum("box_units", "pixels", ["pixels", "tokens"], "Units of --box.")
flags.DEFINE_integer("label", None, "Target ImageNet class id.")
flags.DEFINE_string("out", None, "Output PNG (OUT_k.png for several boxes), or an "
                    "existing folder for <image stem>_edited.png files.")
flags.DEFINE_bool("overwrite", False,
                  "Replace existing output files (a symbolic link at an output name is "
                  "replaced itself; its target is left alone).")
flags.DEFINE_string("config", "imagenet256", "MaskGIT config name.")
flags.DEFINE_string("tokenizer", None, "Tokenizer checkpoint path or name.")
flags.DEFINE_string("transformer", None, "Transformer checkpoint path or name.")
flags.DEFINE_string("cache_dir", None, "Checkpoint cache folder.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("grow_tokens", 1, "Tokens added around each box before masking.")
flags.DEFINE_enum("canvas", "pad", list(canvas_lib.CANVASES),
                  "pad: keep the photo's aspect ratio (edge padding); squeeze: stretch it.")
flags.DEFINE_bool("random_weights", False, "Random parameters instead of checkpoints "
                  "(with --config=tiny: an offline check; the edits are noise).")


CHECKPOINT_HINT = ("pass --cache_dir DIR (a folder holding the files), or the files "
                   "themselves with --tokenizer FILE and --transformer FILE")


class EditCLIError(UserError, ValueError):
  """Bad command-line input (message shown to the user without a traceback)."""


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def load_image(path: str, compact: bool = False) -> np.ndarray:
  """Reads an image as float32 RGB (H, W, 3) in [0, 1] with lr_jax's loader (EXIF
  orientation, transparency over white, grayscale / 16-bit / CMYK converted), printing
  each conversion as a warning. `compact`: as the loader keeps it instead (uint8 for
  8-bit files, see `image_files.LoadedImage.original`), a quarter of the memory."""
  try:
    loaded = image_files.load_image(path, min_side=1)
  except image_files.ImageError as e:
    raise EditCLIError(str(e)) from None
  for note in loaded.notes:
    _warn(note)
  return loaded.original if compact else loaded.pixels


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
    if len(values) != 4 or not np.all(np.isfinite(values)):
      raise EditCLIError(f"--box {spec!r} must be four numbers: top,left,height,width")
    boxes.append(values)
  return np.asarray(boxes, np.float64)


def output_paths(out: str, count: int, image: Optional[str] = None) -> list[pathlib.Path]:
  """Where the `count` results go: OUT(.png), OUT_k.png, or FOLDER/<stem>_edited(_k).png."""
  path = pathlib.Path(out)
  if os.path.isdir(out) or out.endswith(("/", os.sep)):
    stem = pathlib.Path(image).stem if image else ""
    path = path / f"{stem or 'image'}_edited.png"
  elif path.suffix == "":
    path = path.with_suffix(".png")
  if count == 1:
    return [path]
  return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(count)]


def save_atomically(path: pathlib.Path, picture: np.ndarray, overwrite: bool = False) -> None:
  """Writes the uint8 image through `output_files.atomic_path` (never replaces an
  existing name unless `overwrite`; then the name itself, not a link's target)."""
  image_format = Image.registered_extensions()[path.suffix.lower()]
  with output_files.atomic_path(path, overwrite) as tmp:
    Image.fromarray(picture).save(tmp, format=image_format)


def _token_boxes(box_array: np.ndarray, box_units: str, height: int, width: int,
                 model, lay: canvas_lib.Layout) -> np.ndarray:
  """(K, 4) boxes in the input's pixels or in tokens -> (K, 4) int32 token boxes of the
  canvas `lay`."""
  from maskgit import editing  # pylint: disable=g-import-not-at-top
  side = model.tokens_per_side
  if box_units == "tokens":
    if np.any(box_array != np.round(box_array)):
      raise EditCLIError("--box_units=tokens needs integer boxes")
    editing.validate_boxes(box_array, side)   # in float64: no value wraps around in int32
    # Corners cut to the grid (the editor cuts them there too), so they fit int32.
    corners = np.clip(np.concatenate([box_array[:, :2], box_array[:, :2] + box_array[:, 2:]],
                                     1), 0, side)
    tokens = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], 1).astype(np.int32)
  else:
    for top, left, box_h, box_w in box_array.tolist():
      where = f"box {top:g},{left:g},{box_h:g},{box_w:g}"
      if box_h <= 0 or box_w <= 0:
        raise EditCLIError(f"{where} is empty or inverted (height and width must be > 0)")
      if top >= height or left >= width or top + box_h <= 0 or left + box_w <= 0:
        raise EditCLIError(f"{where} lies entirely outside the {width}x{height} image")
    # Cut to the photo first, so the canvas tokens cover the part that is in it.
    top = np.clip(box_array[:, 0], 0, height)
    left = np.clip(box_array[:, 1], 0, width)
    bottom = np.clip(box_array[:, 0] + box_array[:, 2], 0, height)
    right = np.clip(box_array[:, 1] + box_array[:, 3], 0, width)
    tokens = np.asarray([canvas_lib.original_box_to_tokens(b, lay) for b in
                         np.stack([top, left, bottom - top, right - left], 1).tolist()],
                        np.int32)
  editing.validate_boxes(tokens, side)
  return tokens


def run(image: str, boxes: Sequence[str], label: int, out: str, *,
        box_units: str = "pixels", config: str = "imagenet256",
        tokenizer: str | None = None, transformer: str | None = None,
        cache_dir: str | None = None, seed: int = 0, dtype: str = "float32",
        grow_tokens: int = 1, overwrite: bool = False, canvas: str = "pad",
        random_weights: bool = False) -> list[pathlib.Path]:
  """Edits the boxes of one image and writes the results (input's size); returns the paths."""
  import jax  # pylint: disable=g-import-not-at-top
  from maskgit import checkpoints, configs, editing  # pylint: disable=g-import-not-at-top

  model = configs.get_config(config)
  if label is None or not 0 <= label < model.transformer.num_class:
    raise EditCLIError(
        f"--label must be a class id in [0, {model.transformer.num_class}), got {label}")
  if not out:
    raise EditCLIError("--out is required")
  box_array = parse_boxes(boxes)
  paths = output_paths(out, len(box_array), image)
  suffix = paths[0].suffix.lower()
  if suffix not in Image.registered_extensions():
    raise EditCLIError(f"--out {out!r}: unknown image file extension {suffix!r}")
  check_outputs(paths, overwrite)  # before any reading or compute
  original = load_image(image, compact=True)
  height, width = original.shape[:2]
  size, side = model.image_size, model.tokens_per_side
  lay = canvas_lib.layout((height, width), size, side, canvas)
  box_tokens = _token_boxes(box_array, box_units, height, width, model, lay)
  pixels = canvas_lib.to_canvas(original, lay).astype(np.float32)
  if (height, width) != (size, size):
    note = ("" if height == width else " (stretched; the result keeps the input's shape)"
            if canvas == "squeeze" else " (aspect ratio kept, edge padding)")
    _warn(f"{width}x{height} image edited at {size}x{size}{note}")

  if random_weights:
    _warn(f"random {config} MaskGIT weights: the edits are noise")
    tok_params, tr_params = checkpoints.init_params(model, jax.random.PRNGKey(seed))
  else:
    tok_params, tr_params = checkpoints.load_maskgit(
        model, tokenizer, transformer, cache_dir, hint=CHECKPOINT_HINT)
  editor = editing.make_editor(model, editing.EditConfig(dtype=dtype, grow_tokens=grow_tokens))
  result = editor(tok_params, tr_params, pixels[None], box_tokens[None],
                  np.array([label], np.int32), seeds.prng_key(seed))
  raw, masks = np.asarray(result["raw"][0]), np.asarray(result["pixel_mask"][0])
  grown = np.asarray(editing.grown_boxes(box_tokens, side, grow_tokens))
  for path, edited, mask, box in zip(paths, raw, masks, grown):
    save_atomically(path, canvas_lib.composite(original, edited, mask, lay, dtype=np.uint8,
                                               box_tokens=box.tolist()), overwrite)
    print(f"wrote {path}", flush=True)
  return paths


def cli(argv: Sequence[str]) -> int:
  """Parses `argv` (program name first), edits, returns the exit code."""
  app.define_help_flags()
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
        grow_tokens=FLAGS.grow_tokens, overwrite=FLAGS.overwrite, canvas=FLAGS.canvas,
        random_weights=FLAGS.random_weights)
  except (CheckpointError, EditCLIError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  # Not app.run: its flag errors take two lines and its INFO logging adds noise.
  sys.exit(cli(sys.argv))
