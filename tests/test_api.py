"""What a new user meets: the Python API, the default strategy, `--box`, the feather bound.

The API runs in-process on the tiny config; the CLI runs (`lr_jax.edit`) are few: one
default run, one `--box` run with aMUSEd, and errors that stop before any model loads.
"""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from lr_common import box_editing
from lr_jax import api
from lr_common import canvas as canvas_lib
from tests import cli_helpers


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> pathlib.Path:
  """A non-square photo: noise, so any change shows."""
  path = tmp_path_factory.mktemp("photos") / "wide.png"
  rng = np.random.default_rng(0)
  Image.fromarray((rng.random((150, 400, 3)) * 255).astype(np.uint8)).save(path)
  return path


@pytest.fixture(scope="module")
def editor():
  return api.load("tiny", region__window="off")


def _outside(record, image_hw) -> np.ndarray:
  """True outside the record's feather limit (where nothing may change)."""
  t, l, h, w = record["feather_limit"]["tlhw_pixels_original"]
  out = np.ones(image_hw, bool)
  out[t:t + h, l:l + w] = False
  return out


def test_api_edits_saves_and_names_runs_apart(editor, wide, tmp_path):
  photo = np.asarray(Image.open(wide))
  result = editor.edit(wide, "a lion")
  assert result.record["strategy"] == "search"
  assert "no rgn_checkpoint or refine_steps" in result.record["strategy_reason"]
  assert result.image.shape == photo.shape and result.image.dtype == np.uint8
  assert len(result.candidates) == 2 * 3   # K anchors x M sizes
  assert result.best == int(np.argmax([c.score for c in result.candidates]))
  assert all(len(c.box_pixels) == 4 for c in result.candidates)
  assert not (result.image[_outside(result.record, photo.shape[:2])]
              != photo[_outside(result.record, photo.shape[:2])]).any()
  files = result.save(tmp_path)
  assert pathlib.Path(files["edited"]).name == "000_wide_a_lion_search_seed0_edited.png"
  np.testing.assert_array_equal(np.asarray(Image.open(files["edited"])), result.image)
  # A second save of the same run names the Python argument, not a CLI flag.
  with pytest.raises(Exception) as error:
    result.save(tmp_path)
  assert "overwrite=True" in str(error.value) and "--" not in str(error.value)
  result.save(tmp_path, overwrite=True)
  # Another seed, an array input and the user's box: side by side, one compile each.
  boxed = editor.edit(photo, "a lion", box=[(10, 20, 60, 80), (40, 250, 100, 140)], seed=1)
  assert boxed.record["strategy"] == "box" and len(boxed.candidates) == 2
  assert boxed.record["given_boxes_as_asked"] == {
      "unit": "pixels", "tlhw": [[10, 20, 60, 80], [40, 250, 100, 140]]}
  kept = boxed.record["given_boxes_tlhw_pixels_original"][boxed.best]
  assert boxed.candidates[boxed.best].box_pixels == tuple(kept)
  outside = _outside(boxed.record, photo.shape[:2])
  np.testing.assert_array_equal(boxed.image[outside], photo[outside])
  assert (boxed.image != photo).any()
  boxed.save(tmp_path)
  assert sorted(p.name for p in tmp_path.glob("*.json")) == [
      "000_image_a_lion_box_seed1.json", "000_wide_a_lion_search_seed0.json"]
  assert boxed.candidate_image(0).shape == photo.shape


@pytest.mark.parametrize("kwargs, needle", [
    (dict(box=(0, 0, 0, 5)), "box=(0, 0, 0, 5) is empty"),
    (dict(box=(100, 0, 60, 5)), "box=(100, 0, 60, 5) is not inside wide.png (400x150"),
    (dict(box=(1, 2, 3)), "box=(1, 2, 3) must be four numbers"),
    (dict(box="1,2,x,4"), "must be four numbers"),
    (dict(box=(0, 0, 1, 1), box_unit="tokens"), "not inside the cells"),
    (dict(strategy="rgn"), "strategy='rgn' needs a trained RGN: pass rgn_checkpoint='DIR'"),
    (dict(strategy="search", box=(0, 0, 5, 5)), "box=(top, left, height, width) is for"),
    (dict(strategy="bogus"), "strategy must be one of"),
])
def test_api_errors_name_python_arguments(editor, wide, kwargs, needle):
  with pytest.raises(ValueError) as error:
    editor.edit(wide, "a lion", **kwargs)
  assert needle in str(error.value) and "--" not in str(error.value)


def test_feather_is_bounded_in_the_photos_pixels():
  """On a 4000x1500 photo (256-pixel canvas, 16 tokens, the official demo's sigma of 15
  canvas pixels) the unbounded feather reaches hundreds of pixels past the box; bounded,
  nothing changes FEATHER_LIMIT x the box side or further past it; and where the bound
  does not bite (an unfeathered mask) the result is bit-identical."""
  size, grid = 256, 16
  lay = canvas_lib.layout((1500, 4000), size, grid)
  original = np.full((1500, 4000, 3), 40, np.uint8)
  edited = np.full((size, size, 3), 0.9, np.float32)
  box = np.asarray([7, 7, 2, 2])        # tokens, inside the photo's rows (valid area)
  assert lay.valid_tlhw_tokens[0] <= 7 and 9 <= sum(lay.valid_tlhw_tokens[::2])
  t, l, h, w = canvas_lib.boxes_to_original(box, lay)

  def reach(mask):   # how far past the box pixels changed (rows, cols)
    unbounded = canvas_lib.composite(original, edited, mask, lay, dtype=np.uint8)
    bounded = canvas_lib.composite(original, edited, mask, lay, dtype=np.uint8,
                                   box_tokens=box)
    out = []
    for result in (unbounded, bounded):
      rows, cols = np.nonzero(np.any(result != original, -1))
      out.append((max(t - rows.min(), rows.max() + 1 - (t + h)),
                  max(l - cols.min(), cols.max() + 1 - (l + w))))
    return out, unbounded, bounded

  sigma = box_editing.feather_sigma(size)
  assert sigma == 15
  mask = np.asarray(box_editing.feathered_mask(box_editing.box_token_mask(box, grid), size,
                                               sigma))
  (free, bound), _, _ = reach(mask)
  assert min(free) > 400                      # the problem: far outside the box
  margins = canvas_lib.feather_limit(box, lay)[1]
  assert bound[0] < margins[0] and bound[1] < margins[1]
  assert margins == (int(np.ceil(0.25 * h)), int(np.ceil(0.25 * w)))
  # A hard mask (no feather): the bound does not bite, the results are the same bytes.
  hard = np.asarray(box_editing.feathered_mask(box_editing.box_token_mask(box, grid), size, 0))
  _, unbounded, bounded = reach(hard)
  np.testing.assert_array_equal(unbounded, bounded)


# -- The command line ------------------------------------------------------------------

def test_cli_default_strategy_is_search_and_says_so(cli_env, wide, tmp_path):
  proc = cli_helpers.run(cli_env, "lr_jax.edit", "--config", "configs/tiny.py",
                         "--image", str(wide), "--prompt", "a lion", "--out", str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[0].startswith("strategy: search (no rgn_checkpoint")
  [record] = tmp_path.glob("*_search_seed0.json")
  assert json.loads(record.read_text())["strategy"] == "search"


def test_cli_box_with_amused_keeps_outside_pixels(cli_env, wide, tmp_path):
  proc = cli_helpers.run(cli_env, "lr_jax.edit", "--config", "configs/amused_tiny.py",
                         "--image", str(wide), "--prompt", "a red ball", "--out", str(tmp_path),
                         "--box", "30,40,50,70", "--box", "0,300,150,100")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[0] == "strategy: box (boxes given: no region selection)"
  assert "DINO" not in proc.stderr
  [path] = tmp_path.glob("*_box_seed0.json")
  record = json.loads(path.read_text())
  assert record["strategy"] == "box" and record["editor"] == "amused"
  assert record["given_boxes_as_asked"]["tlhw"] == [[30, 40, 50, 70], [0, 300, 150, 100]]
  assert len(record["given_boxes_tlhw_tokens"]) == 2 == len(record["scores"]["S"])
  photo = np.asarray(Image.open(wide))
  result = np.asarray(Image.open(record["files"]["edited"]))
  assert result.shape == photo.shape
  outside = _outside(record, photo.shape[:2])
  np.testing.assert_array_equal(result[outside], photo[outside])
  assert (result != photo).any()


@pytest.mark.parametrize("args, needles", [
    (("--box", "1,2,3"), ("--box '1,2,3' must be four numbers",)),
    (("--box", "0,0,10,500"), ("--box 0,0,10,500 is not inside wide.png", "400x150")),
    (("--box", "0,0,0,5"), ("is empty",)),
    (("--strategy", "rgn"), ("--strategy rgn needs a trained RGN", "--rgn_checkpoint DIR",
                             "--strategy search")),
])
def test_cli_bad_boxes_and_strategies_fail_before_models_load(cli_env, wide, tmp_path, args,
                                                              needles):
  proc = cli_helpers.run(cli_env, "lr_jax.edit", "--config", "configs/tiny.py",
                         "--image", str(wide), "--prompt", "a lion", "--out", str(tmp_path),
                         *args, timeout=120)
  cli_helpers.assert_clean_error(proc, *needles)
  assert not any(tmp_path.iterdir())
