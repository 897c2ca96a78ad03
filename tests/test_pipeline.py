"""End to end on the tiny config: train, resume, edit, outputs, and the errors users meet."""
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from lr_jax import checkpointing
from lr_jax import inference
from lr_jax.files import manifest as manifest_lib
from lr_jax import samples
from lr_jax.method import settings
from lr_jax.method import step as step_lib
from lr_jax import trainer
from lr_jax.models import build_models
from tests import tiny_setup

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  return tiny_setup.tiny_config(**{"train.epochs": 2, "train.checkpoint_every": 1,
                                   **overrides})


@pytest.fixture(scope="module")
def built():
  return build_models(tiny_config())


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  d = tmp_path_factory.mktemp("samples")
  samples.write_samples(d)
  # A second, wide image so that compositing back to an odd size is exercised.
  Image.fromarray((np.random.default_rng(0).random((90, 200, 3)) * 255).astype(np.uint8)
                  ).save(d / "noise.png")
  return [manifest_lib.Example(d / "chelsea.png", "a lion", "a photo of a cat", None),
          manifest_lib.Example(d / "noise.png", "a rooster", None, None)]


def _train(built, examples, workdir, **overrides):
  return trainer.train(tiny_config(**overrides), workdir, built=built, examples=examples,
                       progress=False)


def _params_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


def test_train_writes_metrics_checkpoints_and_curve(built, examples, tmp_path):
  result = _train(built, examples, tmp_path)
  assert len(result.metrics) == 4                         # 2 epochs x 2 images
  assert [m["step"] for m in result.metrics] == [1, 2, 3, 4]
  assert all(np.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in result.metrics)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert (tmp_path / "loss_curve.png").stat().st_size > 1000
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit())[-1] == 4
  # The RGN really moved away from its initialisation.
  init = step_lib.init_train_state(built.models, settings.method(tiny_config()),
                                   jax.random.split(jax.random.PRNGKey(0))[0])
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(result.state.params))]
  assert max(moved) > 1e-4


def test_interrupted_run_resumes_to_the_same_parameters(built, examples, tmp_path):
  full = _train(built, examples, tmp_path / "full")
  first = _train(built, examples, tmp_path / "cut", **{"train.max_steps": 2})
  assert first.metrics[-1]["step"] == 2
  resumed = _train(built, examples, tmp_path / "cut")
  assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
  _params_close(full.state.params, resumed.state.params)
  _params_close(full.state.opt_state, resumed.state.opt_state)
  np.testing.assert_allclose([m["loss"] for m in full.metrics],
                             [m["loss"] for m in resumed.metrics], atol=1e-6)


def test_workdir_of_another_config_is_refused(built, examples, tmp_path):
  _train(built, examples, tmp_path, **{"train.max_steps": 1})
  with pytest.raises(checkpointing.WorkdirError, match="optim.learning_rate"):
    _train(built, examples, tmp_path, **{"optim.learning_rate": 0.1})


def test_workdir_from_before_the_editor_seam_resumes_and_loads(built, examples, tmp_path):
  """Settings added later (`editor.name`, `score.top_t2i`) count as their defaults in a
  workdir whose config.json predates them; its MaskGIT settings were the `maskgit` and
  `edit` sections then."""
  _train(built, examples, tmp_path, **{"train.max_steps": 1})
  saved = json.loads((tmp_path / "config.json").read_text())
  editor = saved.pop("editor")
  del editor["name"], saved["score"]["top_t2i"]
  saved["maskgit"] = {"name": editor.pop("model"),
                      **{k: editor.pop(k) for k in ("tokenizer", "transformer", "cache_dir")}}
  saved["edit"] = editor
  (tmp_path / "config.json").write_text(json.dumps(saved))
  resumed = _train(built, examples, tmp_path)
  assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
  assert jax.tree.leaves(checkpointing.load_rgn_params(tmp_path, built.models, tiny_config()))


def test_run_that_failed_before_its_first_checkpoint_can_be_rerun_corrected(
    built, examples, tmp_path):
  strict = tiny_config(**{"data.min_class_similarity": 0.99})
  odd = [manifest_lib.Example(examples[0].image_path, "zzqx blorf", None, None)]
  with pytest.raises(ValueError):   # no class close enough: fails after the workdir check
    trainer.train(strict, tmp_path, built=build_models(strict), examples=odd, progress=False)
  assert (tmp_path / "config.json").exists() and not checkpointing.has_checkpoint(tmp_path)
  result = _train(built, examples, tmp_path, **{"train.max_steps": 1})
  assert [m["step"] for m in result.metrics] == [1]


def test_resuming_on_other_data_is_refused(built, examples, tmp_path):
  _train(built, examples[:1], tmp_path, **{"train.max_steps": 1})
  with pytest.raises(checkpointing.WorkdirError, match="other data.*1 examples saved, 2 now"):
    _train(built, examples, tmp_path)
  swapped = [manifest_lib.Example(examples[0].image_path, "a tiger", None, None)]
  with pytest.raises(checkpointing.WorkdirError, match="example 0 differs in prompt"):
    _train(built, swapped, tmp_path)


def test_half_written_metrics_line_does_not_stop_resumption(built, examples, tmp_path):
  _train(built, examples, tmp_path, **{"train.max_steps": 2})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "lo')            # the process died mid-write
  resumed = _train(built, examples, tmp_path)
  assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]


def test_rgn_checkpoint_needs_the_region_settings_it_was_trained_with(built, examples,
                                                                      tmp_path):
  models = built.models
  _train(built, examples, tmp_path, **{"train.max_steps": 1})
  with pytest.raises(checkpointing.WorkdirError, match=r"region.sizes: saved=\[1, 2, 3\]"):
    checkpointing.load_rgn_params(tmp_path, models, tiny_config(**{"region.sizes": (2, 3, 4)}))
  more_anchors = tiny_config(**{"region.num_anchors": 3})   # scored one by one: allowed
  assert jax.tree.leaves(checkpointing.load_rgn_params(tmp_path, models, more_anchors))
  # A folder that does not say which settings its RGN had is refused.
  (tmp_path / "config.json").unlink()
  with pytest.raises(checkpointing.WorkdirError, match="no config.json"):
    checkpointing.load_rgn_params(tmp_path, models, tiny_config())


def test_nan_loss_names_step_and_image(built, examples, tmp_path):
  poisoned = dict(built.frozen)
  poisoned["clip"] = jax.tree.map(lambda x: x * np.nan, built.frozen["clip"])
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 1.*(chelsea|noise)\.png"):
    trainer.train(tiny_config(), tmp_path, built=built._replace(frozen=poisoned),
                  examples=examples, progress=False)


def test_edit_outputs_at_original_resolution(built, examples, tmp_path):
  _train(built, examples, tmp_path / "wd")
  # The whole-canvas composite (window mode: tests/test_geometry.py).
  out = inference.run_edit(tiny_config(**{"region.window": "off"}), examples,
                           out_dir=tmp_path / "out", rgn_checkpoint=str(tmp_path / "wd"),
                           built=built, progress=False)
  assert len(out) == 2
  chelsea = np.asarray(Image.open(examples[0].image_path))   # uint8, as the result
  first = out[0]
  assert first.result.shape == chelsea.shape == (300, 451, 3)
  assert first.result.dtype == np.uint8
  k = tiny_config().region.num_anchors
  assert first.outputs.edit.images.shape == (k, 64, 64, 3)
  assert first.record["class"]["id"] == 291
  assert len(first.record["scores"]["S"]) == k
  assert first.record["best_candidate"] == int(np.argmax(first.record["scores"]["S"]))
  # Only the edited box region changes at the original resolution: wherever the
  # model-size mask is 0 in a whole 3x3 neighbourhood, the pixel is the input's.
  mask = first.outputs.edit.pixel_mask[first.record["best_candidate"]][..., 0]
  padded = np.pad(mask, 1)
  near = np.max([padded[i:i + 64, j:j + 64] for i in range(3) for j in range(3)], axis=0)
  top_c, left_c, h_c, w_c = first.record["canvas"]["image_tlhw_pixels_canvas"]
  assert (left_c, w_c) == (0, 64) and h_c == 43   # the photo's aspect on the canvas
  rows = (top_c + np.arange(300) * h_c // 300)[:, None]
  cols = (left_c + np.arange(451) * w_c // 451)[None, :]
  untouched = near[rows, cols] == 0
  np.testing.assert_array_equal(first.result[untouched], chelsea[untouched])
  assert (first.result != chelsea).any()
  # CLIP scores the pixels that are written: candidates are clipped to [0, 1].
  assert first.outputs.edit.images.min() >= 0 and first.outputs.edit.images.max() <= 1
  # The record's changed region bounds exactly the pixels that differ from the input.
  top, left, h, w = first.record["changed_region_tlhw_pixels_original"]
  inside = np.zeros(chelsea.shape[:2], bool)
  inside[top:top + h, left:left + w] = True
  changed = np.any(first.result != chelsea, axis=-1)
  assert changed[inside].any() and not changed[~inside].any()
  assert changed[top].any() and changed[top + h - 1].any()
  assert changed[:, left].any() and changed[:, left + w - 1].any()
  # grow_tokens is 0 in the tiny config: the masked boxes are the chosen boxes.
  assert first.record["masked_boxes_tlhw_tokens"] == first.record["boxes_tlhw_tokens"]
  for kind in ("edited", "sheet", "record"):
    assert pathlib.Path(first.files[kind]).exists()
  saved = np.asarray(Image.open(first.files["edited"]))
  np.testing.assert_array_equal(saved, first.result)   # the result is what is written
  record = json.loads(pathlib.Path(first.files["record"]).read_text())
  assert record["rgn_checkpoint"] == str(tmp_path / "wd")
  assert record["versions"]["jax"] == jax.__version__
  assert out[1].result.shape == (90, 200, 3)
  # Images of different original sizes share one compiled inference.
  method = settings.method(tiny_config())
  assert step_lib.make_infer(built.models, method)._cache_size() == 1
  # Same trained RGN, same seed: the edit is reproducible.
  again = inference.run_edit(tiny_config(**{"region.window": "off"}), examples[:1],
                             rgn_checkpoint=str(tmp_path / "wd"), built=built, progress=False)
  np.testing.assert_array_equal(again[0].result, first.result)


def test_refinement_mode_moves_the_rgn(built, examples):
  method = settings.method(tiny_config())
  params = step_lib.init_train_state(built.models, method, jax.random.PRNGKey(0)).params
  prepared = trainer.data_lib.prepare(
      built, examples[:1], trainer.data_lib.load_images(examples[:1]))
  refined = inference.refine(params, built, prepared.batch(np.asarray([0])), method,
                             steps=2, seed=0)
  diffs = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(refined))]
  assert max(diffs) > 0


def test_refining_from_a_checkpoint_compiles_the_step_once(examples, tmp_path):
  """Restored parameters come back as host arrays; refinement then reuses one compile."""
  fresh = build_models(tiny_config())   # its own jitted steps, so compiles can be counted
  _train(fresh, examples, tmp_path / "wd", **{"train.max_steps": 1})
  params = checkpointing.load_rgn_params(tmp_path / "wd", fresh.models, tiny_config())
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
  inference.run_edit(tiny_config(), examples, rgn_checkpoint=str(tmp_path / "wd"),
                     refine_steps=2, built=fresh, progress=False)
  # On a CPU training and refining share one jitted step (nothing donated): one
  # compile for the training mesh's placement, one for 2 images x 2 refine steps.
  step = step_lib.make_train_step(fresh.models, settings.method(tiny_config()), donate=False)
  assert jax.default_backend() == "cpu" and step._cache_size() == 2


def test_missing_weights_offline_name_the_files(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("MASKGIT_CACHE_DIR", str(tmp_path / "cache"))

  def no_network(*args, **kwargs):
    raise OSError("network is off in tests")
  monkeypatch.setattr("urllib.request.urlopen", no_network)
  from configs import maskgit_imagenet256
  from lr_jax.encoders import hf_weights
  with pytest.raises(hf_weights.WeightsError) as e:
    build_models(maskgit_imagenet256.get_config())
  text = str(e.value)
  for needed in ("facebook/dino-vitb16", "openai/clip-vit-base-patch16",
                 "tokenizer_imagenet256", "model.safetensors"):
    assert needed in text


def test_strategy_resolution():
  # Without a trained RGN or refinement the default is search, and the reason says so.
  strategy, reason = inference.choose_strategy(None, None, 0)
  assert strategy == "search" and "no rgn_checkpoint or refine_steps" in reason
  assert inference.resolve_strategy(None, "wd", 0) == "rgn"
  assert inference.resolve_strategy(None, "wd", 3) == "refine"
  assert inference.choose_strategy(None, None, 0, boxes=True)[0] == "box"
  with pytest.raises(inference.StrategyError,
                     match="--strategy rgn needs a trained RGN: pass --rgn_checkpoint DIR.*"
                           "or use --strategy search"):
    inference.resolve_strategy("rgn", None, 0)
  with pytest.raises(inference.StrategyError, match=r"strategy='rgn' needs.*rgn_checkpoint="):
    inference.choose_strategy("rgn", None, 0, python=True)
  assert inference.resolve_strategy("search", None, 0) == "search"
  for args, needle in [(("bogus", None, 0), "one of rgn, refine, search, random, dino_random, box"),
                       (("refine", None, 0), "needs --refine_steps N"),
                       (("search", None, 2), "--refine_steps N is for --strategy refine"),
                       (("dino_random", "wd", 0), "drop --rgn_checkpoint")]:
    with pytest.raises(inference.StrategyError, match=needle):
      inference.resolve_strategy(*args)
  with pytest.raises(inference.StrategyError, match="--box top,left,height,width is for"):
    inference.choose_strategy("search", None, 0, boxes=True)


def test_search_strategy_writes_the_usual_outputs(built, examples, tmp_path):
  out = inference.run_edit(tiny_config(), examples[:1], out_dir=tmp_path, built=built,
                           strategy="search", progress=False)[0]
  record = json.loads(pathlib.Path(out.files["record"]).read_text())
  k, m = tiny_config().region.num_anchors, len(tiny_config().region.sizes)
  assert record["strategy"] == "search" and len(record["scores"]["S"]) == k * m
  assert record["best_candidate"] == int(np.argmax(record["scores"]["S"]))
  assert pathlib.Path(out.files["sheet"]).stat().st_size > 1000


OLD_WORKDIRS = pathlib.Path(__file__).parent / "fixtures" / "old_workdirs"


@pytest.mark.parametrize("name", ["tiny", "amused_tiny"])
def test_committed_workdirs_of_the_old_config_layout_load_and_resume(name, tmp_path):
  """Workdirs written before the single editor section (`maskgit` + `edit`, `amused` +
  `amused_edit`; made by `lr_jax.train --config configs/<name>.py` on the sample at commit
  3f1d3ee) load as `--rgn_checkpoint` and resume under today's config files."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  saved = json.loads((OLD_WORKDIRS / name / "config.json").read_text())
  assert "editor" not in saved or set(saved["editor"]) == {"name"}   # the old layout
  fresh = build_models(config)
  params = checkpointing.load_rgn_params(OLD_WORKDIRS / name, fresh.models, config)
  assert jax.tree.leaves(params)
  workdir = tmp_path / "wd"
  examples = manifest_lib.read_manifest(samples.write_samples(tmp_path / "samples"))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(OLD_WORKDIRS / name, workdir)
  result = trainer.train(config, workdir, built=fresh, examples=examples, progress=False)
  assert result.metrics == [] or result.metrics[-1]["step"] == 4   # nothing left to train
  # A changed editor setting is still refused, under its new name.
  config.editor.grow_tokens = 3
  with pytest.raises(checkpointing.WorkdirError, match="editor.grow_tokens"):
    trainer.train(config, workdir, built=fresh, examples=examples, progress=False)
