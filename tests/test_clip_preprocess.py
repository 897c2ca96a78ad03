"""Tests for the CLIP pixel pipeline in lr_jax.encoders.clip (preprocessing, augmented views) against PIL."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lr_jax.encoders import clip
from lr_jax.method import losses

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


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
# ---------------------------------------------------------------- preprocess


def test_clip_preprocess_square_matches_pil_bicubic():
  rng = np.random.default_rng(4)
  image = _smooth_image(rng, 64, 64)
  out = np.asarray(clip.clip_preprocess(jnp.asarray(image[None]), size=40))[0]
  ref = _pil_bicubic(image, 40, 40)
  assert out.shape == (40, 40, 3)
  np.testing.assert_allclose(out * STD + MEAN, ref, atol=1e-4)


def test_clip_preprocess_non_square_resize_then_center_crop():
  rng = np.random.default_rng(5)
  image = _smooth_image(rng, 40, 57)  # short side 40 -> 24, long 57*24/40 = 34.2 -> 34
  out = np.asarray(clip.clip_preprocess(jnp.asarray(image[None]), size=24))[0]
  ref = _pil_bicubic(image, 34, 24)[:, 5:29]
  np.testing.assert_allclose(out * STD + MEAN, ref, atol=1e-4)
  tall = np.transpose(image, (1, 0, 2))
  out_t = np.asarray(clip.clip_preprocess(jnp.asarray(tall[None]), size=24))[0]
  np.testing.assert_allclose(out_t * STD + MEAN, _pil_bicubic(tall, 24, 34)[5:29],
                             atol=1e-4)


def test_clip_preprocess_normalization_constants_and_range_errors():
  gray = jnp.full((2, 24, 24, 3), 0.5, jnp.float32)
  np.testing.assert_allclose(clip.clip_preprocess(gray, size=24)[0, 0, 0],
                             (0.5 - MEAN) / STD, rtol=1e-5)
  with pytest.raises(clip.ImageRangeError, match="255"):
    clip.clip_preprocess(gray * 255.0, size=24)
  with pytest.raises(clip.ImageRangeError, match="dtype"):
    clip.clip_preprocess(jnp.zeros((1, 24, 24, 3), jnp.uint8), size=24)
  with pytest.raises(clip.ImageRangeError, match="shape"):
    clip.clip_preprocess(jnp.zeros((1, 24, 24), jnp.float32), size=24)
  # Under jit the range is not checked (traced) but it still runs.
  jax.jit(lambda x: clip.clip_preprocess(x, size=16))(gray)


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
    return losses.guidance_loss(_fake_clip(clip.clip_preprocess(x, size=16), proj16),
                                text).mean()

  def loss_views(x):
    views = clip.augment_views(x, jax.random.PRNGKey(0), num_views=3, size=16)
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
  views = clip.augment_views(images, key, num_views=4, size=20)
  assert views.shape == (4, 2, 20, 20, 3)
  np.testing.assert_array_equal(views, clip.augment_views(images, key, 4, size=20))
  jitted = jax.jit(clip.augment_views, static_argnames=("num_views", "size"))
  np.testing.assert_allclose(jitted(images, key, num_views=4, size=20), views, atol=1e-5)
  other = clip.augment_views(images, jax.random.PRNGKey(12), 4, size=20)
  assert not np.allclose(other, views)
  # Distinct views per image and per view.
  assert not np.allclose(views[0, 0], views[1, 0])
  with pytest.raises(ValueError):
    clip.augment_views(images, key, 0)
  with pytest.raises(ValueError):
    clip.augment_views(images, key, 2, crop_scale=(0.5, 1.2))


def test_crop_boxes_inside_image_and_area_range():
  boxes = np.asarray(clip.sample_crop_boxes(jax.random.PRNGKey(0), 500, 30, 50,
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
  plain = np.asarray(clip._crop_one(jnp.asarray(image), box, jnp.array(False), 24))
  mirrored = np.asarray(clip._crop_one(jnp.asarray(image), box, jnp.array(True), 24))
  np.testing.assert_allclose(plain, ref, atol=1e-4)
  np.testing.assert_allclose(mirrored, ref[:, ::-1], atol=1e-4)
  # A sub-box crop equals PIL's resize of the cropped pixels (integer box).
  sub = jnp.array([8.0, 4.0, 32.0, 32.0])
  out = np.asarray(clip._crop_one(jnp.asarray(image), sub, jnp.array(False), 16))
  # Edge rows differ (PIL clamps at the crop edge, we read outside it): compare inside.
  np.testing.assert_allclose(out[2:-2, 2:-2],
                             _pil_bicubic(image[8:40, 4:36], 16, 16)[2:-2, 2:-2],
                             atol=1e-4)

