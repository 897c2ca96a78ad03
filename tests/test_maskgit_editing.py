"""Batched MaskGIT box editing on the tiny official fixture, and the edit CLI."""
import pathlib
import re
import subprocess
import sys
import urllib.error
import urllib.request

import flax
import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from maskgit import decoding, editing
from maskgit.configs import get_config
from maskgit.transformer import Transformer

CFG = get_config("tiny")
SIDE, SIZE, SCALE = 4, 64, 16  # tokens per side, pixels, pixels per token
GROW = 1
# (top, left, height, width) in tokens; different sizes, some crossing the border.
BOXES = np.array([[[0, 0, 1, 1], [2, 1, 1, 2], [3, 3, 2, 2]],
                  [[1, 1, 1, 1], [-1, 2, 2, 1], [0, 3, 1, 1]]], np.int32)
LABELS = np.array([3, 7], np.int32)


def _load(directory, name):
  return flax.serialization.msgpack_restore((directory / name).read_bytes())["params"]


def _reference_token_mask(box, grow=GROW):
  """Numpy slicing reference, as the official demo builds its latent mask."""
  top, left, height, width = box
  mask = np.zeros((SIDE, SIDE), bool)
  mask[max(0, top - grow):max(0, min(SIDE, top + height + grow)),
       max(0, left - grow):max(0, min(SIDE, left + width + grow))] = True
  return mask


@pytest.fixture(scope="module")
def setup(fixtures_dir):
  directory = fixtures_dir / "maskgit_official_tiny"
  outputs = dict(np.load(directory / "outputs_tiny.npz"))
  tok = _load(directory, "tokenizer_tiny.msgpack")
  tr = _load(directory, "transformer_tiny.msgpack")
  editor = editing.make_editor(CFG, editing.EditConfig())
  keys = editing.box_keys(jax.random.PRNGKey(11), *BOXES.shape[:2])
  images = outputs["images"][:2]
  # One key for the batch: split per box with box_keys inside the editor.
  result = jax.tree_util.tree_map(
      np.asarray, editor(tok, tr, images, BOXES, LABELS, jax.random.PRNGKey(11)))
  return dict(outputs=outputs, tok=tok, tr=tr, editor=editor, keys=keys,
              images=images, result=result, directory=directory)


def test_shapes(setup):
  r = setup["result"]
  assert r["images"].shape == r["raw"].shape == (2, 3, SIZE, SIZE, 3)
  assert r["tokens"].shape == (2, 3, SIDE * SIDE)
  assert r["token_mask"].shape == (2, 3, SIDE, SIDE)
  assert r["pixel_mask"].shape == (2, 3, SIZE, SIZE, 1)


def test_token_masks_clamped_at_border(setup):
  for b in range(2):
    for k in range(3):
      np.testing.assert_array_equal(setup["result"]["token_mask"][b, k],
                                    _reference_token_mask(BOXES[b, k]))


def test_grown_boxes_grow_and_clamp():
  boxes = np.array([[0, 3, 2, 2], [4, 4, 4, 4]])
  np.testing.assert_array_equal(editing.grown_boxes(boxes, 8, grow=1),
                                [[0, 2, 3, 4], [3, 3, 5, 5]])


def test_tokens_outside_boxes_are_the_official_encoding(setup):
  r, ids = setup["result"], setup["outputs"]["ids"][:2]
  for b in range(2):
    for k in range(3):
      outside = ~_reference_token_mask(BOXES[b, k]).reshape(-1)
      np.testing.assert_array_equal(r["tokens"][b, k][outside],
                                    ids[b].reshape(-1)[outside])
      assert np.all(r["tokens"][b, k] >= 0) and np.all(r["tokens"][b, k] < 64)


def test_box_alone_equals_batched(setup):
  r = setup["result"]
  for b, k in [(0, 2), (1, 1)]:  # the two boxes that cross the border
    alone = setup["editor"](setup["tok"], setup["tr"], setup["images"][b:b + 1],
                            BOXES[b:b + 1, k:k + 1], LABELS[b:b + 1],
                            setup["keys"][b:b + 1, k:k + 1])
    np.testing.assert_array_equal(alone["tokens"][0, 0], r["tokens"][b, k])
    np.testing.assert_allclose(alone["images"][0, 0], r["images"][b, k], atol=1e-4)


def test_box_equals_official_decode_of_batch_of_one(setup):
  """Each box decodes like the (fixture-verified) decoder on a batch of one."""
  params = setup["tr"]
  model = Transformer(CFG.transformer)
  logits_fn = lambda ids: model.apply({"params": params}, ids, deterministic=True)
  decode = jax.jit(lambda x, key: decoding.decode(
      x, key, logits_fn, num_iter=12, start_iter=2, choice_temperature=4.5,
      codebook_size=64))
  ids = setup["outputs"]["ids"]
  for b in range(2):
    for k in range(3):
      masked = np.where(_reference_token_mask(BOXES[b, k]), -1, ids[b]).reshape(-1)
      inputs = np.concatenate([[LABELS[b] + 64], masked])[None].astype(np.int32)
      expected = np.asarray(decode(inputs, setup["keys"][b, k]))[0, 1:]
      np.testing.assert_array_equal(setup["result"]["tokens"][b, k], expected)


def test_feathered_mask_matches_scipy_gaussian(setup):
  r = setup["result"]
  sigma = SIZE // 16 - 1
  for b in range(2):
    for k in range(3):
      hard = np.kron(_reference_token_mask(BOXES[b, k]).astype(np.float64),
                     np.ones((SCALE, SCALE)))
      soft = ndimage.gaussian_filter(hard, sigma, mode="nearest", truncate=3.0)
      np.testing.assert_allclose(r["pixel_mask"][b, k, ..., 0], soft, atol=1e-5)


def test_composite_keeps_far_pixels_exact(setup):
  r, images = setup["result"], setup["images"]
  reach = int(np.ceil(3 * (SIZE // 16 - 1)))
  for b in range(2):
    for k in range(3):
      grown = np.kron(_reference_token_mask(BOXES[b, k]), np.ones((SCALE, SCALE), bool))
      near = ndimage.binary_dilation(grown, np.ones((3, 3), bool), iterations=reach + 1)
      far = ~near
      assert far.any() or grown.all()
      np.testing.assert_array_equal(r["images"][b, k][far], images[b][far])
      m = r["pixel_mask"][b, k]
      np.testing.assert_allclose(r["images"][b, k], r["raw"][b, k] * m + images[b] * (1 - m),
                                 atol=1e-6)
  # Inside the boxes the output comes from the decoder.
  assert np.abs(r["images"] - images[:, None]).max() > 1e-3


def test_box_keys_differ_per_box():
  keys = np.asarray(editing.box_keys(jax.random.PRNGKey(11), 2, 3)).reshape(6, -1)
  assert len({tuple(k) for k in keys}) == 6


@pytest.mark.parametrize("box", [[0, 0, 0, 1], [1, 1, 2, -1], [4, 0, 1, 1], [0, -3, 2, 3]])
def test_empty_inverted_or_outside_boxes_rejected(setup, box):
  with pytest.raises(ValueError, match="box"):
    editing.validate_boxes(np.array([box]), SIDE)
  boxes = np.array([[box]], np.int32)
  with pytest.raises(ValueError):
    setup["editor"](setup["tok"], setup["tr"], setup["images"][:1], boxes, LABELS[:1],
                    jax.random.PRNGKey(0))


def test_inverted_box_under_jit_masks_nothing():
  mask = jax.jit(lambda b: editing.box_token_mask(b, SIDE, grow=1))(
      np.array([[1, 1, -2, 2], [1, 1, 2, 0]]))
  assert not np.asarray(mask).any()


def test_pixel_boxes_to_tokens_match_official_demo_when_aligned():
  side, size = 16, 256
  for top, left, height, width in [(32, 48, 64, 80), (0, 0, 16, 16), (192, 96, 64, 160)]:
    tokens = np.asarray(editing.pixel_boxes_to_tokens(
        np.array([top, left, height, width]), size, side))
    ours = np.asarray(editing.box_token_mask(tokens, side, grow=1))
    official = np.zeros((side, side), bool)
    official[max(0, top // 16 - 1):min(side, height // 16 + top // 16 + 1),
             max(0, left // 16 - 1):min(side, left // 16 + width // 16 + 1)] = True
    np.testing.assert_array_equal(ours, official)


def test_pixel_boxes_round_outward():
  box = np.array([10, 20, 30, 5])
  tokens = np.asarray(editing.pixel_boxes_to_tokens(box, 256, 16))
  rows = {p // 16 for p in range(10, 40)}
  cols = {p // 16 for p in range(20, 25)}
  assert (tokens[0], tokens[2]) == (min(rows), len(rows))
  assert (tokens[1], tokens[3]) == (min(cols), len(cols))


@pytest.mark.parametrize("labels", [[10], [-1], [[3, 10]]])
def test_labels_outside_model_classes_rejected(setup, labels):
  """label + codebook_size would silently hit the mask token's row (or beyond)."""
  labels = np.array(labels, np.int32)
  boxes = BOXES[:1, :labels.shape[-1]]
  with pytest.raises(ValueError, match=r"label.*\[0, 10\)"):
    setup["editor"](setup["tok"], setup["tr"], setup["images"][:1], boxes, labels,
                    jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"label.*\[0, 10\)"):
    editing.edit_images(setup["tok"], setup["tr"], setup["images"][:1], boxes, labels,
                        jax.random.PRNGKey(0), config=CFG)


def test_integer_images_rejected(setup):
  """uint8 pixels would be taken as values up to 255 instead of [0, 1]."""
  with pytest.raises(ValueError, match="floats in"):
    setup["editor"](setup["tok"], setup["tr"], np.zeros((1, SIZE, SIZE, 3), np.uint8),
                    BOXES[:1, :1], LABELS[:1], jax.random.PRNGKey(0))


# ---------------------------------------------------------------- the edit CLI


def test_load_image_applies_exif_orientation(tmp_path):
  from maskgit import edit
  pixels = np.random.default_rng(4).integers(0, 256, (10, 20, 3), np.uint8)
  image = Image.fromarray(pixels)
  exif = image.getexif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  image.save(tmp_path / "photo.png", exif=exif)
  loaded = edit.load_image(str(tmp_path / "photo.png"))
  np.testing.assert_array_equal(np.round(loaded * 255), np.rot90(pixels, k=-1))


def _cli(directory, *args):
  from maskgit import edit
  return edit.cli(["edit", *args, "--config=tiny",
                   f"--tokenizer={directory / 'tokenizer_tiny.msgpack'}",
                   f"--transformer={directory / 'transformer_tiny.msgpack'}"])


def _rgb_png(path, height, width):
  pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
  Image.fromarray(pixels).save(path)
  return pixels


def test_cli_result_keeps_input_resolution(setup, tmp_path, capsys):
  source, out = tmp_path / "in.png", tmp_path / "out.png"
  original = _rgb_png(source, 40, 72)
  code = _cli(setup["directory"], f"--image={source}", "--box=2,2,8,12", "--label=4",
              f"--out={out}", "--canvas=squeeze")
  err = capsys.readouterr().err
  assert code == 0, err
  written = np.asarray(Image.open(out))
  assert written.shape == original.shape
  # Squeezed, the box maps to token (0, 0), grown to tokens 0-1: model pixels [0, 32), feathered
  # to < 41 (3 sigma = 9); at 40x72 that is rows < 26, cols < 47, plus the resampling
  # filter. Beyond, the original pixels are kept exactly.
  np.testing.assert_array_equal(written[30:], original[30:])
  np.testing.assert_array_equal(written[:, 52:], original[:, 52:])
  assert np.abs(written[:16, :16].astype(int) - original[:16, :16]).max() > 20


def test_cli_keeps_the_aspect_ratio_and_runs_offline_with_random_weights(tmp_path, capsys):
  """The default canvas pads a wide photo instead of stretching it; the tiny random MaskGIT
  needs no checkpoint; pixels beyond the bounded feather are the input's."""
  from maskgit import edit
  source, out = tmp_path / "in.png", tmp_path / "out.png"
  original = _rgb_png(source, 40, 72)
  code = edit.cli(["edit", f"--image={source}", "--box=2,2,8,12", "--label=4",
                   f"--out={out}", "--config=tiny", "--random_weights"])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "aspect ratio kept" in err and "random tiny MaskGIT weights" in err
  written = np.asarray(Image.open(out))
  assert written.shape == original.shape
  changed = np.argwhere((written != original).any(-1))
  assert len(changed) and changed[:, 1].max() < 48   # the box ends at column 14
  np.testing.assert_array_equal(written[:, 48:], original[:, 48:])
  # Squeezed, the same box reaches further right (the canvas stretches the width less).
  squeezed = tmp_path / "squeezed.png"
  assert edit.cli(["edit", f"--image={source}", "--box=2,2,8,12", "--label=4",
                   f"--out={squeezed}", "--config=tiny", "--random_weights",
                   "--canvas=squeeze"]) == 0


def _gray16_png(path):
  values = np.random.default_rng(1).integers(0, 65536, (40, 40)).astype(np.uint16)
  Image.fromarray(values).save(path)
  return np.repeat(np.round(values / 65535. * 255.)[..., None], 3, -1)


def _gray_png(path):
  values = np.random.default_rng(2).integers(0, 256, (40, 40), np.uint8)
  Image.fromarray(values, "L").save(path)
  return np.repeat(values[..., None], 3, -1)


def _rgba_png(path):
  values = np.random.default_rng(3).integers(0, 256, (40, 40, 4), np.uint8)
  Image.fromarray(values, "RGBA").save(path)
  rgba = values.astype(np.float32) / 255.   # composited over white, in float32 as loaded
  over_white = rgba[..., :3] * rgba[..., 3:] + (1. - rgba[..., 3:])
  return np.round(np.clip(over_white, 0., 1.) * 255.)


@pytest.mark.parametrize("make,warning", [(_gray_png, "grayscale"), (_rgba_png, "transparency"),
                                          (_gray16_png, "I;16")])
def test_cli_converts_other_image_kinds(setup, tmp_path, capsys, make, warning):
  source, out = tmp_path / "in.png", tmp_path / "out.png"
  expected = make(source)
  code = _cli(setup["directory"], f"--image={source}", "--box=0,0,4,4", "--label=1",
              f"--out={out}")
  err = capsys.readouterr().err
  assert code == 0, err
  assert warning in err
  written = np.asarray(Image.open(out))
  assert written.shape == (40, 40, 3)
  # Token (0, 0) grown to [0, 32) model pixels, feathered to < 41 -> < 26 of 40, + filter.
  np.testing.assert_array_equal(written[30:], expected[30:])


def _one_error_line(err):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err
  return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["--box=0,0,8,8", "--label=1"], "not a recognised image"),      # a text file
    (["--box=0,0,8,8", "--label=1", "MISSING"], "does not exist"),
    (["--box=50,0,8,8", "--label=1"], "outside the 40x40 image"),
    (["--box=5,5,0,8", "--label=1"], "empty or inverted"),
    (["--box=0,0,8,8", "--label=10"], r"\[0, 10\), got 10"),
    (["--box=0,0,8,8", "--label=-3"], "got -3"),
    (["--box=0,0,8", "--label=1"], "four numbers"),
    (["--box=nan,0,8,8", "--label=1"], "four numbers"),
    (["--box=0,0,8,8", "--label=x1"], "--label"),
    (["--box=0,0,8,8", "--label=1", "--out=o.xyz"], "unknown image file extension"),
])
def test_cli_bad_input_is_one_error_line(setup, tmp_path, capsys, args, expected):
  source = tmp_path / "in.png"
  _rgb_png(source, 40, 40)
  if args[-1] == "MISSING":
    args, source = args[:-1], tmp_path / "missing.png"
  elif expected == "not a recognised image":
    source.write_text("not an image")
  code = _cli(setup["directory"], f"--image={source}", f"--out={tmp_path / 'o.png'}", *args)
  line = _one_error_line(capsys.readouterr().err)
  assert code == 1 and re.search(expected, line), line
  assert not (tmp_path / "o.png").exists()


def test_cli_missing_official_checkpoint_explains(setup, tmp_path, capsys, monkeypatch):
  from maskgit import checkpoints, edit

  def offline(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable")

  monkeypatch.setattr(urllib.request, "urlopen", offline)
  cache = tmp_path / "empty_cache"
  cache.mkdir()
  monkeypatch.setenv("MASKGIT_CACHE_DIR", str(cache))
  source = tmp_path / "in.png"
  _rgb_png(source, 256, 256)
  code = edit.cli(["edit", f"--image={source}", "--box=0,0,8,8", "--label=291",
                   f"--out={tmp_path / 'o.png'}"])  # imagenet256: the official files
  line = _one_error_line(capsys.readouterr().err)
  assert code == 1
  for name in ("tokenizer_imagenet256", "maskgit_imagenet256"):
    assert checkpoints.CHECKPOINT_URLS[name] in line and str(cache / name) in line
  # How to point elsewhere, with flags this command has (not lr_jax's --config.*).
  assert "--cache_dir" in line and "--tokenizer" in line and "--transformer" in line
  assert "--config." not in line
  assert list(cache.iterdir()) == []


def test_cli_bad_checkpoint_file(setup, tmp_path, capsys):
  from maskgit import edit
  source, bad = tmp_path / "in.png", tmp_path / "tokenizer.msgpack"
  _rgb_png(source, 64, 64)
  bad.write_text("not msgpack")
  code = edit.cli(["edit", f"--image={source}", "--box=0,0,16,16", "--label=1",
                   f"--out={tmp_path / 'o.png'}", "--config=tiny", f"--tokenizer={bad}",
                   f"--transformer={setup['directory'] / 'transformer_tiny.msgpack'}"])
  line = _one_error_line(capsys.readouterr().err)
  assert code == 1 and "tokenizer.msgpack" in line and "msgpack checkpoint" in line


def test_cli_entry_point_flag_error_is_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "maskgit.edit", "--label=abc"],
                        capture_output=True, text=True, timeout=120,
                        cwd=pathlib.Path(__file__).parents[1])
  assert done.returncode == 1
  line = _one_error_line(done.stderr)
  assert "--label" in line
