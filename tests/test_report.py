"""The evaluation report: bootstrap intervals, paired tables, files."""
import csv

import numpy as np
import pytest
from PIL import Image

from lr_jax.evaluation import report


def _row(index, strategy, s, t2i, seconds=1.0, compile_=False, regions=None):
  return {"key": f"{index}|img{index}.png|p|{strategy}", "index": index,
          "image": f"img{index}.png", "prompt": "p", "strategy": strategy,
          "seconds": seconds, "includes_compile": compile_,
          "metrics": {"quality_S": s, "clip_t2i": t2i, "structure_distance": 0.002,
                      "bg_psnr": None},
          "regions": regions}


def test_bootstrap_interval_is_close_to_the_normal_one_for_many_samples():
  x = np.random.default_rng(0).normal(3.0, 2.0, 400)
  lo, hi = report.bootstrap_interval(x)
  half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
  assert lo == pytest.approx(x.mean() - half, abs=0.05)
  assert hi == pytest.approx(x.mean() + half, abs=0.05)
  assert report.bootstrap_interval([2.5]) == (2.5, 2.5)


def test_paired_wins_count_ties_half_and_only_common_images():
  rows = [_row(0, "a", 1.0, 0.3), _row(0, "b", 0.5, 0.3),
          _row(1, "a", 0.2, 0.1), _row(1, "b", 0.4, 0.2),
          _row(2, "a", 0.7, 0.1), _row(2, "b", 0.7, 0.2),
          _row(3, "a", 9.0, 9.0)]                         # b has no result for image 3
  wins = report.paired_wins(rows, ["a", "b"], "quality_S")
  assert wins[("a", "b")] == (pytest.approx(100 * 1.5 / 3), 3)
  assert wins[("b", "a")] == (pytest.approx(100 * 1.5 / 3), 3)
  t2i = report.paired_wins(rows, ["a", "b"], "clip_t2i")
  assert t2i[("a", "b")][0] == pytest.approx(100 * 0.5 / 3)


def test_summary_skips_missing_values_and_compiles_and_scales_structure():
  rows = [_row(0, "a", 1.0, 0.3, seconds=50.0, compile_=True), _row(1, "a", 3.0, 0.5, 2.0),
          _row(0, "b", 2.0, 0.3, regions={"mask_covered": 0.5, "top_anchor_in_mask": True}),
          _row(1, "b", 2.0, 0.3, regions={"mask_covered": 1.0, "top_anchor_in_mask": False})]
  table = {(t["strategy"], t["metric"]): t for t in report.summarize(rows, ["a", "b"])}
  assert table[("a", "quality_S")]["mean"] == 2.0 and table[("a", "quality_S")]["n"] == 2
  assert table[("a", "seconds")]["n"] == 1 and table[("a", "seconds")]["mean"] == 2.0
  assert table[("a", "structure_distance")]["mean"] == pytest.approx(2.0)
  assert ("a", "bg_psnr") not in table and ("a", "mask_covered") not in table
  assert table[("b", "mask_covered")]["mean"] == 0.75
  assert table[("b", "top_anchor_in_mask")]["mean"] == 0.5


def test_report_files(tmp_path):
  for i in range(2):
    Image.fromarray(np.full((30, 60, 3), 100 * i, np.uint8)).save(tmp_path / f"img{i}.png")
  rows = []
  for i in range(2):
    for strategy, s in (("search", 1.0 + i), ("random", 0.5)):
      row = _row(i, strategy, s, 0.2)
      row["image"] = str(tmp_path / f"img{i}.png")
      row["files"] = {"edited": row["image"]}
      row["chosen_box_tlhw_pixels"] = [2, 3, 10, 20]
      row["editor_box_tlhw_pixels"] = [1, 2, 12, 22]
      rows.append(row)
  files = report.write_report(tmp_path, rows, ["search", "random"])
  with open(files["csv"]) as f:
    table = list(csv.DictReader(f))
  s_search = next(t for t in table if t["strategy"] == "search" and t["metric"] == "quality_S")
  assert float(s_search["mean"]) == 1.5 and int(s_search["n"]) == 2
  text = files["markdown"].read_text()
  assert "| search | - | 100.0 (n=2) |" in text          # search beats random on S, both images
  assert "| random | 0.0 (n=2) | - |" in text
  with Image.open(files["chart"]) as chart:
    assert chart.width > 300
  sheets = sorted((tmp_path / "sheets").iterdir())
  assert [p.name for p in sheets] == ["000_img0.png", "001_img1.png"]
  with Image.open(sheets[0]) as sheet:
    assert sheet.width > 2 * sheet.height               # three panels of a 2:1 photo
