"""The geometry-preserving canvas and window mode (lr_common/canvas.py, lr_jax/method/window.py):
round things stay round, anchors stay off the padding, only the edited box changes,
window edits land where they belong, training sees what inference sees."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from lr_common import pixels as pixels_lib
from lr_jax.method import anchors as anchors_lib
from lr_common import canvas as canvas_lib
from lr_jax import checkpointing
from lr_jax import run_settings
from lr_jax import dataset
from lr_jax import editors
from lr_jax import inference
from lr_jax.files import manifest as manifest_lib
from lr_jax.method import settings
from lr_jax.method import step as step_lib
from lr_jax import trainer
from lr_jax.method import window as window_lib
from lr_jax.models import build_models
from tests import fake_editor

SHAPES = {"wide": (120, 360), "tall": (360, 120)}   # 3:1 and 1:3


def circle_image(height, width, radius=None, centre=None):
  """uint8 grey photo with a white disc (and a little texture, so nothing is flat)."""
  radius = radius or min(height, width) // 3
  cy, cx = centre or (height // 2, width // 3 if width > height else width // 2)
  rows, cols = np.mgrid[:height, :width]
  disc = (rows + 0.5 - cy) ** 2 + (cols + 0.5 - cx) ** 2 <= radius ** 2
  noise = np.random.default_rng(height * width).integers(0, 20, (height, width))
  image = np.where(disc, 235, 60 + noise).astype(np.uint8)
  return np.repeat(image[..., None], 3, -1), disc


def _extent(mask):
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


@pytest.mark.parametrize("shape", SHAPES)
def test_circle_stays_round_and_its_box_maps_to_a_square(shape):
  image, disc = circle_image(*SHAPES[shape])
  lay = canvas_lib.layout(image.shape, 256, 16, "pad")
  canvas = canvas_lib.to_canvas(image, lay)
  assert canvas.shape == (256, 256, 3)
  top, bottom, left, right = _extent(canvas[..., 0] > 0.58)
  assert abs((bottom - top) - (right - left)) <= 1          # round on the model input
  squeezed = pixels_lib.to_model_input(image, 256)
  s_top, s_bottom, s_left, s_right = _extent(squeezed[..., 0] > 0.58)
  ratio = (s_bottom - s_top) / (s_right - s_left)
  assert ratio > 2.5 or ratio < 0.4                          # ... where squeezing is not
  # The photo sits inside its valid token area, the rest is padding.
  t, l, h, w = lay.image_tlhw
  vt, vl, vh, vw = lay.valid_tlhw_tokens
  assert max(h, w) == 256 and round(max(h, w) / min(h, w)) == 3
  assert vt * 16 == t and vl * 16 == l and (vt + vh) * 16 >= t + h and (vl + vw) * 16 >= l + w
  # A square token box around the circle maps to a square of the original holding it.
  r0, c0 = top // 16, left // 16
  side = max(-(-bottom // 16) - r0, -(-right // 16) - c0)
  (bt, bl, bh, bw), = canvas_lib.boxes_to_original(np.array([[r0, c0, side, side]]), lay)
  assert abs(bh - bw) <= 2                                   # outward rounding, each side
  d_top, d_bottom, d_left, d_right = _extent(disc)
  assert bt <= d_top and bl <= d_left and bt + bh >= d_bottom and bl + bw >= d_right


def test_anchors_and_boxes_never_on_the_padding():
  lay = canvas_lib.layout((120, 360), 256, 16, "pad")        # rows 5..10 hold the photo
  valid = jnp.asarray([lay.valid_tlhw_tokens])
  attention = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
  attention[:, :4] += 10.0                                   # the padding looks best
  anchors = np.asarray(anchors_lib.top_k_anchors(attention, 6, valid))
  vt, vl, vh, vw = lay.valid_tlhw_tokens
  assert ((anchors[..., 0] >= vt) & (anchors[..., 0] < vt + vh)).all()
  # Without the mask they would be on the padding (the injection works).
  assert (np.asarray(anchors_lib.top_k_anchors(attention, 6))[..., 0] < 4).all()
  boxes = np.asarray(anchors_lib.box_proposals(anchors, (3, 9, 15), 16, valid))
  assert (boxes[..., 0] >= vt).all() and (boxes[..., 0] + boxes[..., 2] <= vt + vh).all()
  assert (boxes[..., 2:] >= 1).all()
  # More anchors than valid tokens: the surplus lands on valid tokens too.
  tiny_valid = jnp.asarray([[2, 3, 1, 2]])
  many = np.asarray(anchors_lib.top_k_anchors(attention, 5, tiny_valid))
  assert set(map(tuple, many[0].tolist())) <= {(2, 3), (2, 4)}
  # The random baselines draw inside the valid area.
  _, _, drawn = anchors_lib.random_boxes(jnp.asarray(np.uint32([0, 7])), (1, 64), 16,
                                         valid=valid[:, None])
  drawn = np.asarray(drawn)
  assert (drawn[..., 0] >= vt).all() and (drawn[..., 0] + drawn[..., 2] <= vt + vh).all()


def test_find_regions_masks_the_injected_padding_attention(monkeypatch):
  config = tiny.get_config()
  built = build_models(config)
  method = settings.method(config)
  image, _ = circle_image(30, 90)
  lay = canvas_lib.layout(image.shape, 64, 4, "pad")
  real = step_lib.dino_lib.dino_features

  def padding_wins(*args):
    feats, attention = real(*args)
    return feats, attention.at[:, 0].add(100.0)             # row 0 is padding
  monkeypatch.setattr(step_lib.dino_lib, "dino_features", padding_wins)
  canvas = canvas_lib.to_canvas(image, lay)[None]
  valid = np.asarray([lay.valid_tlhw_tokens], np.int32)
  regions = step_lib.find_regions(built.models, built.frozen, canvas, method.region, valid)
  vt, _, vh, _ = lay.valid_tlhw_tokens
  assert vt >= 1
  rows = np.asarray(regions.anchors)[..., 0]
  assert ((rows >= vt) & (rows < vt + vh)).all()
  boxes = np.asarray(regions.boxes)
  assert (boxes[..., 0] >= vt).all() and (boxes[..., 0] + boxes[..., 2] <= vt + vh).all()
  unmasked = step_lib.find_regions(built.models, built.frozen, canvas, method.region)
  assert (np.asarray(unmasked.anchors)[..., 0] == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_only_the_box_changes_and_padding_never_reaches_the_result(shape):
  image, _ = circle_image(*SHAPES[shape])
  lay = canvas_lib.layout(image.shape, 64, 4, "pad")
  rng = np.random.default_rng(1)
  edited = rng.random((64, 64, 3)).astype(np.float32)
  vt, vl, _, _ = lay.valid_tlhw_tokens
  box = np.array([vt, vl, 1, 1])
  mask = np.zeros((64, 64, 1), np.float32)
  mask[vt * 16:(vt + 1) * 16, vl * 16:(vl + 1) * 16] = 1.0
  result = canvas_lib.composite(image, edited, mask, lay, dtype=np.uint8)
  top, left, h, w = canvas_lib.boxes_to_original(box, lay)
  changed = pixels_lib.changed_region(result, image)
  assert changed is not None
  ct, cl, ch, cw = changed
  margin = 3 * max(lay.original_pixels_per_token()) / 16   # the bilinear mask's support
  assert ct >= top - margin and cl >= left - margin
  assert ct + ch <= top + h + margin and cl + cw <= left + w + margin
  outside = np.ones(image.shape[:2], bool)
  outside[max(0, int(top - margin)):int(top + h + margin),
          max(0, int(left - margin)):int(left + w + margin)] = False
  np.testing.assert_array_equal(result[outside], image[outside])
  # An edit that lies only on the padding changes nothing.
  pad_mask = (~canvas_lib.valid_mask(lay))[..., None].astype(np.float32)
  assert pad_mask.any()
  np.testing.assert_array_equal(canvas_lib.composite(image, edited, pad_mask, lay,
                                                     dtype=np.uint8), image)


def test_squeeze_canvas_is_the_old_resize_and_box_mapping():
  image = np.random.default_rng(2).integers(0, 256, (300, 451, 3)).astype(np.uint8)
  lay = canvas_lib.layout(image.shape, 64, 8, "squeeze")
  np.testing.assert_array_equal(canvas_lib.to_canvas(image, lay),
                                pixels_lib.to_model_input(image, 64))
  # A 300 x 451 photo on an 8 x 8 grid: rows x37.5, columns x56.375, outward.
  assert canvas_lib.boxes_to_original(np.array([[0, 3, 2, 2], [4, 4, 4, 4]]), lay) == [
      [0, 169, 75, 113], [150, 225, 150, 226]]
  assert canvas_lib.token_centres_to_original(np.array([[0, 3]]), lay) == [[18.75, 197.3125]]
  # On the padded canvas: the photo (85 rows from canvas row 80) has its centre at
  # canvas row 122.5, token row 7.66; that maps to the original's centre.
  pad = canvas_lib.layout((120, 360), 256, 16, "pad")
  (row, col), = canvas_lib.token_centres_to_original(np.array([[122.5 / 16 - 0.5, 7.5]]), pad)
  assert abs(row - 60) < 1e-6 and abs(col - 180) < 1e-6


def painted_edit(colour):
  """A synthetic editor on a 64 px canvas with 4x4 tokens: paints each box with
  `colour` (what `step.edit_boxes` returns, for one image and one box)."""
  def edit(canvas, box):
    t, l, h, w = (int(v) * 16 for v in box)
    mask = np.zeros((64, 64, 1), np.float32)
    mask[t:t + h, l:l + w] = 1.0
    return np.where(mask > 0, colour, canvas).astype(np.float32), mask
  return edit


def test_window_edit_lands_in_place_at_the_original_resolution():
  image, _ = circle_image(600, 1800, radius=60, centre=(300, 1300))
  whole = canvas_lib.layout(image.shape, 64, 4, "pad")      # a token: 450 original pixels
  box_px = (230, 1230, 140, 140)                             # around the disc
  win = window_lib.plan(box_px, whole, "auto", 2.0)
  assert win.used and win.gain >= window_lib.AUTO_MIN_GAIN
  wt, wl, wh, ww = win.window_tlhw
  assert (wh, ww) == (280, 280)                              # 2 x the box, square
  assert wt <= 230 and wl <= 1230 and wt + wh >= 370 and wl + ww >= 1370
  canvas = window_lib.window_canvas(image, win)
  np.testing.assert_array_equal(
      canvas, pixels_lib.to_model_input(image[wt:wt + wh, wl:wl + ww], 64))
  edited, mask = painted_edit(np.array([1.0, 0.0, 0.0], np.float32))(canvas,
                                                                     win.box_tlhw_tokens)
  result = window_lib.paste(image, win, edited, mask)
  assert result.shape == image.shape and result.dtype == np.uint8
  # The painted window tokens, in original pixels: they hold the box.
  t, l, h, w = (int(v) * 70 for v in win.box_tlhw_tokens)   # 280 / 4 pixels per token
  t, l = t + wt, l + wl
  assert t <= 230 and l <= 1230 and t + h >= 370 and l + w >= 1370
  # Inside the box the paint (away from the bilinear blend's fringe: 280 / 64 = 4.4
  # original pixels per canvas pixel), outside it the input exactly.
  inner = result[t + 6:t + h - 6, l + 6:l + w - 6]
  assert (inner == np.array([255, 0, 0], np.uint8)).all()
  changed = np.any(result != image, axis=-1)
  outside = np.ones(image.shape[:2], bool)
  outside[t - 10:t + h + 10, l - 10:l + w + 10] = False
  assert not changed[outside].any() and changed[t:t + h, l:l + w].all()
  # A window token covers 70 original pixels, a whole-canvas one about 450.
  record = win.record(whole)
  assert record["original_pixels_per_token_rc"] == {
      "canvas": [round(v, 3) for v in whole.original_pixels_per_token()],
      "window": [70.0, 70.0]}
  assert record["original_pixels_per_token_rc"]["canvas"][1] == 450.0


def test_window_auto_rule_and_clamping():
  small = canvas_lib.layout((256, 256), 256, 16, "pad")
  assert not window_lib.plan((64, 64, 80, 80), small, "auto", 2.0).used
  assert window_lib.plan((64, 64, 80, 80), small, "on", 2.0).used
  big = canvas_lib.layout((3000, 4000), 256, 16, "pad")      # a token: 250 pixels
  five = window_lib.plan((1000, 1500, 1250, 1250), big, "auto", 2.0)
  assert five.used and five.window_tlhw[2:] == (2500, 2500) and five.gain == 1.6
  assert not window_lib.plan((1000, 1500, 1250, 1250), big, "off", 2.0).used
  squeezed = canvas_lib.layout((3000, 4000), 256, 16, "squeeze")   # edits as before
  assert not window_lib.plan((1000, 1500, 1250, 1250), squeezed, "auto", 2.0).used
  assert window_lib.plan((1000, 1500, 1250, 1250), squeezed, "on", 2.0).used
  # A box too large for a square window: the window is cut to the photo (and padded).
  cut = window_lib.plan((500, 1000, 1800, 600), big, "auto", 2.0)
  assert cut.window_tlhw == (0, 0, 3000, 3600) and not cut.used      # gain 250 / 225
  assert cut.layout.valid_tlhw_tokens == (1, 0, 14, 16)
  assert window_lib.window_around((10, 3900, 50, 90), (3000, 4000), 2.0) == (
      0, 3820, 180, 180)


def test_bad_canvas_and_window_settings_are_one_line_errors():
  for key, value, needle in [("canvas", "stretch", "region.canvas must be one of pad, squeeze"),
                             ("window", "maybe", "region.window must be one of auto, on, off"),
                             ("window_scale", 0.5, "region.window_scale must be a finite")]:
    c = tiny.get_config()
    c.region[key] = value
    with pytest.raises(settings.SettingsError, match=needle):
      settings.method(c)


def test_old_workdir_config_is_filled_as_squeeze(tmp_path):
  saved = json.loads(tiny.get_config().to_json_best_effort())
  for key in ("canvas", "window", "window_scale"):
    del saved["region"][key]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  flat = checkpointing._saved_flat(tmp_path / "config.json")
  assert flat["region.canvas"] == "squeeze" and flat["region.window"] == "auto"
  c = tiny.get_config()
  keys = checkpointing.rgn_keys(run_settings.parse(c))
  with pytest.raises(checkpointing.WorkdirError, match="region.canvas: saved='squeeze'"):
    checkpointing.check_compatible(tmp_path, run_settings.parse(c), keys)
  c.region.canvas = "squeeze"
  checkpointing.check_compatible(tmp_path, run_settings.parse(c), keys)
  c.region.window = "off"   # window settings never refuse an RGN
  checkpointing.check_compatible(tmp_path, run_settings.parse(c), keys)


@pytest.fixture(scope="module")
def wide_examples(tmp_path_factory):
  d = tmp_path_factory.mktemp("wide")
  image, _ = circle_image(64, 192)   # the loader's smallest side is 64
  Image.fromarray(image).save(d / "wide.png")
  tall, _ = circle_image(192, 64)
  Image.fromarray(tall).save(d / "tall.png")
  return [manifest_lib.Example(d / "wide.png", "a lion", "a ball", None),
          manifest_lib.Example(d / "tall.png", "a rooster", "a ball", None)]


def test_training_and_inference_put_the_photo_on_the_same_canvas(wide_examples, tmp_path,
                                                                   monkeypatch):
  config = tiny.get_config()
  config.train.max_steps = 1
  config.region.window = "off"
  built = build_models(config)
  seen = []
  real = dataset.prepare

  def spy(*args, **kwargs):
    seen.append(real(*args, **kwargs))
    return seen[-1]
  monkeypatch.setattr(dataset, "prepare", spy)
  trainer.train(config, tmp_path / "wd", built=built, examples=wide_examples, progress=False)
  outcomes = inference.edit_examples(built, step_lib.init_train_state(
      built.models, settings.method(config), jax.random.PRNGKey(0)).params,
      wide_examples, config, progress=False)
  trained, edited = seen
  np.testing.assert_array_equal(trained.images, edited.images)
  np.testing.assert_array_equal(trained.valid, edited.valid)
  assert trained.valid.tolist() == [[1, 0, 2, 4], [0, 1, 4, 2]]   # padded, not squeezed
  expected = canvas_lib.to_canvas(np.asarray(Image.open(wide_examples[0].image_path)),
                                  canvas_lib.layout((64, 192), 64, 4, "pad"))
  np.testing.assert_array_equal(trained.images[0], expected)
  for out in outcomes:
    rows = np.asarray(out.outputs.candidates.anchors)[:, 0]
    cols = np.asarray(out.outputs.candidates.anchors)[:, 1]
    vt, vl, vh, vw = out.record["canvas"]["valid_tlhw_tokens"]
    assert ((rows >= vt) & (rows < vt + vh) & (cols >= vl) & (cols < vl + vw)).all()
  # Photos of both aspects share one compiled inference.
  assert step_lib.make_infer(built.models, settings.method(config))._cache_size() == 1


def test_window_mode_end_to_end_with_a_painting_editor(tmp_path):
  config = tiny.get_config()
  editors.use(config, "tests.fake_editor")
  config.editor.grid, config.editor.noise = 4, 0.0
  config.region.sizes = (1,)   # a 1-token box: its window (2 tokens) is not the photo
  config.region.window = "on"
  image, _ = circle_image(200, 800, radius=40, centre=(100, 420))
  Image.fromarray(image).save(tmp_path / "wide.png")
  examples = [manifest_lib.Example(tmp_path / "wide.png", "a lion", "a ball", None)]
  built = build_models(config)
  out = inference.run_edit(config, examples, out_dir=tmp_path / "out", built=built,
                           progress=False)[0]
  record = json.loads(pathlib.Path(out.files["record"]).read_text())
  window = record["window"]
  assert window["used"] and window["mode"] == "on"
  assert window["masked_box_tlhw_tokens_window"] == window["box_tlhw_tokens_window"]
  mt, ml, mh, mw = window["masked_box_tlhw_pixels_original"]   # in the window, in place
  wt, wl, wh, ww = window["window_tlhw_pixels_original"]
  colour = np.round(fake_editor.prompt_colour("a lion") * 255).astype(np.uint8)
  # Where the result changed it is the editor's colour, all inside the window and
  # holding the kept box.
  changed = np.any(out.result != image, axis=-1)
  ct, cl, ch, cw = record["changed_region_tlhw_pixels_original"]
  assert wt <= ct and wl <= cl and ct + ch <= wt + wh and cl + cw <= wl + ww
  bt, bl, bh, bw = record["boxes_tlhw_pixels_original"][record["best_candidate"]]
  assert ct <= bt + 1 and cl <= bl + 1 and ct + ch >= bt + bh - 1 and cl + cw >= bl + bw - 1
  assert abs(ct - mt) <= 4 and abs(cl - ml) <= 4 and abs(ch - mh) <= 8 and abs(cw - mw) <= 8
  assert ww < 800 and window["gain"] > 1                    # a window, not the photo
  # Away from the edges' blend and bicubic ringing (3 canvas pixels).
  inset = int(np.ceil(3 * max(window["original_pixels_per_token_rc"]["window"]) / 16))
  inner = out.result[ct + inset:ct + ch - inset, cl + inset:cl + cw - inset]
  assert inner.size and (np.abs(inner.astype(int) - colour).max(-1) <= 1).all()
  outside = np.ones(image.shape[:2], bool)
  outside[wt:wt + wh, wl:wl + ww] = False
  np.testing.assert_array_equal(out.result[outside], image[outside])
  assert changed.any()
  pixels = window["original_pixels_per_token_rc"]
  assert pixels["canvas"][1] == 200.0                        # 800 pixels / 4 tokens
  assert pixels["window"][0] < pixels["canvas"][0]
  assert record["canvas"]["canvas"] == "pad" and "whole-photo canvas" in (
      record["scores"]["computed_on"])
  assert pathlib.Path(out.files["sheet"]).stat().st_size > 1000


def test_sheet_panels_have_the_photos_aspect(tmp_path):
  from types import SimpleNamespace
  from lr_jax.files import sheets
  rng = np.random.default_rng(3)
  outputs = SimpleNamespace(
      best=0, chosen=np.zeros(2, int), regions=SimpleNamespace(attention=rng.random((4, 4))),
      candidates=SimpleNamespace(
          anchors=np.array([[1, 0], [1, 2]]),
          proposals=np.array([[[1, 0, 1, 1]], [[1, 2, 1, 1]]], np.float32)),
      edit=SimpleNamespace(images=rng.random((2, 64, 64, 3))),
      scores=SimpleNamespace(score=np.ones(2), t2i=np.ones(2), i2i=np.ones(2)))
  heights = {}
  for canvas in ("pad", "squeeze"):
    lay = canvas_lib.layout((64, 192), 64, 4, canvas)
    path = sheets.inference_sheet(tmp_path / f"{canvas}.png", image=rng.random((64, 64, 3)),
                                  outputs=outputs, layout=lay, result=rng.random((64, 192, 3)))
    heights[canvas] = Image.open(path).height
  square = sheets.inference_sheet(tmp_path / "square.png", image=rng.random((64, 64, 3)),
                                  outputs=outputs)
  # 3:1 panels on both canvases (the padding cut away, the squeeze unstretched; the pad
  # canvas's photo is 21 x 64): the rows are a third as tall as square panels.
  assert abs(heights["pad"] - heights["squeeze"]) <= 4
  assert max(heights.values()) < 0.6 * Image.open(square).height
