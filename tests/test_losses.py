"""Tests for lr_jax.losses and lr_jax.scoring against numpy / PIL references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lr_jax import losses
from lr_jax import scoring

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_cos(a, b):
  return np.sum(_np_unit(a) * _np_unit(b), axis=-1)


def _np_structure(edit, src):
  def sim(t):
    u = _np_unit(t[..., 1:, :].astype(np.float64))
    return np.einsum("...nd,...md->...nm", u, u)
  return np.mean((sim(edit) - sim(src)) ** 2, axis=(-2, -1))


def _pil_bicubic(image, width, height):
  """PIL float-mode bicubic resize, channel by channel (CLIP's resampler)."""
  return np.stack([
      np.asarray(Image.fromarray(image[..., c], mode="F").resize(
          (width, height), Image.BICUBIC)) for c in range(3)], axis=-1)


def _smooth_image(rng, height, width):
  coarse = rng.random((height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
  up = np.stack([np.asarray(Image.fromarray(coarse[..., c], mode="F").resize(
      (width, height), Image.BILINEAR)) for c in range(3)], axis=-1)
  return np.clip(up, 0.0, 1.0).astype(np.float32)


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
  weights = losses.LossWeights(clip=1.0, dir=0.5, structure=2.0)
  total, terms = losses.total_loss(*(jnp.asarray(v) for v in (e, t, s, ts, et, st)),
                                   weights=weights)
  clip = np.mean(1 - _np_cos(e, t))
  direc = np.mean(1 - _np_cos(_np_unit(e) - _np_unit(s), _np_unit(t) - _np_unit(ts)))
  struct = np.mean(_np_structure(et, st))
  np.testing.assert_allclose(terms["clip"], clip, rtol=1e-5)
  np.testing.assert_allclose(terms["dir"], direc, rtol=1e-5)
  np.testing.assert_allclose(terms["structure"], struct, rtol=1e-4)
  np.testing.assert_allclose(total, clip + 0.5 * direc + 2.0 * struct, rtol=1e-5)
  only_clip, terms = losses.total_loss(
      jnp.asarray(e), jnp.asarray(t), weights=losses.LossWeights(1.0, 0.0, 0.0))
  np.testing.assert_allclose(only_clip, clip, rtol=1e-5)
  assert float(terms["dir"]) == 0.0 and float(terms["structure"]) == 0.0
  with pytest.raises(ValueError, match="directional"):
    losses.total_loss(jnp.asarray(e), jnp.asarray(t))


# ---------------------------------------------------------------- preprocess


def test_clip_preprocess_square_matches_pil_bicubic():
  rng = np.random.default_rng(4)
  image = _smooth_image(rng, 64, 64)
  out = np.asarray(losses.clip_preprocess(jnp.asarray(image[None]), size=40))[0]
  ref = _pil_bicubic(image, 40, 40)
  assert out.shape == (40, 40, 3)
  np.testing.assert_allclose(out * STD + MEAN, ref, atol=1e-4)


def test_clip_preprocess_non_square_resize_then_center_crop():
  rng = np.random.default_rng(5)
  image = _smooth_image(rng, 40, 57)  # short side 40 -> 24, long 57*24/40 = 34.2 -> 34
  out = np.asarray(losses.clip_preprocess(jnp.asarray(image[None]), size=24))[0]
  ref = _pil_bicubic(image, 34, 24)[:, 5:29]
  np.testing.assert_allclose(out * STD + MEAN, ref, atol=1e-4)
  tall = np.transpose(image, (1, 0, 2))
  out_t = np.asarray(losses.clip_preprocess(jnp.asarray(tall[None]), size=24))[0]
  np.testing.assert_allclose(out_t * STD + MEAN, _pil_bicubic(tall, 24, 34)[5:29],
                             atol=1e-4)


def test_clip_preprocess_normalization_constants_and_range_errors():
  gray = jnp.full((2, 24, 24, 3), 0.5, jnp.float32)
  np.testing.assert_allclose(losses.clip_preprocess(gray, size=24)[0, 0, 0],
                             (0.5 - MEAN) / STD, rtol=1e-5)
  with pytest.raises(losses.ImageRangeError, match="255"):
    losses.clip_preprocess(gray * 255.0, size=24)
  with pytest.raises(losses.ImageRangeError, match="dtype"):
    losses.clip_preprocess(jnp.zeros((1, 24, 24, 3), jnp.uint8), size=24)
  with pytest.raises(losses.ImageRangeError, match="shape"):
    losses.clip_preprocess(jnp.zeros((1, 24, 24), jnp.float32), size=24)
  # Under jit the range is not checked (traced) but it still runs.
  jax.jit(lambda x: losses.clip_preprocess(x, size=16))(gray)


def _fake_clip(pixels, proj):
  """A tiny differentiable stand-in for the CLIP image tower."""
  pooled = pixels.reshape(pixels.shape[:-3] + (-1,))
  return pooled @ proj


def test_gradients_flow_through_preprocess_and_augment():
  rng = np.random.default_rng(6)
  image = jnp.asarray(_smooth_image(rng, 32, 32)[None])
  proj16 = jnp.asarray(rng.normal(size=(16 * 16 * 3, 8)).astype(np.float32))
  text = jnp.asarray(rng.normal(size=(1, 8)).astype(np.float32))

  def loss_plain(x):
    return losses.guidance_loss(_fake_clip(losses.clip_preprocess(x, size=16), proj16),
                                text).mean()

  def loss_views(x):
    views = losses.augment_views(x, jax.random.PRNGKey(0), num_views=3, size=16)
    return losses.guidance_loss(_fake_clip(views, proj16), text).mean()

  grads = {}
  for name, fn in (("plain", loss_plain), ("views", loss_views)):
    grads[name] = np.asarray(jax.jit(jax.grad(fn))(image))
    assert np.all(np.isfinite(grads[name]))
    assert np.abs(grads[name]).max() > 0
  # Check one directional derivative against a central finite difference.
  direction = rng.normal(size=image.shape).astype(np.float32)
  analytic = float(np.sum(grads["views"] * direction))
  h = 1e-2
  value = jax.jit(loss_views)
  numeric = (float(value(image + h * direction))
             - float(value(image - h * direction))) / (2 * h)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-5)


# ---------------------------------------------------------------- augment


def test_augment_views_shapes_determinism_and_jit():
  rng = np.random.default_rng(7)
  images = jnp.asarray(np.stack([_smooth_image(rng, 32, 32) for _ in range(2)]))
  key = jax.random.PRNGKey(11)
  views = losses.augment_views(images, key, num_views=4, size=20)
  assert views.shape == (4, 2, 20, 20, 3)
  np.testing.assert_array_equal(views, losses.augment_views(images, key, 4, size=20))
  jitted = jax.jit(losses.augment_views, static_argnames=("num_views", "size"))
  np.testing.assert_allclose(jitted(images, key, num_views=4, size=20), views, atol=1e-5)
  other = losses.augment_views(images, jax.random.PRNGKey(12), 4, size=20)
  assert not np.allclose(other, views)
  # Distinct views per image and per view.
  assert not np.allclose(views[0, 0], views[1, 0])
  with pytest.raises(ValueError):
    losses.augment_views(images, key, 0)
  with pytest.raises(ValueError):
    losses.augment_views(images, key, 2, crop_scale=(0.5, 1.2))


def test_crop_boxes_inside_image_and_area_range():
  boxes = np.asarray(losses.sample_crop_boxes(jax.random.PRNGKey(0), 500, 30, 50,
                                              crop_scale=(0.3, 0.6)))
  top, left, h, w = boxes.T
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(top + h <= 30 + 1e-4) and np.all(left + w <= 50 + 1e-4)
  area = h * w / (30 * 50)
  unclipped = (h < 30) & (w < 50)
  assert np.all(area[unclipped] >= 0.3 - 1e-5) and np.all(area[unclipped] <= 0.6 + 1e-5)
  ratio = w / h
  assert np.all(ratio[unclipped] >= 0.75 - 1e-4) and np.all(ratio[unclipped] <= 4 / 3 + 1e-4)


def test_full_crop_is_resize_or_its_mirror():
  """With the crop fixed to the whole square image, views are PIL resizes (+flips)."""
  rng = np.random.default_rng(8)
  image = _smooth_image(rng, 48, 48)
  box = jnp.array([0.0, 0.0, 48.0, 48.0])
  ref = _pil_bicubic(image, 24, 24)
  plain = np.asarray(losses._crop_one(jnp.asarray(image), box, jnp.array(False), 24))
  mirrored = np.asarray(losses._crop_one(jnp.asarray(image), box, jnp.array(True), 24))
  np.testing.assert_allclose(plain, ref, atol=1e-4)
  np.testing.assert_allclose(mirrored, ref[:, ::-1], atol=1e-4)
  # A sub-box crop equals PIL's resize of the cropped pixels (integer box).
  sub = jnp.array([8.0, 4.0, 32.0, 32.0])
  out = np.asarray(losses._crop_one(jnp.asarray(image), sub, jnp.array(False), 16))
  # Edge rows differ (PIL clamps at the crop edge, we read outside it): compare inside.
  np.testing.assert_allclose(out[2:-2, 2:-2],
                             _pil_bicubic(image[8:40, 4:36], 16, 16)[2:-2, 2:-2],
                             atol=1e-4)


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
