"""Parity of lr_jax's CLIP / DINO encoders with HF PyTorch outputs (tests/fixtures/encoders,
made by tools/make_encoder_fixtures.py), loaded through the real safetensors converter."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.encoders import hf_weights
from lr_jax.encoders.clip import CLIP
from lr_jax.encoders.dino import dino_features
from lr_jax.encoders.vit import ViT, bicubic_matrix, interpolate_pos_embed, resize_grid_bicubic


def max_err(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a.astype(np.float64) - b)))


@pytest.fixture(scope="module")
def enc_dir(fixtures_dir):
  return fixtures_dir / "encoders"


@pytest.fixture(scope="module")
def clip_bundle(enc_dir):
  return hf_weights.load_clip(enc_dir / "clip_tiny")


@pytest.fixture(scope="module")
def clip_io(enc_dir):
  return dict(np.load(enc_dir / "clip_io.npz"))


@pytest.fixture(scope="module")
def dino_bundle(enc_dir):
  # The fixtures come from HF ViTModel(interpolate_pos_encoding=True): HF's resampling.
  return hf_weights.load_dino(enc_dir / "dino_tiny", pos_interpolation="hf")


def test_clip_image_parity(clip_bundle, clip_io):
  b = clip_bundle
  encode = jax.jit(lambda p, x: b.model.apply({"params": p}, x, method=CLIP.encode_image))
  embeds, tokens = encode(b.params, jnp.asarray(clip_io["pixels"]))
  assert max_err(embeds, clip_io["image_embeds"]) < 1e-5
  assert max_err(tokens, clip_io["vision_last_hidden_state"]) < 1e-5


def test_clip_text_parity(clip_bundle, clip_io):
  b = clip_bundle
  assert b.config.text.eos_token_id == 2  # legacy hub value -> argmax pooling
  ids, mask = jnp.asarray(clip_io["input_ids"]), jnp.asarray(clip_io["attention_mask"])
  def run(params, ids, mask):
    variables = {"params": params}
    return (b.model.apply(variables, ids, mask, method=CLIP.encode_text),
            b.model.apply(variables, ids, mask, method=CLIP.text_hidden_states))
  embeds, hidden = jax.jit(run)(b.params, ids, mask)
  assert max_err(embeds, clip_io["text_embeds"]) < 1e-5
  assert max_err(hidden, clip_io["text_last_hidden_state"]) < 1e-5


def test_clip_text_first_eos_pooling(clip_bundle, clip_io):
  b = clip_bundle
  eos = int(clip_io["override_eos_token_id"])
  text_cfg = dataclasses.replace(b.config.text, eos_token_id=eos)
  model = CLIP(dataclasses.replace(b.config, text=text_cfg))
  encode = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=CLIP.encode_text))
  embeds = encode(b.params, jnp.asarray(clip_io["input_ids"]), jnp.asarray(clip_io["attention_mask"]))
  assert max_err(embeds, clip_io["text_embeds_override_eos"]) < 1e-5
  assert max_err(embeds, clip_io["text_embeds"]) > 1e-2  # the pooling choice matters here


def test_clip_logits(clip_bundle, clip_io):
  b = clip_bundle
  run = jax.jit(lambda p, *args: b.model.apply({"params": p}, *args))
  image, text, log_scale = run(b.params, jnp.asarray(clip_io["pixels"]),
                               jnp.asarray(clip_io["input_ids"]), jnp.asarray(clip_io["attention_mask"]))
  image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
  text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
  logits = jnp.exp(log_scale) * image @ text.T
  assert max_err(logits, clip_io["logits_per_image"]) < 1e-4


def test_clip_tokenizer_from_fixture(clip_bundle, clip_io):
  tok = clip_bundle.tokenizer([str(t) for t in clip_io["texts"]], padding="max_length",
                              max_length=clip_io["input_ids"].shape[1], truncation=True,
                              return_tensors="np")
  np.testing.assert_array_equal(tok["input_ids"], clip_io["input_ids"])
  np.testing.assert_array_equal(tok["attention_mask"], clip_io["attention_mask"])


@pytest.mark.parametrize("tag", ["native", "nonsquare", "small"])
def test_dino_parity(dino_bundle, enc_dir, tag):
  io = np.load(enc_dir / "dino_io.npz")
  b = dino_bundle
  images = jnp.asarray(io[f"{tag}_images"])
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)

  def run(params, images):  # one compile: the public helper and the raw module outputs
    out = b.model.apply({"params": params}, (images - mean) / std)
    return dino_features(b.model, params, images), out["tokens"], out["cls_attention"]
  (features, attention), tokens, cls_attention = jax.jit(run)(b.params, images)
  hidden = io[f"{tag}_last_hidden_state"]
  batch, h, w = attention.shape
  assert (h, w) == (images.shape[1] // 8, images.shape[2] // 8)
  assert max_err(features, hidden[:, 1:].reshape(batch, h, w, -1)) < 1e-5
  assert max_err(attention, io[f"{tag}_cls_attention_mean"]) < 1e-6
  assert max_err(tokens, hidden) < 1e-5
  assert max_err(cls_attention, io[f"{tag}_cls_attention_heads"]) < 1e-6


@pytest.mark.parametrize("name", ["up_4_to_6x5", "down_4_to_3x3", "up_28_to_32"])
def test_bicubic_matches_torch_size_mode(enc_dir, name):
  io = np.load(enc_dir / "bicubic_io.npz")
  grid_in, grid_out = io[f"size_{name}_in"][0], io[f"size_{name}_out"][0]
  got = resize_grid_bicubic(jnp.asarray(grid_in.transpose(1, 2, 0)), grid_out.shape[1:])
  assert max_err(got.transpose(2, 0, 1), grid_out) < 1e-5


@pytest.mark.parametrize("name", ["4_to_6x5", "28_to_32", "14_to_11"])
def test_dino_mode_pos_interpolation_matches_torch(enc_dir, name):
  io = np.load(enc_dir / "bicubic_io.npz")
  grid_in, grid_out = io[f"scale_{name}_in"][0], io[f"scale_{name}_out"][0]
  channels, n = grid_in.shape[0], grid_in.shape[1]
  cls_row = np.arange(channels, dtype=np.float32)[None]
  pos = np.concatenate([cls_row, grid_in.transpose(1, 2, 0).reshape(n * n, channels)])
  h, w = grid_out.shape[1:]
  got = interpolate_pos_embed(jnp.asarray(pos), (h, w), mode="dino")
  assert max_err(got[0], cls_row[0]) == 0.0
  assert max_err(got[1:].reshape(h, w, channels).transpose(2, 0, 1), grid_out) < 1e-5


def test_load_dino_defaults_to_dino_style_interpolation(enc_dir, dino_bundle):
  """By default position embeddings are resampled like facebookresearch/dino.

  Reference: the same weights, with the position embeddings replaced by their
  DINO-mode resampling (checked against torch in the test above), run as a
  model whose native size is the input size (no interpolation inside)."""
  bundle = hf_weights.load_dino(enc_dir / "dino_tiny")
  assert bundle.config.pos_interpolation == "dino"
  assert hf_weights.load_dino.__defaults__[0] == "facebook/dino-vitb16"
  images = jnp.asarray(np.load(enc_dir / "dino_io.npz")["nonsquare_images"][:, :40, :40])
  params = bundle.params  # 4x4 native grid; the input gives 5x5
  ref_model = ViT(dataclasses.replace(bundle.config, image_size=40))
  ref_params = {**params, "pos_embed": interpolate_pos_embed(params["pos_embed"], (5, 5), "dino")}
  run = jax.jit(lambda p, rp, x: (dino_features(bundle.model, p, x),
                                  dino_features(ref_model, rp, x),
                                  dino_features(dino_bundle.model, p, x)))
  (feats, attn), (ref_feats, ref_attn), (_, hf_attn) = run(params, ref_params, images)
  assert attn.shape == (2, 5, 5)
  assert max_err(feats, ref_feats) < 1e-5 and max_err(attn, ref_attn) < 1e-6
  assert max_err(attn, hf_attn) > 1e-4  # HF's resampling differs: the test can tell them apart


def test_bicubic_rows_sum_to_one_and_identity():
  for n_in, n_out in [(4, 7), (28, 32), (14, 11)]:
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(bicubic_matrix(5, 5), np.eye(5), atol=1e-7)


def test_tiny_configs_run_offline():
  dino, clip = hf_weights.init_encoders(hf_weights.tiny_dino_config(),
                                        hf_weights.tiny_clip_config(), jax.random.PRNGKey(0))
  tok = clip.tokenizer(["a lion", "a rooster"], padding="max_length", max_length=12,
                       return_tensors="np")
  assert clip.tokenizer.decode(tok["input_ids"][1], skip_special_tokens=True) == "a rooster"
  assert tok["input_ids"].max() < clip.config.text.vocab_size
  size = clip.config.vision.image_size
  run = lambda p, *args: jax.eval_shape(lambda: clip.model.apply({"params": p}, *args))
  image, text, _ = run(clip.params, jnp.zeros((2, size, size, 3)), jnp.asarray(tok["input_ids"]),
                       jnp.asarray(tok["attention_mask"]))
  assert image.shape == text.shape == (2, clip.config.projection_dim)
  feats, attn = jax.eval_shape(lambda: dino_features(dino.model, dino.params,
                                                     jnp.full((1, 64, 64, 3), 0.5)))
  assert feats.shape == (1, 8, 8, 32) and attn.shape == (1, 8, 8)


def test_bad_image_size_is_a_value_error(dino_bundle):
  with pytest.raises(ValueError, match="multiple of patch"):
    dino_bundle.model.apply({"params": dino_bundle.params}, jnp.zeros((1, 30, 32, 3)))
