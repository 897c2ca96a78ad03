"""roi_align against an independent loop-based NumPy port of torchvision's kernel."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.method.roi_align import roi_align, roi_align_batched

jax.config.update("jax_enable_x64", False)


def _np_bilinear(feat, y, x):
  """torchvision bilinear_interpolate on one (H, W, C) map, scalar y, x."""
  height, width = feat.shape[:2]
  if not (-1.0 <= y <= height and -1.0 <= x <= width):
    return np.zeros(feat.shape[2], np.float64)
  y = max(y, 0.0)
  x = max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_low = y_high = height - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_low = x_high = width - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1.0 - ly, 1.0 - lx
  return (hy * hx * feat[y_low, x_low] + hy * lx * feat[y_low, x_high]
          + ly * hx * feat[y_high, x_low] + ly * lx * feat[y_high, x_high])


def np_roi_align(feat, boxes, out, sampling_ratio, aligned, scale=1.0):
  """Loops over boxes, bins and samples; boxes (top, left, height, width).

  Coordinates are computed in float32 like torchvision's float kernel (samples
  can land exactly on the y <= H boundary); the accumulation is float64.
  """
  f32 = np.float32
  feat = np.asarray(feat, np.float64)
  result = np.zeros((len(boxes), out, out, feat.shape[2]), np.float64)
  off = f32(0.5 if aligned else 0.0)
  scale = f32(scale)
  for n, (top, left, bh, bw) in enumerate(np.asarray(boxes, f32)):
    # torchvision takes (x1, y1, x2, y2).
    x1, y1, x2, y2 = left, top, left + bw, top + bh
    start_w, start_h = x1 * scale - off, y1 * scale - off
    end_w, end_h = x2 * scale - off, y2 * scale - off
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if not aligned:
      roi_w, roi_h = max(roi_w, f32(1)), max(roi_h, f32(1))
    bin_h, bin_w = roi_h / f32(out), roi_w / f32(out)
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out)
    count = max(grid_h * grid_w, 1)
    for ph in range(out):
      for pw in range(out):
        acc = np.zeros(feat.shape[2], np.float64)
        for iy in range(grid_h):
          y = start_h + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(grid_h)
          for ix in range(grid_w):
            x = start_w + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(grid_w)
            acc += _np_bilinear(feat, float(y), float(x))
        result[n, ph, pw] = acc / count
  return result


# (top, left, height, width) in cell units on a 16 x 12 map: interior, borders,
# partly and wholly outside, tiny, zero-size, fractional, full map. Boxes are
# chosen so that no sample lands exactly on the y = -1 / y = H cut-off, where
# the kernel is discontinuous and float rounding order decides the result.
BOXES = np.array([
    [3, 2, 5, 7],
    [0, 0, 16, 12],
    [0, 0, 1, 1],
    [15, 11, 1, 1],
    [-3, -2, 6, 5],
    [13, 9, 7, 6],
    [2.3, 4.7, 0.4, 0.2],
    [5.5, 5.5, 0.0, 0.0],
    [-4, -4, 2, 2],
    [1.25, 10.5, 9.75, 3.5],
    [7, 0, 3, 14.6],
    [-0.6, 11.2, 17.1, 1.3],
], np.float32)


@pytest.fixture(scope="module")
def feat():
  return np.random.default_rng(0).normal(size=(16, 12, 5)).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 3, 0])
@pytest.mark.parametrize("out", [7, 4])
def test_matches_numpy_reference(feat, aligned, sampling_ratio, out):
  got = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray(BOXES),
                             output_size=out, sampling_ratio=sampling_ratio,
                             aligned=aligned))
  want = np_roi_align(feat, BOXES, out, sampling_ratio, aligned)
  assert got.shape == (len(BOXES), out, out, feat.shape[2])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_spatial_scale(feat):
  boxes_px = BOXES[:4] * 8.0
  got = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray(boxes_px),
                             spatial_scale=0.125))
  want = np_roi_align(feat, boxes_px, 7, 2, True, scale=0.125)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_box_reads_its_own_region():
  """A box on a constant-valued patch region pools to that value ((row, col) order)."""
  feat = np.zeros((16, 16, 1), np.float32)
  feat[2:5, 9:14] = 1.0  # rows 2..4, cols 9..13
  got = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray([[2., 9., 3., 5.]])))
  # Inner samples lie strictly inside the region; edge bins mix with zeros.
  assert np.all(got[0, 1:-1, 1:-1, 0] > 0.99)
  transposed = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray([[9., 2., 5., 3.]])))
  assert np.all(transposed < 0.5)


def test_batched_matches_reference():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  boxes = rng.uniform(-2, 12, size=(2, 3, 4, 4)).astype(np.float32)
  boxes[..., 2:] = rng.uniform(0.5, 9, size=(2, 3, 4, 2))
  got = np.asarray(roi_align_batched(jnp.asarray(feats), jnp.asarray(boxes)))
  assert got.shape == (2, 3, 4, 7, 7, 3)
  for b in range(2):
    want = np_roi_align(feats[b], boxes[b].reshape(-1, 4), 7, 2, True)
    np.testing.assert_allclose(got[b].reshape(want.shape), want, atol=1e-5)


def test_vmap_over_anchors_matches_batched():
  rng = np.random.default_rng(4)
  feats = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  boxes = jnp.asarray(rng.uniform(0, 4, size=(2, 3, 2, 4)), jnp.float32)
  per_anchor = jax.vmap(jax.vmap(roi_align, in_axes=(None, 0)))(feats, boxes)
  np.testing.assert_allclose(per_anchor, roi_align_batched(feats, boxes),
                             atol=1e-6)


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  feat = rng.normal(size=(6, 5, 2))
  boxes = np.array([[0.7, 1.2, 3.1, 2.6], [-0.5, 2.0, 4.0, 4.0]], np.float32)
  cot = rng.normal(size=(2, 3, 3, 2))

  def loss_np(f):
    return float(np.sum(np_roi_align(f, boxes, 3, 2, True) * cot))

  def loss_jax(f):
    out = roi_align(f, jnp.asarray(boxes), output_size=3)
    return jnp.sum(out * jnp.asarray(cot, jnp.float32))

  grad = np.asarray(jax.grad(loss_jax)(jnp.asarray(feat, jnp.float32)))
  assert np.abs(grad).max() > 0.05
  eps = 1e-4
  numeric = np.zeros_like(feat)
  for idx in np.ndindex(feat.shape):
    plus, minus = feat.copy(), feat.copy()
    plus[idx] += eps
    minus[idx] -= eps
    numeric[idx] = (loss_np(plus) - loss_np(minus)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-4)


def test_bad_shapes_raise():
  with pytest.raises(ValueError):
    roi_align(jnp.zeros((4, 4)), jnp.zeros((1, 4)))
  with pytest.raises(ValueError):
    roi_align(jnp.zeros((4, 4, 1)), jnp.zeros((1, 3)))
  with pytest.raises(ValueError):
    roi_align_batched(jnp.zeros((2, 4, 4, 1)), jnp.zeros((3, 1, 4)))
