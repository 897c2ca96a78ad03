"""`lr_jax.evaluate` on tiny models: every pair measured on the written photo, resumable,
keyed by what its result depends on, one run per folder."""
import json
import logging
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lr_jax.evaluation import metrics as edit_metrics
from lr_jax.evaluation import results as results_lib
from lr_jax.evaluation import runner as evaluation
from lr_jax import inference
from lr_jax.files import manifest
from lr_jax.models import build_models
from tests import cli_helpers
from tests.tiny_setup import tiny_config


@pytest.fixture(scope="module")
def built():
  return build_models(tiny_config())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("eval_data")
  rows, cols = np.mgrid[0:72, 0:120]
  photo = np.stack([rows * 3, cols * 2, (rows + cols) % 256], -1).astype(np.uint8)
  Image.fromarray(photo).save(folder / "wide.png")
  mask = np.zeros((72, 120), np.uint8)
  mask[20:50, 30:80] = 255
  Image.fromarray(mask).save(folder / "wide_mask.png")
  (folder / "m.json").write_text(json.dumps(
      [{"image": "wide.png", "prompt": "a lion", "mask": "wide_mask.png"}]))
  return folder


@pytest.fixture(scope="module")
def evaluated(built, data, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval_out")
  examples = manifest.read_manifest(data / "m.json")
  rows = evaluation.evaluate(tiny_config(), examples, ["random", "dino_random"], out,
                             built=built, progress=False)
  return out, examples, rows


def test_every_pair_is_measured_on_the_written_photo(evaluated, data):
  out, _, rows = evaluated
  assert [r["strategy"] for r in rows] == ["random", "dino_random"]
  source = np.asarray(Image.open(data / "wide.png"))
  mask = np.asarray(Image.open(data / "wide_mask.png")) >= 128
  for row in rows:
    record = json.loads(open(row["files"]["record"]).read())
    best = record["best_candidate"]
    assert record["strategy"] == row["strategy"]
    assert row["chosen_box_tlhw_pixels"] == record["boxes_tlhw_pixels_original"][best]
    edited = np.asarray(Image.open(row["files"]["edited"]))
    changed = np.any(edited != source, -1)
    m = row["metrics"]
    assert m["edited_area_fraction"] == pytest.approx(changed.mean())
    top, left, h, w = row["editor_box_tlhw_pixels"]
    outside = np.ones(changed.shape, bool)
    outside[max(top, 0):top + h, max(left, 0):left + w] = False
    diff = (edited.astype(np.float64) - source) / 255
    assert m["bg_mse"] == pytest.approx(np.mean(diff[outside] ** 2), rel=1e-5, abs=1e-12)
    assert m["bg_mse_outside_object"] == pytest.approx(np.mean(diff[~mask] ** 2), rel=1e-5)
    assert m["quality_S"] == pytest.approx(2 * m["clip_t2i"] + m["clip_i2i"])
    assert m["structure_distance"] >= 0 and -1 <= m["clip_directional"] <= 1
    box = row["chosen_box_tlhw_pixels"]
    inside = edit_metrics.box_mask(mask.shape, [box])
    assert row["regions"]["mask_covered"] == pytest.approx((inside & mask).sum() / mask.sum())
    assert isinstance(row["regions"]["top_anchor_in_mask"], bool)
  lines = (out / evaluation.RESULTS_FILE).read_text().splitlines()
  assert [json.loads(line)["key"] for line in lines] == [r["key"] for r in rows]


def test_an_unchanged_photo_measures_as_unchanged(built, data):
  source = np.asarray(Image.open(data / "wide.png"))
  same = evaluation.dino_self_similarity(built, source)
  assert edit_metrics.structure_distance(same, evaluation.dino_self_similarity(
      built, source.copy())) == 0.0
  a, b = evaluation.clip_embedding(built, source), evaluation.clip_embedding(built, source)
  assert edit_metrics.cosine(a, b) == pytest.approx(1.0)


def test_a_rerun_skips_finished_pairs_and_runs_new_strategies_only(evaluated, built,
                                                                    monkeypatch, capsys):
  out, examples, rows = evaluated
  calls = []
  real = inference.edit_examples
  def counting(*args, **kwargs):
    calls.append(kwargs["strategy"])
    return real(*args, **kwargs)
  monkeypatch.setattr(inference, "edit_examples", counting)
  again = evaluation.evaluate(tiny_config(), examples, ["random", "dino_random"], out,
                              built=built, progress=False)
  assert calls == [] and again == rows
  said = capsys.readouterr().out   # a rerun says what it skipped
  assert f"{len(rows)} already in" in said and "skipped, nothing to edit" in said
  (out / evaluation.RESULTS_FILE).write_text(   # as if killed after the first pair
      (out / evaluation.RESULTS_FILE).read_text().splitlines(keepends=True)[0])
  more = evaluation.evaluate(tiny_config(), examples, ["dino_random", "random"], out,
                             built=built, progress=False)
  assert calls == ["dino_random"]
  assert f"{len(rows) - 1} already in" in capsys.readouterr().out
  assert [r["strategy"] for r in more] == ["random", "dino_random"]   # file order
  assert more[0] == rows[0] and more[1]["metrics"] == rows[1]["metrics"]   # seeded: the same


def test_other_settings_are_refused_before_any_model_loads(evaluated, monkeypatch):
  out, examples, _ = evaluated
  monkeypatch.setattr(evaluation, "build_models", lambda c: pytest.fail("built models"))
  with pytest.raises(evaluation.EvaluationError, match="seed: 0 -> 3"):
    evaluation.evaluate(tiny_config(), examples, ["search"], out, seed=3)
  with pytest.raises(evaluation.EvaluationError, match="score.alpha"):
    evaluation.evaluate(tiny_config(**{"score.alpha": 1.0}), examples, ["search"], out)


def _counting(monkeypatch) -> list:
  calls = []
  real = inference.edit_examples
  def counting(*args, **kwargs):
    calls.append(kwargs["strategy"])
    return real(*args, **kwargs)
  monkeypatch.setattr(inference, "edit_examples", counting)
  return calls


def test_a_changed_input_is_redone_and_said_so(evaluated, built, data, tmp_path, monkeypatch,
                                               caplog):
  out, _, rows = evaluated
  folder = shutil.copytree(out, tmp_path / "eval")
  moved = tmp_path / "moved"
  moved.mkdir()
  for name in ("wide.png", "wide_mask.png", "m.json"):
    shutil.copy(data / name, moved / name)
  examples = manifest.read_manifest(moved / "m.json")
  calls = _counting(monkeypatch)
  run = lambda strategies: evaluation.evaluate(tiny_config(), examples, strategies, folder,
                                               built=built, progress=False)
  same = run(["random", "dino_random"])   # moved, same content: nothing to redo
  assert calls == [] and [r["metrics"] for r in same] == [r["metrics"] for r in rows]
  assert same[0]["image"] == str(moved / "wide.png")
  mask = np.zeros((72, 120), np.uint8)
  mask[0:30, 0:40] = 255
  Image.fromarray(mask).save(moved / "wide_mask.png")
  with caplog.at_level(logging.WARNING):
    [again] = run(["random"])
  assert calls == ["random"]
  assert "wide.png (row 0), strategy random is redone: the object mask changed" in caplog.text
  assert again["regions"] != rows[0]["regions"]
  assert again["metrics"]["clip_t2i"] == rows[0]["metrics"]["clip_t2i"]   # the same edit
  keys = [r["key"] for r in evaluation.read_results(folder)]
  assert rows[0]["key"] not in keys and again["key"] in keys   # the stale line is gone ...
  assert rows[1]["key"] in keys                 # ... a strategy not run now is kept as it was
  photo = np.asarray(Image.open(moved / "wide.png")).copy()
  photo[0, 0] ^= 255
  Image.fromarray(photo).save(moved / "wide.png")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    run(["random"])
  assert calls == ["random", "random"] and "the image's content changed" in caplog.text
  # The summary is of the lines that match the manifest: the row's current results only.
  current = run(["random", "dino_random"])
  assert calls[-1] == "dino_random" and len(current) == 2
  assert {r["key"] for r in current} <= set(r["key"] for r in evaluation.read_results(folder))
  assert not {r["key"] for r in current} & {r["key"] for r in rows}


@pytest.mark.parametrize("edit,needle", [
    (lambda r: [1, 2], "a JSON list, not an object"),
    (lambda r: {"key": r["key"]}, "no 'index'"),
    (lambda r: {**r, "index": "0"}, "'index' must be an integer"),
    (lambda r: {**r, "index": True}, "'index' must be an integer"),
    (lambda r: {**r, "metrics": {**r["metrics"], "clip_t2i": "high"}}, "must be a number"),
    (lambda r: {**r, "chosen_box_tlhw_pixels": [1, 2]}, "must be 4 numbers"),
    (lambda r: {**r, "files": {}}, "no 'edited' path"),
    (lambda r: "not json", "is not JSON"),
])
def test_a_results_line_that_is_not_a_result_is_named(evaluated, tmp_path, edit, needle):
  _, _, rows = evaluated
  bad = edit(dict(rows[0]))
  text = bad if isinstance(bad, str) else json.dumps(bad)
  (tmp_path / evaluation.RESULTS_FILE).write_text(json.dumps(rows[0]) + "\n" + text + "\n")
  with pytest.raises(results_lib.ResultsError,
                     match=rf"results.jsonl: line 2 .*{re.escape(needle)}"):
    evaluation.read_results(tmp_path)


def test_a_folder_held_by_another_run_is_refused_before_any_model_loads(evaluated, monkeypatch):
  out, examples, _ = evaluated
  monkeypatch.setattr(evaluation, "build_models", lambda c: pytest.fail("built models"))
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  lock = out / evaluation.LOCK_FILE
  try:
    lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                "started": "earlier"}))
    with pytest.raises(evaluation.EvaluationError,
                       match=rf"being evaluated by another run \(pid {holder.pid}"):
      evaluation.evaluate(tiny_config(), examples, ["random", "search"], out)
    assert lock.exists()   # still the holder's
  finally:
    holder.kill()
    holder.wait()
    lock.unlink(missing_ok=True)


def test_a_settings_file_of_another_shape_is_one_error(evaluated, tmp_path):
  out, examples, _ = evaluated
  folder = shutil.copytree(out, tmp_path / "eval")
  (folder / evaluation.SETTINGS_FILE).write_text("[1, 2]")
  with pytest.raises(Exception, match="should hold a JSON object, not list"):
    evaluation.evaluate(tiny_config(), examples, ["random"], folder)


def test_strategy_flags_are_checked():
  check = evaluation.check_strategies
  assert check(["search", " random", "search"], None, 0) == ("search", "random")
  for strategies, ckpt, steps, needle in (
      (["rgn"], None, 0, "needs --rgn_checkpoint"), (["refine"], None, 0, "--refine_steps N"),
      (["search"], None, 3, "only used by strategy refine"), (["bogus"], None, 0, "unknown"),
      (["search"], "runs/x", 0, "only used by strategies rgn"), ([], None, 0, "no strategy")):
    with pytest.raises(evaluation.EvaluationError, match=needle):
      check(strategies, ckpt, steps)


def test_cli_errors_before_any_work(cli_env, data, tmp_path):
  proc = cli_helpers.run(cli_env, "lr_jax.evaluate", "--config", "configs/tiny.py",
                         "--manifest", str(data / "m.json"), "--strategies", "rgn,search",
                         "--out", str(tmp_path / "e"))
  cli_helpers.assert_clean_error(proc, "needs --rgn_checkpoint")
  assert not (tmp_path / "e").exists()
  bad_mask = tmp_path / "bad.json"
  bad_mask.write_text(json.dumps([{"image": str(data / "wide.png"), "prompt": "a lion",
                                   "mask": str(data / "m.json")}]))
  proc = cli_helpers.run(cli_env, "lr_jax.evaluate", "--config", "configs/tiny.py",
                         "--manifest", str(bad_mask), "--out", str(tmp_path / "e"))
  cli_helpers.assert_clean_error(proc, "cannot be read as a mask image")
  assert not (tmp_path / "e").exists()


def test_clip_embedding_of_any_size_is_clips_own_preprocessing(built):
  """The host-side canvas (PIL bicubic, shorter side, centre crop) gives the embedding of
  `clip_preprocess` run on the full photo in JAX."""
  import jax.numpy as jnp
  from lr_jax.method import step as step_lib
  rows, cols = np.mgrid[0:90, 0:150]
  photo = np.stack([np.sin(rows / 9.0), np.cos(cols / 13.0), (rows + cols) / 240.0], -1)
  photo = (np.clip(photo * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8)
  ours = evaluation.clip_embedding(built, photo)
  reference = np.asarray(step_lib.clip_images(built.models, built.frozen,
                                              jnp.asarray(photo / 255.0, jnp.float32)[None])[0][0])
  assert edit_metrics.cosine(ours, reference) > 0.9999
  np.testing.assert_allclose(ours, reference, atol=2e-3 * np.abs(reference).max())
