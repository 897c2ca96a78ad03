"""Tests for lr_jax.method.losses and lr_jax.method.scoring against numpy / PIL references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.method import losses
from lr_jax.method import scoring

def _np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_cos(a, b):
  return np.sum(_np_unit(a) * _np_unit(b), axis=-1)


def _np_structure(edit, src):
  def sim(t):
    u = _np_unit(t[..., 1:, :].astype(np.float64))
    return np.einsum("...nd,...md->...nm", u, u)
  return np.mean((sim(edit) - sim(src)) ** 2, axis=(-2, -1))


# ---------------------------------------------------------------- losses


def test_guidance_loss_known_values_and_numpy():
  a = jnp.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
  b = jnp.array([[5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
  np.testing.assert_allclose(losses.guidance_loss(a, b), [0.0, 1.0, 2.0], atol=1e-6)
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(4, 3, 16)), rng.normal(size=(3, 16))
  out = losses.guidance_loss(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  assert out.shape == (4, 3)
  np.testing.assert_allclose(out, 1 - _np_cos(x, t), atol=1e-5)


def test_directional_loss_numpy():
  rng = np.random.default_rng(1)
  e, s = rng.normal(size=(5, 2, 8)), rng.normal(size=(2, 8))
  t, ts = rng.normal(size=(2, 8)), rng.normal(size=(2, 8))
  expected = 1 - _np_cos(_np_unit(e) - _np_unit(s), _np_unit(t) - _np_unit(ts))
  out = losses.directional_loss(*(jnp.asarray(v, jnp.float32) for v in (e, s, t, ts)))
  assert out.shape == (5, 2)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # A move of the image along the text direction gives 0.
  move = _np_unit(t) - _np_unit(ts)
  aligned = losses.directional_loss(
      jnp.asarray(_np_unit(s) + 0.3 * move, jnp.float32), jnp.asarray(s, jnp.float32),
      jnp.asarray(t, jnp.float32), jnp.asarray(ts, jnp.float32))
  # Not exactly 0: E(X_o) is renormalized; compare with numpy instead.
  ref = 1 - _np_cos(_np_unit(_np_unit(s) + 0.3 * move) - _np_unit(s), move)
  np.testing.assert_allclose(aligned, ref, atol=1e-5)


def test_directional_loss_finite_gradient_when_edit_equals_source():
  s = jnp.array([[0.3, -0.2, 0.9]])
  t, ts = jnp.array([[1.0, 0.0, 0.0]]), jnp.array([[0.0, 1.0, 0.0]])
  grad = jax.grad(lambda e: losses.directional_loss(e, s, t, ts).sum())(s)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_normalization_is_finite_at_zero_in_low_precision(dtype):
  zero = jnp.zeros((2, 4), dtype)
  assert np.all(np.isfinite(np.asarray(losses.l2_normalize(zero), np.float32)))
  sim = losses.cosine_similarity(zero, jnp.ones((2, 4), dtype))
  np.testing.assert_array_equal(np.asarray(sim, np.float32), [0.0, 0.0])
  if dtype != jnp.float16:  # the gradient at 0 is ~1/eps = 1e8: beyond float16's range
    grad = jax.grad(lambda x: losses.cosine_similarity(x, jnp.ones((2, 4), dtype))
                    .astype(jnp.float32).sum())(zero)
    assert grad.dtype == dtype and np.all(np.isfinite(np.asarray(grad, np.float32)))
  x = jnp.asarray([[3.0, 4.0]], dtype)
  np.testing.assert_allclose(np.asarray(losses.l2_normalize(x), np.float32), [[0.6, 0.8]],
                             rtol=1e-2)


def test_structure_loss_numpy_zero_and_scale_invariance():
  rng = np.random.default_rng(2)
  edit = rng.normal(size=(3, 1 + 9, 12)).astype(np.float32)
  src = rng.normal(size=(3, 1 + 9, 12)).astype(np.float32)
  out = losses.structure_loss(jnp.asarray(edit), jnp.asarray(src))
  assert out.shape == (3,)
  np.testing.assert_allclose(out, _np_structure(edit, src), rtol=1e-4, atol=1e-6)
  assert float(out.min()) > 0
  np.testing.assert_allclose(losses.structure_loss(jnp.asarray(src), jnp.asarray(src)),
                             0.0, atol=1e-10)
  scales = rng.uniform(0.1, 10.0, size=(3, 10, 1)).astype(np.float32)
  np.testing.assert_allclose(
      losses.structure_loss(jnp.asarray(edit * scales), jnp.asarray(src)), out,
      rtol=1e-4)
  # [CLS] excluded by default: changing it changes nothing; included it does.
  edit2 = edit.copy()
  edit2[:, 0] = rng.normal(size=(3, 12))
  np.testing.assert_allclose(losses.structure_loss(jnp.asarray(edit2), jnp.asarray(src)),
                             out, rtol=1e-5)
  assert not np.allclose(
      losses.structure_loss(jnp.asarray(edit2), jnp.asarray(src), include_cls=True),
      losses.structure_loss(jnp.asarray(edit), jnp.asarray(src), include_cls=True))
  with pytest.raises(ValueError):
    losses.structure_loss(jnp.asarray(edit), jnp.asarray(src[:, :5]))


def test_total_loss_weighted_sum_and_missing_inputs():
  rng = np.random.default_rng(3)
  e = rng.normal(size=(4, 2, 8)).astype(np.float32)
  s, t, ts = (rng.normal(size=(2, 8)).astype(np.float32) for _ in range(3))
  et = rng.normal(size=(2, 5, 6)).astype(np.float32)
  st = rng.normal(size=(2, 5, 6)).astype(np.float32)
  inputs = losses.LossInputs(*(jnp.asarray(v) for v in (e, t, s, ts, et, st)))
  total, terms = losses.total_loss(inputs, {"clip": 1.0, "dir": 0.5, "structure": 2.0})
  clip = 1 - _np_cos(e, t)                                           # (4, 2) per edit
  direc = 1 - _np_cos(_np_unit(e) - _np_unit(s), _np_unit(t) - _np_unit(ts))
  struct = _np_structure(et, st)                                     # (2,) broadcasts
  np.testing.assert_allclose(terms["clip"], clip, rtol=1e-5)
  np.testing.assert_allclose(terms["dir"], direc, rtol=1e-5)
  np.testing.assert_allclose(terms["structure"], struct, rtol=1e-4)
  np.testing.assert_allclose(total, clip + 0.5 * direc + 2.0 * struct, rtol=1e-5)
  only_clip, terms = losses.total_loss(losses.LossInputs(jnp.asarray(e), jnp.asarray(t)),
                                       {"clip": 1.0, "dir": 0.0, "structure": 0.0})
  np.testing.assert_allclose(only_clip, clip, rtol=1e-5)
  assert not np.any(terms["dir"]) and not np.any(terms["structure"])
  with pytest.raises(ValueError, match="directional"):
    losses.total_loss(losses.LossInputs(jnp.asarray(e), jnp.asarray(t)), {"dir": 1.0})
  with pytest.raises(ValueError, match="unknown loss terms"):
    losses.total_loss(inputs, {"clip": 1.0, "lpips": 1.0})


def test_views_average_guidance_and_direction_but_not_structure():
  rng = np.random.default_rng(4)
  views = rng.normal(size=(3, 2, 8)).astype(np.float32)            # 3 views of 2 edits
  e, s, t, ts = (rng.normal(size=(2, 8)).astype(np.float32) for _ in range(4))
  et, st = (rng.normal(size=(2, 5, 6)).astype(np.float32) for _ in range(2))
  inputs = losses.LossInputs(*(jnp.asarray(v) for v in (e, t, s, ts, et, st, views)))
  _, terms = losses.total_loss(inputs, {"clip": 1.0, "dir": 1.0, "structure": 1.0})
  np.testing.assert_allclose(terms["clip"], np.mean(1 - _np_cos(views, t), 0), rtol=1e-5)
  np.testing.assert_allclose(
      terms["dir"], np.mean(1 - _np_cos(_np_unit(views) - _np_unit(s),
                                        _np_unit(t) - _np_unit(ts)), 0), rtol=1e-5)
  np.testing.assert_allclose(terms["structure"], _np_structure(et, st), rtol=1e-4)


# ---------------------------------------------------------------- scoring


def test_quality_score_matches_numpy():
  rng = np.random.default_rng(9)
  edits = rng.normal(size=(6, 10))
  src, text = rng.normal(size=10), rng.normal(size=10)
  q = scoring.quality_score(*(jnp.asarray(v, jnp.float32) for v in (edits, src, text)))
  t2i, i2i = _np_cos(edits, text), _np_cos(edits, src)
  np.testing.assert_allclose(q.t2i, t2i, atol=1e-5)
  np.testing.assert_allclose(q.i2i, i2i, atol=1e-5)
  np.testing.assert_allclose(q.score, 2 * t2i + i2i, atol=1e-5)
  q2 = scoring.quality_score(jnp.asarray(edits, jnp.float32), jnp.asarray(src, jnp.float32),
                             jnp.asarray(text, jnp.float32), alpha=0.5, beta=3.0)
  np.testing.assert_allclose(q2.score, 0.5 * t2i + 3 * i2i, atol=1e-5)
  with pytest.raises(ValueError):
    scoring.quality_score(jnp.zeros((3, 4)), jnp.zeros(5), jnp.zeros(4))


def test_pick_best_and_top3_variant_on_hand_made_vectors():
  text = np.array([1.0, 0.0, 0.0])
  src = np.array([0.0, 1.0, 0.0])
  angles_t = np.array([0.1, 0.2, 0.3, 1.2, 0.6])  # angle from text in the text-src plane
  edits = np.stack([np.cos(angles_t), np.sin(angles_t), np.zeros(5)], axis=-1)
  edits[3] = [0.5, 0.85, 0.1]  # close to the source: high S_i2i, low S_t2i
  q = scoring.quality_score(*(jnp.asarray(v, jnp.float32) for v in (edits, src, text)))
  t2i, i2i = _np_cos(edits, text), _np_cos(edits, src)
  score = 2 * t2i + i2i
  assert int(scoring.pick_best(q)) == int(np.argmax(score))
  assert int(scoring.pick_best(q.score)) == int(np.argmax(score))
  top3 = np.argsort(-t2i, kind="stable")[:3]
  expected = top3[np.argmax(score[top3])]
  assert int(scoring.pick_best(q, top_t2i=3)) == int(expected)
  assert int(scoring.pick_best(q, top_t2i=1)) == int(np.argmax(t2i))
  # The two rules disagree on this example, so the option matters.
  assert int(np.argmax(score)) != int(expected)
  with pytest.raises(ValueError):
    scoring.pick_best(q.score, top_t2i=3)
  assert int(jax.jit(scoring.pick_best, static_argnames="top_t2i")(q, top_t2i=3)) == expected
