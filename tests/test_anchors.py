"""Anchors (row, col order) and clamped square box proposals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.method.anchors import box_corners, box_proposals, to_pixels, top_k_anchors


def test_single_maximum_is_row_col_not_xy():
  att = np.zeros((16, 16), np.float32)
  att[2, 11] = 5.0  # row 2, col 11: transposing would give (11, 2)
  anchors = np.asarray(top_k_anchors(jnp.asarray(att), 1))
  assert anchors.dtype == np.int32
  np.testing.assert_array_equal(anchors, [[2, 11]])


def test_top_k_distinct_and_ordered_against_numpy():
  rng = np.random.default_rng(0)
  att = rng.random((3, 16, 12)).astype(np.float32)
  k = 9
  got = np.asarray(top_k_anchors(jnp.asarray(att), k))
  assert got.shape == (3, k, 2)
  for b in range(3):
    order = np.argsort(-att[b].ravel(), kind="stable")[:k]
    want = np.stack(np.unravel_index(order, att[b].shape), axis=-1)
    np.testing.assert_array_equal(got[b], want)
    assert len({tuple(p) for p in got[b]}) == k
    # The scores at the returned positions are the k largest.
    np.testing.assert_array_equal(
        np.sort(att[b][got[b][:, 0], got[b][:, 1]]),
        np.sort(att[b].ravel())[-k:])


def test_top_k_jit_vmap_and_errors():
  att = jnp.asarray(np.random.default_rng(1).random((4, 8, 8)), jnp.float32)
  jitted = jax.jit(top_k_anchors, static_argnums=1)(att, 5)
  vmapped = jax.vmap(lambda a: top_k_anchors(a, 5))(att)
  np.testing.assert_array_equal(jitted, vmapped)
  with pytest.raises(ValueError):
    top_k_anchors(att, 65)
  with pytest.raises(ValueError):
    top_k_anchors(att, 0)
  with pytest.raises(ValueError):
    top_k_anchors(jnp.zeros((5,)), 1)


def _np_box(r, c, s, rows, cols):
  """Independent reference: explicit covered row/col index sets, then clip."""
  before = (s - 1) // 2
  rr = [i for i in range(r - before, r - before + s) if 0 <= i < rows]
  cc = [j for j in range(c - before, c - before + s) if 0 <= j < cols]
  return [rr[0], cc[0], len(rr), len(cc)]


def test_proposals_against_index_sets_and_borders():
  rows, cols = 16, 16
  sizes = (3, 4, 5, 7, 9, 11, 13, 15)
  anchors = np.array([[2, 11], [0, 0], [15, 15], [8, 7], [15, 0]], np.int32)
  got = np.asarray(box_proposals(jnp.asarray(anchors), sizes, 16))
  assert got.shape == (5, len(sizes), 4) and got.dtype == np.float32
  for k, (r, c) in enumerate(anchors):
    for m, s in enumerate(sizes):
      np.testing.assert_array_equal(got[k, m], _np_box(r, c, s, rows, cols))
  corners = np.asarray(box_corners(jnp.asarray(got)))
  assert corners[..., :2].min() >= 0
  assert corners[..., 2].max() <= rows and corners[..., 3].max() <= cols
  # Odd sizes are centred on the anchor patch when not clamped.
  centre = got[3, sizes.index(5)]
  np.testing.assert_array_equal(centre, [6, 5, 5, 5])
  # (row, col) asymmetry: anchor (2, 11), size 15 clamps rows at the top and
  # cols at the right, differently.
  np.testing.assert_array_equal(got[0, sizes.index(15)], [0, 4, 10, 12])


def test_proposals_rectangular_grid_and_batch():
  anchors = jnp.asarray([[[1, 9]], [[5, 0]]])  # (B=2, K=1, 2)
  got = np.asarray(box_proposals(anchors, (5,), (6, 10)))
  assert got.shape == (2, 1, 1, 4)
  np.testing.assert_array_equal(got[0, 0, 0], _np_box(1, 9, 5, 6, 10))
  np.testing.assert_array_equal(got[1, 0, 0], _np_box(5, 0, 5, 6, 10))
  with pytest.raises(ValueError):
    box_proposals(jnp.zeros((3, 3)), (3,), 16)
  with pytest.raises(ValueError):
    box_proposals(jnp.zeros((3, 2)), (0,), 16)


def test_to_pixels_and_corners():
  boxes = jnp.asarray([[2.0, 11.0, 3.0, 5.0]])
  np.testing.assert_allclose(to_pixels(boxes, 16, 256), [[32, 176, 48, 80]])
  np.testing.assert_allclose(to_pixels(boxes, (16, 8), (256, 64)),
                             [[32, 88, 48, 40]])
  np.testing.assert_allclose(box_corners(boxes), [[2, 11, 5, 16]])
