"""The editor contract (lr_jax/editors/base.py), checked for every module in lr_jax/editors/
and for a fake editor that is not MaskGIT; the fake one also trains and edits end to end."""
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lr_jax import checkpointing
from lr_jax import editors
from lr_jax import inference
from lr_jax import notebook
from lr_jax.files import manifest as manifest_lib
from lr_jax import samples
from lr_jax.method import settings
from lr_jax import trainer
from lr_jax.editors import base
from lr_jax.models import build_models
from tests import fake_editor

FAKE = "tests.fake_editor"
FAKE_FINE = FAKE + ":fine"   # the fake editor on its own grid 2x finer than the box grid
NAMES = editors.available() + [FAKE, FAKE_FINE]


def config_for(name):
  """The editor's own tiny config (`CONFIGS`); the fake editor on configs/tiny.py."""
  module, _, variant = name.partition(":")
  if "." in module:
    c = tiny.get_config()
    editors.use(c, module)
    c.region.sizes = (1, 2)   # the fake editor's grid is 2x2
  else:
    c = notebook.load_config(editors.configs(module)[1])
  if variant == "fine":
    c.editor.fine = 2
  c.train.epochs = 2
  c.train.checkpoint_every = 1
  return c


@pytest.fixture(scope="module", params=NAMES)
def built(request):
  return request.param.partition(":")[0], build_models(config_for(request.param))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  d = tmp_path_factory.mktemp("samples")
  return manifest_lib.read_manifest(samples.write_samples(d))


def test_registry_lists_maskgit_and_refuses_unknown_names():
  assert "maskgit" in editors.available() and "base" not in editors.available()
  with pytest.raises(settings.SettingsError, match="unknown editor 'muse'.*maskgit"):
    editors.named("muse")
  with pytest.raises(settings.SettingsError, match="cannot import"):
    editors.named("tests.no_such_editor")


@pytest.mark.parametrize("name", editors.available() + [FAKE])
def test_module_declares_its_config(name):
  module = editors.named(name)
  section = editors.section(name)
  assert section.name == name
  for key in tuple(module.RGN_KEYS) + tuple(module.RESUMABLE_KEYS):
    head, field = key.split(".")
    assert head == "editor" and field in section, key
  module.make(config_for(name))
  # The config files the registry names exist and pick this editor.
  if "." not in name:
    for config_name in editors.configs(name):
      assert (pathlib.Path(__file__).parents[1] / "configs" / f"{config_name}.py").is_file()


@pytest.mark.parametrize("name", editors.available())
def test_switching_editors_leaves_nothing_of_the_other(name):
  c = tiny.get_config()
  editors.use(c, name)
  assert set(c.editor.keys()) == set(editors.section(name).keys())
  # Only the editor section changes: no top-level section of another editor.
  assert set(c.keys()) == set(tiny.get_config().keys())
  # --config.editor.name=X on another editor's config: `fit` swaps the settings.
  other = next(n for n in editors.available() if n != name)
  c = tiny.get_config()
  editors.use(c, other)
  shared = {k: c.editor[k] for k in c.editor if k in editors.section(name) and k != "name"}
  c.editor.name = name
  editors.fit(c)
  assert set(c.editor.keys()) == set(editors.section(name).keys())
  assert all(c.editor[k] == v for k, v in shared.items())
  editors.named(name).make(c)


def test_old_layout_maps_onto_the_editor_section():
  old_maskgit = {"models": "tiny", "maskgit.name": "tiny", "maskgit.cache_dir": "",
                 "edit.num_iter": 4, "edit.grow_tokens": 0, "region.sizes": [1, 2]}
  assert editors.upgrade_saved(old_maskgit) == {
      "models": "tiny", "editor.name": "maskgit", "editor.model": "tiny",
      "editor.cache_dir": "", "editor.num_iter": 4, "editor.grow_tokens": 0,
      "region.sizes": [1, 2]}
  old_amused = {"editor.name": "amused", "maskgit.name": "tiny", "edit.num_iter": 4,
                "amused.resolution": 256, "amused_edit.num_steps": 4}
  assert editors.upgrade_saved(old_amused) == {
      "editor.name": "amused", "editor.resolution": 256, "editor.num_steps": 4}
  today = {"editor.name": "maskgit", "editor.model": "tiny"}
  assert editors.upgrade_saved(today) == today


def test_editor_is_static_and_describes_itself(built):
  name, b = built
  editor = b.models.editor
  assert isinstance(editor, base.Editor) and dataclasses.is_dataclass(editor)
  hash(editor)   # a static argument of the jitted steps
  assert editor.name == name
  assert editor.image_size % editor.box_grid == 0
  assert editor.record()["editor"] == name


def test_condition_and_dummy_condition_agree(built, examples):
  _, b = built
  editor = b.models.editor
  cond = editor.condition(examples, b.text_encoder)
  assert len(cond.records) == len(cond.summaries) == len(examples)
  assert all(isinstance(s, str) and s for s in cond.summaries)
  json.dumps(cond.records)
  dummy = editor.dummy_condition(len(examples))
  assert set(dummy) == set(cond.arrays)
  for k, v in cond.arrays.items():
    assert v.shape == dummy[k].shape and v.dtype == dummy[k].dtype, k


def _edit_inputs(editor, batch=2, num_boxes=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((batch, editor.image_size, editor.image_size, 3)).astype(np.float32)
  g = editor.box_grid
  sides = rng.integers(1, g + 1, (batch, num_boxes, 2))
  corners = np.stack([rng.integers(0, g - s + 1) for s in sides.reshape(-1)]).reshape(
      batch, num_boxes, 2)
  return jnp.asarray(images), jnp.asarray(np.concatenate([corners, sides], -1), jnp.int32)


def test_edit_contract(built):
  _, b = built
  editor, params = b.models.editor, b.frozen["editor"]
  images, boxes = _edit_inputs(editor)
  cond = jax.tree.map(jnp.asarray, editor.dummy_condition(2))
  rng = jax.random.PRNGKey(3)
  edit = jax.jit(editor.edit)
  out = edit(params, images, boxes, cond, rng)
  s = editor.image_size
  assert out.images.shape == (2, 3, s, s, 3) and out.pixel_mask.shape == (2, 3, s, s, 1)
  assert out.masked_boxes.shape == (2, 3, 4)
  assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
  assert float(out.pixel_mask.min()) >= 0 and float(out.pixel_mask.max()) <= 1
  # Where the blend weight is 0 the input is kept exactly.
  keep = np.broadcast_to(np.asarray(out.pixel_mask) == 0, out.images.shape)
  np.testing.assert_array_equal(np.asarray(out.images)[keep],
                                np.broadcast_to(np.asarray(images)[:, None], keep.shape)[keep])
  assert (np.asarray(out.pixel_mask) > 0).any(axis=(2, 3, 4)).all()   # every box edits
  # The masked boxes contain the boxes and stay on the grid.
  mb, bx = np.asarray(out.masked_boxes), np.asarray(boxes)
  assert (mb[..., :2] <= bx[..., :2]).all()
  assert (mb[..., :2] + mb[..., 2:] >= bx[..., :2] + bx[..., 2:]).all()
  assert (mb >= 0).all() and (mb[..., :2] + mb[..., 2:] <= editor.box_grid).all()
  # One key per box, fold_in(fold_in(rng, b), n): a box decodes as it does alone, and
  # the other boxes of the batch do not change it (up to float32 summation order in
  # decoders that see another batch size).
  alone = edit(params, images[:1], boxes[:1, :1], jax.tree.map(lambda x: x[:1], cond), rng)
  np.testing.assert_allclose(alone.images[0, 0], out.images[0, 0], rtol=0, atol=1e-4)
  _, others = _edit_inputs(editor, seed=1)
  others = others.at[1, 2].set(boxes[1, 2])
  moved = edit(params, images, others, cond, rng)
  np.testing.assert_allclose(moved.images[1, 2], out.images[1, 2], rtol=0, atol=1e-4)
  # Another key samples another edit.
  again = edit(params, images, boxes, cond, jax.random.PRNGKey(4))
  assert np.abs(np.asarray(again.images) - np.asarray(out.images)).max() > 1e-2


def test_fake_editor_trains_and_edits_end_to_end(examples, tmp_path):
  config = config_for(FAKE)
  b = build_models(config)
  result = trainer.train(config, tmp_path / "wd", built=b, examples=examples, progress=False)
  assert [m["step"] for m in result.metrics] == [1, 2, 3, 4]
  assert all(np.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in result.metrics)
  outcomes = inference.run_edit(config, examples, out_dir=tmp_path / "out",
                                rgn_checkpoint=str(tmp_path / "wd"), built=b, progress=False)
  first = outcomes[0]
  assert first.result.shape == (300, 451, 3)
  record = json.loads(pathlib.Path(first.files["record"]).read_text())
  assert record["editor"] == FAKE and "class" not in record
  assert record["fake_colour"] == pytest.approx(fake_editor.prompt_colour("a lion").tolist())
  assert record["conditioning"].startswith("colour")
  # The box was painted.
  top, left, h, w = record["changed_region_tlhw_pixels_original"]
  assert h > 0 and w > 0
  assert pathlib.Path(first.files["sheet"]).stat().st_size > 1000
  # The checkpoint guard knows the fake editor's grid.
  other = config_for(FAKE)
  other.editor.grid = 4
  with pytest.raises(checkpointing.WorkdirError, match="editor.grid"):
    checkpointing.load_rgn_params(tmp_path / "wd", b.models, other)
