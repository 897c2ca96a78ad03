"""Parity of lr_jax's aMUSEd UVit2D with diffusers' PyTorch UVit2DModel (tests/fixtures/amused,
made by tools/amused_fixtures_transformer.py), loaded through the strict converter."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.generators.amused import transformer as uvit
from lr_jax.encoders.hf_files import WeightsError, read_json, read_safetensors
from lr_jax.encoders.hf_weights import hf_shapes

WEIGHTS = "diffusion_pytorch_model.safetensors"
TINY = {"plain": uvit.UVit2DConfig.tiny(),
        "down": uvit.UVit2DConfig.tiny(downsample=True, use_bias=True, ln_elementwise_affine=False)}


@pytest.fixture(scope="module")
def io(amused_dir):
  return dict(np.load(amused_dir / "transformer_io.npz"))


@pytest.fixture(scope="module")
def full_shapes(amused_dir):
  return json.loads((amused_dir / "transformer_full_shapes.json").read_text())


def load(amused_dir, tag):
  directory = amused_dir / f"transformer_{tag}" / "transformer"
  config = uvit.transformer_config_from_json(read_json(directory / "config.json"))
  return config, uvit.convert_transformer(read_safetensors(directory / WEIGHTS), config)


def logits_of(config, params, io, tag, dtype=jnp.float32):
  model = uvit.UVit2D(config, dtype)
  inputs = [jnp.asarray(io[f"{tag}_{k}"]) for k in ("ids", "text_hidden", "pooled_text", "micro_conds")]
  return np.asarray(jax.jit(lambda p, *a: model.apply({"params": p}, *a))(params, *inputs))


@pytest.mark.parametrize("tag", ["plain", "down"])
def test_logits_match_diffusers(amused_dir, io, tag):
  config, params = load(amused_dir, tag)
  assert config == TINY[tag]
  assert (io[f"{tag}_ids"] == config.vocab_size - 1).any()  # masked inputs
  logits = logits_of(config, params, io, tag)
  expected = io[f"{tag}_logits"].transpose(0, 2, 3, 1)  # diffusers: (B, codebook, h, w)
  assert logits.dtype == np.float32 and logits.shape == expected.shape
  assert np.max(np.abs(logits - expected)) < 1e-5
  assert np.max(np.abs(expected)) > 1.0  # not a trivially small output


def test_bfloat16_compute(amused_dir, io):
  config, params = load(amused_dir, "plain")
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  logits = logits_of(config, params, io, "plain", jnp.bfloat16)
  expected = io["plain_logits"].transpose(0, 2, 3, 1)
  assert logits.dtype == np.float32 and np.isfinite(logits).all()
  error = np.max(np.abs(logits - expected))
  assert 0 < error < 0.05 * np.max(np.abs(expected))  # measured 0.087 of 5.29
  assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("resolution", [256, 512])
def test_full_size_tree_matches_diffusers(full_shapes, resolution):
  config = uvit.UVit2DConfig.preset(resolution)
  expected = {k: tuple(v) for k, v in full_shapes[str(resolution)].items()}
  abstract = uvit.abstract_params(config)
  assert hf_shapes(abstract, uvit.hf_name) == expected
  saved = full_shapes["configs"][str(resolution)]
  assert uvit.transformer_config_from_json(saved) == config
  side = resolution // 16
  inputs = (jax.ShapeDtypeStruct((2, side, side), jnp.int32), jax.ShapeDtypeStruct((2, 77, 768), jnp.float32),
            jax.ShapeDtypeStruct((2, 768), jnp.float32), jax.ShapeDtypeStruct((2, 5), jnp.float32))
  logits = jax.eval_shape(lambda p, *a: uvit.UVit2D(config, jnp.bfloat16).apply({"params": p}, *a),
                          abstract, *inputs)
  assert (logits.shape, logits.dtype) == ((2, side, side, 8192), jnp.float32)


def test_loader_lists_every_problem(amused_dir):
  directory = amused_dir / "transformer_plain" / "transformer"
  tensors = dict(read_safetensors(directory / WEIGHTS))
  del tensors["transformer_layers.1.attn2.to_k.weight"]
  tensors["mlm_layer.conv2.weight"] = tensors["mlm_layer.conv2.weight"][:10]
  tensors["down_block.downsample.conv.weight"] = np.zeros((24, 24, 2, 2), np.float32)
  with pytest.raises(WeightsError) as err:
    uvit.convert_transformer(tensors, TINY["plain"], "ckpt")
  message = str(err.value)
  assert "(3 problems)" in message
  assert "missing tensor transformer_layers.1.attn2.to_k.weight" in message
  assert "wrong shape for mlm_layer.conv2.weight: (10, 16, 1, 1), expected (64, 16, 1, 1)" in message
  assert "unused tensor down_block.downsample.conv.weight" in message


def test_config_errors():
  with pytest.raises(WeightsError, match="not divisible by num_attention_heads"):
    uvit.transformer_config_from_json({"hidden_size": 1000})
  with pytest.raises(WeightsError, match="downsample and upsample must agree"):
    uvit.transformer_config_from_json({"downsample": True})
  assert uvit.transformer_config_from_json({"_class_name": "UVit2DModel", "hidden_dropout": 0.1,
                                            "sample_size": 16}) == uvit.UVit2DConfig.amused_256()


def test_input_shapes_are_checked():
  config = TINY["down"]
  model = uvit.UVit2D(config)
  ids = jnp.zeros((1, 3, 4), jnp.int32)
  args = (jnp.zeros((1, 2, config.encoder_hidden_size)), jnp.zeros((1, config.cond_embed_dim)),
          jnp.zeros((1, 5)))
  with pytest.raises(ValueError, match="even token grid"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, *args))
  with pytest.raises(ValueError, match="micro_conds of shape"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids[:, :2], *args[:2], jnp.zeros((1, 4))))
