"""Parity of lr_jax's aMUSEd text encoder with transformers' PyTorch CLIPTextModelWithProjection
(tests/fixtures/amused, made by tools/amused_fixtures_transformer.py)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.generators.amused import text
from lr_jax.encoders.hf_files import WeightsError, read_json, read_safetensors
from lr_jax.encoders.hf_weights import IGNORED_CLIP, load_clip_tokenizer


@pytest.fixture(scope="module")
def io(amused_dir):
  return dict(np.load(amused_dir / "text_io.npz"))


@pytest.fixture(scope="module")
def encoder(amused_dir):
  directory = amused_dir / "text_tiny" / "text_encoder"
  config = text.text_config_from_json(read_json(directory / "config.json"))
  return config, text.convert_text_encoder(read_safetensors(directory / "model.safetensors"), config)


def test_penultimate_states_and_projection_match(encoder, io):
  config, params = encoder
  assert config == text.TextEncoderConfig.tiny()
  model = text.TextEncoder(config)
  run = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))
  ids = jnp.asarray(io["input_ids"])
  for tag, mask in (("nomask", None), ("mask", jnp.asarray(io["attention_mask"]))):
    hidden, pooled = run(params, ids, mask)
    assert hidden.shape == (3, 77, 32) and pooled.shape == (3, 16)
    assert np.max(np.abs(np.asarray(hidden) - io[f"{tag}_penultimate"])) < 1e-5
    assert np.max(np.abs(np.asarray(pooled) - io[f"{tag}_text_embeds"])) < 1e-5
  # Padding is attended without a mask, as in the pipeline: the two calls differ.
  assert np.max(np.abs(io["nomask_penultimate"] - io["mask_penultimate"])) > 1e-2


def test_tokenizer_subfolder_gives_the_fixture_ids(amused_dir, io):
  # The hub's tokenizer/ subfolder through the project's CLIP tokenizer loader.
  tokenizer = load_clip_tokenizer(amused_dir / "text_tiny" / "tokenizer", text.TextEncoderConfig.tiny())
  ids = tokenizer(list(io["prompts"]), padding="max_length", max_length=tokenizer.model_max_length,
                  truncation=True, return_tensors="np")["input_ids"]
  np.testing.assert_array_equal(ids, io["input_ids"])


def test_full_size_tree_matches_transformers(amused_dir):
  shapes = json.loads((amused_dir / "text_full_shapes.json").read_text())
  expected = {k: tuple(v) for k, v in shapes.items() if not IGNORED_CLIP.match(k)}
  assert text.expected_hf_shapes(text.TextEncoderConfig.clip_l14()) == expected


def test_loader_and_config_errors(amused_dir, encoder):
  config, _ = encoder
  tensors = dict(read_safetensors(amused_dir / "text_tiny" / "text_encoder" / "model.safetensors"))
  del tensors["text_projection.weight"]
  tensors["text_model.embeddings.position_embedding.weight"] = np.zeros((10, 32), np.float32)
  with pytest.raises(WeightsError, match=r"\(2 problems\)") as err:
    text.convert_text_encoder(tensors, config)
  assert "missing tensor text_projection.weight" in str(err.value)
  assert "wrong shape for text_model.embeddings.position_embedding.weight" in str(err.value)
  with pytest.raises(WeightsError, match="hidden_act"):
    text.text_config_from_json({"hidden_act": "relu"})
  with pytest.raises(WeightsError, match="not divisible"):
    text.text_config_from_json({"hidden_size": 30, "num_attention_heads": 4})
