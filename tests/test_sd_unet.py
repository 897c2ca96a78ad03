"""Parity of lr_jax's Stable Diffusion UNet with diffusers' PyTorch UNet2DConditionModel
(fixtures of tools/sd_fixtures_unet.py, loaded through the strict converter), the full-size
SD-1.5 / SD-2 inpainting parameter trees, strict loading and config errors."""
import functools
import pathlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.encoders.hf_files import WeightsError, read_json, read_safetensors
from lr_jax.generators.stable_diffusion import unet as sd_unet
from lr_jax.generators.stable_diffusion.unet import UNet2DConditionModel, UNetConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"
CASES = ("tiny", "sd2", "odd")
FULL_SIZE = {"unet_sd15_inpaint": UNetConfig.sd15_inpainting(),
             "unet_sd2_inpaint": UNetConfig.sd2_inpainting()}


@pytest.fixture(scope="module")
def sd_dir(fixtures_dir):
  return fixtures_dir / "stable_diffusion"


@functools.lru_cache(maxsize=None)
def _load(directory: str):
  folder = pathlib.Path(directory)
  config = sd_unet.unet_config_from_json(read_json(folder / "config.json"))
  return config, sd_unet.convert_unet(read_safetensors(folder / WEIGHTS), config, str(folder))


def load_case(sd_dir, tag):
  config, params = _load(str(sd_dir / f"unet_{tag}"))
  io = dict(np.load(sd_dir / f"unet_{tag}_io.npz"))
  return config, params, io


def run(config, params, io, dtype=jnp.float32):
  steps = io["timesteps"]
  steps = steps.item() if steps.ndim == 0 else steps  # a python scalar, as diffusers got it
  model = UNet2DConditionModel(config, dtype)
  apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, steps, c))
  return np.asarray(apply(params, io["sample"], io["encoder_hidden_states"]))


@pytest.mark.parametrize("tag", CASES)
def test_output_matches_diffusers(sd_dir, tag):
  config, params, io = load_case(sd_dir, tag)
  output = run(config, params, io)
  expected = io["output"]
  assert output.dtype == np.float32 and output.shape == expected.shape
  scale = np.abs(expected).max()
  error = np.abs(output - expected).max()
  print(f"{tag}: max abs error {error:.2e}, relative to max |output| {scale:.2f}: "
        f"{error / scale:.2e}")
  assert scale > 1.0 and expected.std() > 0.3  # random weights everywhere, O(1) output
  assert error < 1e-5 * scale


def test_fixture_configs_parse_as_intended(sd_dir):
  assert _load(str(sd_dir / "unet_tiny"))[0] == UNetConfig.tiny()
  sd2 = _load(str(sd_dir / "unet_sd2"))[0]
  assert sd2.num_attention_heads == (2, 4) and sd2.use_linear_projection and sd2.upcast_attention
  assert (sd2.flip_sin_to_cos, sd2.freq_shift, sd2.layers_per_block) == (False, 1.0, (2, 2))
  odd = _load(str(sd_dir / "unet_odd"))[0]
  assert odd.transformer_layers_per_block == (2, 1, 1) and odd.cross_attention_dim == 12
  assert (odd.downsample_padding, odd.mid_block_scale_factor) == (0, 1.5)


@pytest.mark.parametrize("tag, bound", [("tiny", 0.05), ("sd2", 0.05)])
def test_bfloat16_compute_is_finite_and_close(sd_dir, tag, bound):
  config, params, io = load_case(sd_dir, tag)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  output = run(config, params, io, jnp.bfloat16)
  expected = io["output"]
  error = np.abs(output - expected).max() / np.abs(expected).max()
  print(f"{tag} bfloat16: max abs error relative to max |output|: {error:.3f}")
  assert output.dtype == np.float32 and np.isfinite(output).all()
  assert 0 < error < bound


@pytest.mark.parametrize("tag", sorted(FULL_SIZE))
def test_full_size_tree_matches_diffusers(sd_dir, tag):
  record = json.loads((sd_dir / "full_size" / f"{tag}.json").read_text())
  config = sd_unet.unet_config_from_json(record["config"])
  assert config == FULL_SIZE[tag]
  expected = {k: tuple(v) for k, v in record["shapes"].items()}
  assert sd_unet.expected_hf_shapes(config) == expected
  abstract = sd_unet.abstract_params(config)
  inputs = (jax.ShapeDtypeStruct((2, 64, 64, 9), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32),
            jax.ShapeDtypeStruct((2, 77, config.cross_attention_dim), jnp.float32))
  model = UNet2DConditionModel(config, jnp.bfloat16)
  out = jax.eval_shape(lambda p, *a: model.apply({"params": p}, *a), abstract, *inputs)
  assert (out.shape, out.dtype) == ((2, 64, 64, 4), jnp.float32)


def test_loader_lists_every_problem(sd_dir):
  folder = sd_dir / "unet_tiny"
  tensors = dict(read_safetensors(folder / WEIGHTS))
  del tensors["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
  tensors["mid_block.resnets.1.conv2.weight"] = tensors["mid_block.resnets.1.conv2.weight"][:, :5]
  tensors["down_blocks.1.downsamplers.0.conv.weight"] = np.zeros((32, 32, 3, 3), np.float16)
  with pytest.raises(WeightsError) as err:
    sd_unet.convert_unet(tensors, UNetConfig.tiny(), "ckpt")
  message = str(err.value)
  assert "(3 problems)" in message
  assert "missing tensor up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight" in message
  assert ("wrong shape for mid_block.resnets.1.conv2.weight: (32, 5, 3, 3), expected "
          "(32, 32, 3, 3)") in message
  assert "unused tensor down_blocks.1.downsamplers.0.conv.weight" in message


def test_unsupported_config_lists_every_problem(sd_dir):
  data = read_json(sd_dir / "unet_tiny" / "config.json")
  data.update(class_embed_type="timestep", addition_embed_type="text_time",
              dual_cross_attention=True, center_input_sample=True, act_fn="gelu",
              mid_block_type="UNetMidBlock2DSimpleCrossAttn", some_new_key=3,
              down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D"])
  with pytest.raises(WeightsError) as err:
    sd_unet.unet_config_from_json(data)
  message = str(err.value)
  for part in ("class_embed_type='timestep'", "addition_embed_type='text_time'",
               "dual_cross_attention=True", "center_input_sample=True", "act_fn='gelu'",
               "mid_block_type='UNetMidBlock2DSimpleCrossAttn'", "unknown key some_new_key=3",
               "AttnDownBlock2D"):
    assert part in message, part


@pytest.mark.parametrize("changes, match", [
    (dict(cross_attention_dim=[16, 24]), "differs between blocks"),
    (dict(attention_head_dim=3), r"not divisible by num_attention_heads: \[\(16, 3\), \(32, 3\)\]"),
    (dict(norm_num_groups=5), "not multiples of norm_num_groups=5"),
    (dict(layers_per_block=[1, 1, 1]), "layers_per_block has 3 entries"),
    (dict(transformer_layers_per_block=[[1, 2], 1]), "asymmetric UNets"),
    (dict(_class_name="UNet2DModel"), "not 'UNet2DConditionModel'"),
])
def test_bad_config_values(sd_dir, changes, match):
  data = {**read_json(sd_dir / "unet_tiny" / "config.json"), **changes}
  with pytest.raises(WeightsError, match=match):
    sd_unet.unet_config_from_json(data)


def test_head_count_keys(sd_dir):
  data = read_json(sd_dir / "unet_tiny" / "config.json")
  assert sd_unet.unet_config_from_json(data).num_attention_heads == (2, 2)
  # diffusers' attention_head_dim is the head count unless num_attention_heads is given.
  data.update(attention_head_dim=[16, 32], num_attention_heads=[4, 8])
  assert sd_unet.unet_config_from_json(data).num_attention_heads == (4, 8)
  minimal = {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
             "in_channels": 9, "sample_size": 64}
  assert sd_unet.unet_config_from_json(minimal) == UNetConfig.sd15_inpainting()


def test_param_names():
  assert sd_unet.unet_param_name(
      ("up_blocks_3", "attentions_2", "transformer_blocks_0", "ff", "net_0", "proj", "kernel")) \
      == ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight", "linear")
  assert sd_unet.unet_param_name(("down_blocks_0", "downsamplers_0", "conv", "kernel")) \
      == ("down_blocks.0.downsamplers.0.conv.weight", "conv")
  assert sd_unet.unet_param_name(("time_embedding", "linear_1", "bias")) \
      == ("time_embedding.linear_1.bias", "same")
  assert sd_unet.unet_param_name(("mid_block", "resnets_1", "norm2", "scale")) \
      == ("mid_block.resnets.1.norm2.weight", "same")


def test_nearest_resize_follows_torch_indices():
  x = jnp.arange(3 * 5, dtype=jnp.float32).reshape(1, 3, 5, 1)
  y = np.asarray(sd_unet.nearest_resize(x, (7, 10)))[0, :, :, 0]
  rows, cols = [0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # floor(i * in / out)
  np.testing.assert_array_equal(y, np.asarray(x)[0, :, :, 0][np.ix_(rows, cols)])


def test_input_shapes_are_checked():
  config = UNetConfig.tiny()
  model = UNet2DConditionModel(config)
  context = jnp.zeros((1, 3, config.cross_attention_dim))
  with pytest.raises(ValueError, match=r"\(B, H, W, 9\)"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)), 1, context))
  with pytest.raises(ValueError, match="encoder_hidden_states must be"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 9)), 1,
                                      jnp.zeros((1, 3, 8))))


def test_config_checks():
  with pytest.raises(ValueError, match="not supported"):
    UNetConfig(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("AttnDownBlock2D",))
  with pytest.raises(ValueError, match="down_block_types has 2 entries"):
    UNetConfig(down_block_types=("DownBlock2D",) * 2)
  assert UNetConfig(layers_per_block=2) == UNetConfig(layers_per_block=(2, 2, 2, 2))
  assert hash(UNetConfig.tiny()) == hash(UNetConfig.tiny())
  assert hash(UNetConfig(sample_size=[64, 48])) == hash(UNetConfig(sample_size=(64, 48)))
  assert UNetConfig().time_embed_dim == 1280
