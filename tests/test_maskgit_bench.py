"""The MaskGIT benchmark runs, and reports what it claims to (tiny config)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from maskgit import bench_lib, breakdown, configs


def test_bench_boxes_are_valid_and_varied():
  boxes = bench_lib.bench_boxes(28, 16, seed=3)[0]
  top, left, height, width = boxes.T
  assert boxes.shape == (28, 4)
  assert np.all(height >= 2) and np.all(width >= 2)
  assert np.all(top + height <= 16) and np.all(left + width <= 16)
  assert len({tuple(b) for b in boxes[:, 2:]}) > 5


def test_benchmark_rows_compare_batched_with_separate_and_bfloat16_with_float32():
  rows = bench_lib.run_benchmark("tiny", ks=[1, 3], dtypes=["float32", "bfloat16"], repeats=1)
  assert [(r["dtype"], r["k"]) for r in rows] == [
      ("float32", 1), ("float32", 3), ("bfloat16", 1), ("bfloat16", 3)]
  for row in rows:
    assert row["batched_ms_per_image"] > 0 and row["first_call_s"] > 0
    assert row["batched_ms_per_call"] == pytest.approx(row["batched_ms_per_image"] * row["k"])
    assert ("speedup_vs_separate" in row) == (row["k"] > 1)
  for row in rows[2:]:
    assert 0 <= row["identical_tokens"] <= 1 and np.isfinite(row["max_pixel_diff"])
  # Outside the boxes the tokens are the input's in both dtypes: most agree.
  assert rows[3]["identical_tokens"] > 0.5
  assert bench_lib.format_row(rows[-1]).split()[:2] == ["bfloat16", "3"]


def _transformer_pass_flops(config: configs.MaskGITConfig, batch: int) -> float:
  """Matmul FLOPs of one transformer pass, counted by hand."""
  t = config.transformer
  length, hidden, mlp = config.tokens_per_side**2 + 1, t.hidden_size, t.intermediate_size
  per_layer = 2 * length * (4 * hidden * hidden + 2 * hidden * mlp) + 4 * length**2 * hidden
  head = 2 * length * (hidden * hidden + hidden * t.vocab_size)
  return batch * (t.num_layers * per_layer + head)


def test_breakdown_parts_add_up_and_count_flops():
  config = configs.get_config("tiny")
  rows = breakdown.run_breakdown("tiny", num_boxes=3, dtype="float32", repeats=1)
  by_part = {row["part"].strip(): row for row in rows}
  loop = by_part["decoding loop (10 passes)"]
  one_pass = by_part["one transformer pass"]
  full = by_part["full edit call (K=3)"]
  summed = sum(by_part[p]["ms"] for p in ("encode (1 image)", "decoding loop (10 passes)",
                                          "pixel decoder", "rest"))
  assert summed == pytest.approx(full["ms"])
  assert all(row["ms"] > 0 for row in rows if row["part"] != "rest")
  # XLA's count for one pass is the hand count plus elementwise work (a few %).
  expected = _transformer_pass_flops(config, batch=3)
  assert expected <= one_pass["flops"] <= 1.25 * expected
  assert loop["flops"] == pytest.approx(10 * one_pass["flops"])
  assert by_part["pixel decoder"]["flops"] > 0 and by_part["encode (1 image)"]["flops"] > 0
  assert "full edit call (K=3)" in breakdown.format_rows(rows)


def test_bench_command_line_breakdown():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run(
      [sys.executable, "-m", "maskgit.bench", "--config", "tiny", "--ks", "2",
       "--dtype", "float32", "--repeats", "1", "--breakdown"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "== breakdown: float32, K=2" in run.stdout
  assert "full edit call (K=2)" in run.stdout and "pixel decoder" in run.stdout
  bad = subprocess.run([sys.executable, "-m", "maskgit.bench", "--ks", "x"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
  assert bad.returncode == 1 and "--ks must be comma-separated integers" in bad.stderr
