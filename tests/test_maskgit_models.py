"""Numerical parity of the MaskGIT tokenizer/transformer with the official code.

References: tests/fixtures/maskgit_official_tiny (outputs of google-research/maskgit on
random parameters, see that folder's config_tiny.json).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgit import checkpoints
from maskgit.configs import CONFIG_NAMES, get_config
from maskgit.transformer import Transformer
from maskgit.vqgan import VQGAN

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def official(fixtures_dir):
  folder = fixtures_dir / "maskgit_official_tiny"
  tok_shapes, tr_shapes = checkpoints.param_shapes(TINY)
  return dict(
      folder=folder,
      outputs=dict(np.load(folder / "outputs_tiny.npz")),
      tokenizer=checkpoints.load_params(str(folder / "tokenizer_tiny.msgpack"), tok_shapes),
      transformer=checkpoints.load_params(str(folder / "transformer_tiny.msgpack"), tr_shapes))


def _apply(module, params, method, *args):
  fn = jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))
  return np.asarray(fn(params, *args))


def _run_tokenizer(dtype, params, images, ids):
  """(quantized, ids, recon-from-ids) in one jitted call, to compile once."""
  vq = VQGAN(TINY.tokenizer, dtype=dtype)

  def run(vq, images, ids):
    return vq.encode(images), vq.encode_to_indices(images), vq.decode_from_indices(ids)

  out = jax.jit(lambda p, x, i: vq.apply({"params": p}, x, i, method=run))(params, images, ids)
  return dict(zip(("quantized", "ids", "recon"), map(np.asarray, out)))


@pytest.fixture(scope="module")
def tokenizer_outputs(official):
  ref = official["outputs"]
  return _run_tokenizer(jnp.float32, official["tokenizer"], ref["images"], ref["ids"])


def test_tiny_config_matches_fixture_config(official):
  ref = json.loads((official["folder"] / "config_tiny.json").read_text())
  tok, tr = TINY.tokenizer, TINY.transformer
  assert tok.image_size == ref["image_size"] and tok.filters == ref["filters"]
  assert list(tok.channel_multipliers) == ref["channel_multipliers"]
  assert tok.num_res_blocks == ref["num_res_blocks"]
  assert tok.embedding_dim == ref["embedding_dim"]
  assert tok.codebook_size == ref["codebook_size"] == tr.codebook_size
  assert (tr.vocab_size, tr.hidden_size, tr.num_layers, tr.num_heads) == (
      ref["vocab_size"], ref["hidden_size"], ref["num_layers"], ref["num_heads"])
  assert tr.intermediate_size == ref["intermediate_size"]
  assert tr.sequence_length == ref["sequence_length"] == TINY.tokens_per_side ** 2 + 1
  assert tr.num_class == ref["num_class"]
  assert TINY.mask_token_id == ref["mask_token_id"]
  # Class tokens as in the fixture's edit_input: label + codebook_size.
  assert TINY.class_token(3) == 67


def test_unknown_config_lists_names():
  with pytest.raises(ValueError, match="imagenet256.*imagenet512.*tiny"):
    get_config("imagenet1024")
  assert set(CONFIG_NAMES) == {"imagenet256", "imagenet512", "tiny"}
  assert get_config("imagenet512").tokens_per_side == 32


def test_quantized_and_ids_match_official(official, tokenizer_outputs):
  ref = official["outputs"]
  np.testing.assert_array_equal(tokenizer_outputs["ids"], ref["ids"])
  assert tokenizer_outputs["ids"].dtype == np.int32
  np.testing.assert_allclose(tokenizer_outputs["quantized"], ref["quantized"], atol=1e-5, rtol=0)


def test_reconstruction_matches_official(official, tokenizer_outputs):
  ref = official["outputs"]["recon"]
  assert tokenizer_outputs["recon"].shape == ref.shape
  # The decoder's own float32 rounding is ~2e-5 here (the official output itself is
  # 1.8e-5 from a float64 evaluation, values up to |7|): allow 5e-5 absolute.
  np.testing.assert_allclose(tokenizer_outputs["recon"], ref, atol=5e-5, rtol=0)


def test_logits_match_official(official):
  ref = official["outputs"]
  model = Transformer(TINY.transformer)
  logits = _apply(model, official["transformer"], None, ref["edit_input"])
  assert logits.dtype == np.float32 and logits.shape == ref["logits"].shape
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-5, rtol=0)


def test_dropout_path_matches_official_at_negligible_rate(official):
  """deterministic=False uses a separate attention path; with ~0 dropout it must agree."""
  ref = official["outputs"]
  cfg = dataclasses.replace(TINY.transformer, hidden_dropout_prob=0.0,
                            attention_dropout_prob=1e-9)
  model = Transformer(cfg)
  run = jax.jit(lambda p, x, key: model.apply(
      {"params": p}, x, deterministic=False, rngs={"dropout": key}))
  logits = run(official["transformer"], ref["edit_input"], jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-5, rtol=0)


def test_bfloat16_logits_close_to_float32(official):
  ref = official["outputs"]
  model = Transformer(TINY.transformer, dtype=jnp.bfloat16)
  logits = _apply(model, official["transformer"], None, ref["edit_input"])
  assert logits.dtype == np.float32
  # bf16 has 8 mantissa bits: ~0.4% relative per op; logits here span |0.54|.
  assert np.abs(logits - ref["logits"]).max() < 2e-2
  assert (logits.argmax(-1) == ref["logits"].argmax(-1)).mean() >= 0.9


def test_bfloat16_decoder_close_to_float32(official):
  """The editing path decodes pixels in bf16 (it encodes in float32)."""
  ref = official["outputs"]
  vq = VQGAN(TINY.tokenizer, dtype=jnp.bfloat16)
  recon = _apply(vq, official["tokenizer"], VQGAN.decode_from_indices, ref["ids"][:1])
  assert recon.dtype == np.float32
  # ~30 bf16 conv layers: measured mean error 3% of the mean magnitude; allow 6%.
  expected = ref["recon"][:1]
  assert np.abs(recon - expected).mean() < 0.06 * np.abs(expected).mean()


@pytest.mark.parametrize("shape", [(2, 64, 64, 1), (2, 64, 64, 4), (64, 64, 3), (2, 3, 64, 64)])
def test_non_rgb_images_rejected(official, shape):
  vq = VQGAN(TINY.tokenizer)
  with pytest.raises(ValueError, match=r"expected RGB images of shape \(B,H,W,3\)"):
    vq.apply({"params": official["tokenizer"]}, np.zeros(shape, np.float32),
             method=VQGAN.encode_to_indices)


def test_image_size_not_multiple_of_downsampling_rejected(official):
  vq = VQGAN(TINY.tokenizer)
  with pytest.raises(ValueError, match="multiples of 16"):
    vq.apply({"params": official["tokenizer"]}, np.zeros((1, 40, 64, 3), np.float32),
             method=VQGAN.encode)


def test_transformer_rejects_bad_token_shapes(official):
  model = Transformer(TINY.transformer)
  with pytest.raises(ValueError, match="exceeds"):
    model.apply({"params": official["transformer"]}, np.zeros((1, 18), np.int32))
  with pytest.raises(ValueError, match=r"\(B, L\)"):
    model.apply({"params": official["transformer"]}, np.zeros((17,), np.int32))
