"""The evaluation's metrics against independent references (numpy formulas, hand sums)."""
import numpy as np
import pytest
from skimage import metrics as sk_metrics

from lr_jax.evaluation import metrics as edit_metrics


def _box_mean(x, size=7):
  """Mean over size x size windows, reflecting at the borders (numpy only)."""
  pad = size // 2
  p = np.pad(x, ((pad, pad), (pad, pad)), mode="symmetric")
  c = np.cumsum(np.cumsum(np.pad(p, ((1, 0), (1, 0))), 0), 1)
  s = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
  return s / size ** 2


def _ssim_map(a, b):
  """Wang et al. (2004) SSIM with a 7x7 uniform window and sample covariances."""
  n = 49
  mu_a, mu_b = _box_mean(a), _box_mean(b)
  va = (_box_mean(a * a) - mu_a ** 2) * n / (n - 1)
  vb = (_box_mean(b * b) - mu_b ** 2) * n / (n - 1)
  cov = (_box_mean(a * b) - mu_a * mu_b) * n / (n - 1)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))


def _pair(seed=0, shape=(40, 56, 3)):
  rng = np.random.default_rng(seed)
  source = (rng.random(shape) * 255).astype(np.uint8)
  result = source.copy()
  result[10:25, 20:40] = (rng.random((15, 20, 3)) * 255).astype(np.uint8)
  result[0:3, 0:5] = 255 - result[0:3, 0:5]   # a change outside the box too
  return result, source


def test_background_metrics_on_the_kept_pixels_match_numpy_and_scikit_image():
  result, source = _pair()
  keep = ~edit_metrics.box_mask(result.shape, [(10, 20, 15, 20)])
  got = edit_metrics.background_metrics(result, source, keep)
  a, b = result / 255.0, source / 255.0
  mse = np.mean((a[keep] - b[keep]) ** 2)
  assert got["bg_mse"] == pytest.approx(mse, rel=1e-6)
  assert got["bg_psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)
  assert got["bg_psnr"] == pytest.approx(
      sk_metrics.peak_signal_noise_ratio(b[keep], a[keep], data_range=1.0), rel=1e-6)
  a0, b0 = a * keep[..., None], b * keep[..., None]   # the other pixels masked to 0
  ssim = np.mean([_ssim_map(a0[..., c], b0[..., c]) for c in range(3)], axis=0)[keep].mean()
  assert got["bg_ssim"] == pytest.approx(ssim, abs=1e-5)


def test_identical_background_is_capped_and_an_empty_one_is_none():
  result, source = _pair()
  keep = ~edit_metrics.box_mask(result.shape, [(0, 0, 25, 40)])   # every change inside
  got = edit_metrics.background_metrics(result, source, keep)
  assert got["bg_mse"] == 0 and got["bg_psnr"] == edit_metrics.PSNR_CAP_DB
  assert got["bg_ssim"] == pytest.approx(1.0)
  none = edit_metrics.background_metrics(result, source, np.zeros(result.shape[:2], bool))
  assert none == {"bg_mse": None, "bg_psnr": None, "bg_ssim": None}
  with pytest.raises(ValueError, match="same"):
    edit_metrics.background_metrics(result, source[:-1], keep)


def test_clip_scores_on_hand_made_embeddings():
  text, source_text = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
  source = np.array([0, 2.0, 0])                       # the source image shows the source text
  edit = np.array([1.0, 1.0, 0])                        # half-way to the prompt
  got = edit_metrics.clip_scores(edit, source, text, source_text, alpha=2, beta=1)
  r = 1 / np.sqrt(2)
  assert got["clip_t2i"] == pytest.approx(r)
  assert got["clip_i2i"] == pytest.approx(r)
  # image change (r, r - 1, 0) against text change (1, -1, 0)
  change = np.array([r, r - 1, 0])
  assert got["clip_directional"] == pytest.approx(
      (change[0] - change[1]) / (np.linalg.norm(change) * np.sqrt(2)))
  assert got["quality_S"] == pytest.approx(3 * r)
  assert edit_metrics.clip_scores(text, source, text, source_text)["clip_directional"] > 0.7


def test_changed_fraction_counts_pixels_not_channels():
  result, source = _pair()
  changed = np.any(result != source, axis=-1).sum()
  assert edit_metrics.changed_fraction(result, source) == pytest.approx(changed / (40 * 56))
  assert edit_metrics.changed_fraction(source, source / 255.0) == 0.0   # float source, uint8 result


def test_structure_distance_of_self_similarities():
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(5, 8))
  sim = edit_metrics.self_similarity(tokens)
  norms = np.linalg.norm(tokens, axis=1)
  assert sim[1, 3] == pytest.approx(tokens[1] @ tokens[3] / (norms[1] * norms[3]))
  assert np.allclose(np.diag(sim), 1.0)
  assert edit_metrics.structure_distance(sim, sim) == 0.0
  other = edit_metrics.self_similarity(tokens * rng.uniform(0.5, 2, (5, 1)))   # scale only
  assert edit_metrics.structure_distance(sim, other) == pytest.approx(0.0, abs=1e-12)
  flipped = edit_metrics.self_similarity(tokens * np.array([[1], [-1], [1], [1], [1]]))
  # rows/cols of token 1 change sign: 8 off-diagonal entries differ by 2*sim
  expected = (4 * (np.sum(sim[1] ** 2) - 1)) * 2 / 25
  assert edit_metrics.structure_distance(sim, flipped) == pytest.approx(expected)


def test_region_metrics_on_a_synthetic_mask_by_hand():
  mask = np.zeros((20, 30), bool)
  mask[5:15, 10:20] = True                                  # 100 pixels
  box = (10, 15, 10, 10)                                    # rows 10..19, cols 15..24
  got = edit_metrics.region_metrics(mask, box, {"a": (12.5, 16.0), "b": (2.0, 2.0)})
  overlap = 5 * 5
  assert got["mask_covered"] == pytest.approx(overlap / 100)
  assert got["box_on_mask"] == pytest.approx(overlap / 100)
  assert got["box_iou_mask_bbox"] == pytest.approx(overlap / (100 + 100 - overlap))
  assert got["a_in_mask"] is True and got["b_in_mask"] is False
  assert edit_metrics.mask_bbox(mask) == [5, 10, 10, 10]
  assert edit_metrics.mask_bbox(np.zeros((3, 3), bool)) is None
  assert edit_metrics.box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
  assert edit_metrics.box_iou((0, 0, 2, 2), (5, 5, 2, 2)) == 0.0
  # a box hanging over the image edge only counts its pixels on the image
  edge = edit_metrics.region_metrics(mask, (-5, -5, 10, 10), {})
  assert edge["box_on_mask"] == 0.0 and edge["mask_covered"] == 0.0
