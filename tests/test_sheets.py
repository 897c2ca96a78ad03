"""Tests for lr_jax.files.sheets: the edit sheet and the loss curve PNGs."""
import json
import time

import numpy as np
import pytest
from PIL import Image

from lr_jax.files import metrics_file as metrics_file_lib
from lr_jax.files import sheets


def _inputs(k=4, m=3, height=128, width=192, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width]
  image = np.stack([yy / height, xx / width, np.full_like(yy, 0.5, float)], -1)
  anchors = rng.integers(2, 14, (k, 2))
  half = np.arange(1, m + 1)
  proposals = np.zeros((k, m, 4))
  proposals[..., 0] = anchors[:, None, 0] - half
  proposals[..., 1] = anchors[:, None, 1] - half
  proposals[..., 2] = proposals[..., 3] = 2 * half + 1
  return dict(
      image=image.astype(np.float32),
      attention=rng.random((16, 16)),
      anchors=anchors,
      proposals=proposals,
      chosen=rng.integers(0, m, k),
      candidates=rng.random((k, 64, 64, 3)).astype(np.float32),
      scores=rng.random(k),
      components={"s_t2i": rng.random(k), "s_i2i": rng.random(k)},
      best=1,
      result=image.astype(np.float32),
      title='"a lion"',
  )


def _read_png(path):
  with Image.open(path) as img:
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def test_edit_sheet_writes_a_sane_png(tmp_path):
  start = time.perf_counter()
  out = sheets.edit_sheet(tmp_path / "deep" / "sheet.png", **_inputs())
  seconds = time.perf_counter() - start
  pixels = _read_png(out)
  height, width = pixels.shape[:2]
  assert 300 <= width <= 3000 and 300 <= height <= 3000
  assert pixels.std() > 20  # not blank
  # The best candidate's title is highlighted (#ffe066 behind its text).
  highlight = np.all(np.abs(pixels.astype(int) - [255, 224, 102]) <= 2, -1)
  assert highlight.sum() > 100
  assert seconds < 10  # generous bound for a loaded 2-core machine


def test_edit_sheet_names_the_written_size_apart_from_the_canvas(tmp_path, monkeypatch):
  titles = []
  real = sheets._plain  # pylint: disable=protected-access
  monkeypatch.setattr(sheets, "_plain", lambda ax, title: (titles.append(title),
                                                           real(ax, title))[1])
  sheets.edit_sheet(tmp_path / "s.png", **_inputs(), photo_hw=(1500, 4000))
  assert titles[0] == "input 4000x1500\neditor canvas 192x128"
  assert titles[3] == "result: candidate 1\nwritten 4000x1500 (shown 192x128)"
  assert titles[4].startswith("candidate 0: score")


def test_edit_sheet_many_candidates_and_no_components(tmp_path):
  inputs = _inputs(k=9, m=4, height=256, width=128, seed=1)
  inputs["components"] = None
  inputs["title"] = ""
  out = sheets.edit_sheet(tmp_path / "s9.png", **inputs)
  pixels = _read_png(out)
  # Five columns for nine candidates: wider than tall.
  assert pixels.shape[1] > pixels.shape[0] * 0.8
  assert pixels.std() > 20


@pytest.mark.parametrize("key,value,match", [
    ("anchors", np.zeros((4, 3)), "anchors"),
    ("proposals", np.zeros((3, 3, 4)), "proposals"),
    ("chosen", np.array([0, 1, 2, 3]), "chosen must index"),
    ("chosen", np.zeros(4), "chosen must be integers"),
    ("candidates", np.zeros((4, 8, 8)), "candidates"),
    ("scores", np.zeros(5), "scores"),
    ("components", {"s_t2i": np.zeros(2)}, "components"),
    ("best", 4, "best"),
    ("attention", np.zeros(16), "attention"),
    ("image", np.zeros((8, 8)), "image"),
])
def test_edit_sheet_rejects_bad_shapes(tmp_path, key, value, match):
  inputs = _inputs()
  inputs[key] = value
  with pytest.raises(ValueError, match=match):
    sheets.edit_sheet(tmp_path / "bad.png", **inputs)
  assert not (tmp_path / "bad.png").exists()


def test_loss_curve(tmp_path):
  records = [{"step": i, "loss": 1.0 / (i + 1), "clip_loss": 0.5 - 0.001 * i,
              "note": "text is skipped", "lr": 1e-3} for i in range(100)]
  records[5]["loss"] = float("nan")
  metrics_file = tmp_path / "metrics.jsonl"
  metrics_file.write_text(
      "\n".join(json.dumps(r) for r in records) + "\n")
  out = sheets.loss_curve(tmp_path / "plots" / "loss.png",
                          metrics_file_lib.read_metrics(metrics_file), title="run")
  pixels = _read_png(out)
  assert 200 <= pixels.shape[0] <= 3000 and 200 <= pixels.shape[1] <= 4000
  assert pixels.std() > 10
  # Lines use matplotlib's first default colour (#1f77b4).
  line = np.all(np.abs(pixels.astype(int) - [31, 119, 180]) <= 3, -1)
  assert line.sum() > 200


def test_loss_curve_errors(tmp_path):
  with pytest.raises(ValueError, match="empty"):
    sheets.loss_curve(tmp_path / "l.png", [])
  with pytest.raises(ValueError, match="'step'"):
    sheets.loss_curve(tmp_path / "l.png", [{"loss": 1.0}])
  with pytest.raises(ValueError, match="no numeric terms"):
    sheets.loss_curve(tmp_path / "l.png", [{"step": 0, "tag": "a"}])
