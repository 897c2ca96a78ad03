"""Stable Diffusion's VAE against diffusers' PyTorch AutoencoderKL (fixtures of
tools/sd_fixtures_vae.py), the old attention names, the full-size tree and the strict loader."""
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lr_jax.encoders.hf_files import WeightsError
from lr_jax.generators.stable_diffusion import vae
from lr_jax.generators.stable_diffusion.vae import AutoencoderKL, VAEConfig, VAEConfigError

WEIGHTS = "diffusion_pytorch_model.safetensors"
CASES = ("tiny", "three")


@pytest.fixture(scope="module")
def sd_dir(fixtures_dir):
  return fixtures_dir / "stable_diffusion"


@pytest.fixture(scope="module")
def loaded(sd_dir):
  """{case: (config, params, fixture arrays)}, read through the loader."""
  out = {}
  for case in CASES:
    config, params = vae.load_vae(sd_dir / f"vae_{case}")
    out[case] = config, params, dict(np.load(sd_dir / f"vae_{case}_io.npz"))
  return out


@pytest.fixture()
def tiny_copy(sd_dir, tmp_path):
  def copy(name="vae_tiny"):
    shutil.copytree(sd_dir / name, tmp_path / name)
    return tmp_path / name
  return copy


@functools.lru_cache(maxsize=None)
def _jitted(config, method, dtype):
  return jax.jit(lambda p, x: AutoencoderKL(config, dtype).apply({"params": p}, x, method=method))


def _apply(config, params, method, x, dtype=jnp.float32):
  return jax.tree_util.tree_map(np.asarray, _jitted(config, method, dtype)(params, x))


def _relative_errors(got, want):
  """Each channel's max abs error over its max abs reference value (the channels differ in
  scale by up to e^10 where the fixture pushes logvar to the clamps)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  axes = tuple(range(want.ndim - 1))
  return np.abs(got - want).max(axes) / np.abs(want).max(axes)


def _assert_close(got, want, rel=1e-5):
  assert got.shape == want.shape and got.dtype == np.float32
  errors = _relative_errors(got, want)
  assert errors.max() <= rel, errors


def test_configs_read_from_config_json(loaded, sd_dir):
  assert loaded["tiny"][0] == VAEConfig.tiny()
  assert loaded["three"][0] == VAEConfig(block_out_channels=(8, 12, 16), layers_per_block=2,
                                         latent_channels=3, norm_num_groups=2, sample_size=16,
                                         scaling_factor=0.13025)
  full = json.loads((sd_dir / "full_size" / "vae_sd.json").read_text())["config"]
  assert vae.vae_config_from_json(full) == VAEConfig()
  assert VAEConfig().downsample_factor == 8 and VAEConfig().scaling_factor == 0.18215
  del full["scaling_factor"]  # early hub configs lack it: diffusers' default applies
  assert vae.vae_config_from_json(full).scaling_factor == 0.18215


@pytest.mark.parametrize("case", CASES)
def test_encoding_matches_diffusers(loaded, case):
  config, params, io = loaded[case]
  mean, logvar = _apply(config, params, AutoencoderKL.encode, io["images"])
  _assert_close(mean, io["mean"])
  _assert_close(logvar, io["logvar"])
  for bound in (-30.0, 20.0):  # the clamp is exact where diffusers clamps
    np.testing.assert_array_equal(logvar == bound, io["logvar"] == bound)
  if case == "three":
    assert (io["logvar"] == -30.0).any() and (io["logvar"] == 20.0).any()
    assert (io["logvar"][..., 1] < 20.0).any()  # the shifted channel is only partly clamped


@pytest.mark.parametrize("case", CASES)
def test_posterior_sample_matches_diffusers(loaded, case):
  config, params, io = loaded[case]
  mean, logvar = _apply(config, params, AutoencoderKL.encode, io["images"])
  _assert_close(np.asarray(vae.reparameterize(mean, logvar, io["noise"])), io["sample"])


def test_sample_posterior_is_mean_plus_std_times_noise(loaded):
  io = loaded["three"][2]
  key = jax.random.PRNGKey(7)
  sample = np.asarray(vae.sample_posterior(io["mean"], io["logvar"], key))
  noise = np.asarray(jax.random.normal(key, io["mean"].shape, jnp.float32), np.float64)
  expected = io["mean"] + np.exp(0.5 * io["logvar"].astype(np.float64)) * noise
  assert sample.dtype == np.float32 and _relative_errors(sample, expected).max() < 1e-6
  other = np.asarray(vae.sample_posterior(io["mean"], io["logvar"], jax.random.PRNGKey(8)))
  assert not np.allclose(sample, other)
  # Where logvar = -30 the std is e^-15: the sample is the mean.
  low = io["logvar"] == -30.0
  np.testing.assert_allclose(sample[low], io["mean"][low], atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_decoding_matches_diffusers(loaded, case):
  config, params, io = loaded[case]
  decoded = _apply(config, params, AutoencoderKL.decode, io["latents"])
  f = config.downsample_factor
  assert decoded.shape == (2, io["latents"].shape[1] * f, io["latents"].shape[2] * f, 3)
  _assert_close(decoded, io["decoded"])


def test_bfloat16_decoding_is_finite_and_close(loaded):
  config, params, io = loaded["tiny"]
  decoded = _apply(config, params, AutoencoderKL.decode, io["latents"], jnp.bfloat16)
  assert decoded.dtype == np.float32 and np.isfinite(decoded).all()
  error = np.abs(decoded - io["decoded"]).max()
  assert error < 0.05 * np.abs(io["decoded"]).max(), error  # measured 0.033 (values up to 2.9)


def test_old_attention_names_load_identically(loaded, sd_dir):
  names = load_file(str(sd_dir / "vae_tiny_old_names" / WEIGHTS))
  assert names["encoder.mid_block.attentions.0.query.weight"].shape == (16, 16, 1, 1)
  assert names["decoder.mid_block.attentions.0.proj_attn.weight"].shape == (16, 16)
  config, params = vae.load_vae(sd_dir / "vae_tiny_old_names")
  assert config == loaded["tiny"][0]
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded["tiny"][1])


def test_old_attention_names_still_list_problems(tiny_copy):
  folder = tiny_copy("vae_tiny_old_names")
  tensors = load_file(str(folder / WEIGHTS))
  prefix = "decoder.mid_block.attentions.0"
  del tensors[f"{prefix}.key.bias"]
  tensors[f"{prefix}.value.weight"] = np.zeros((16, 16, 3, 3), np.float32)
  tensors[f"{prefix}.to_q.weight"] = tensors[f"{prefix}.query.weight"]  # both names: one is extra
  save_file(tensors, str(folder / WEIGHTS))
  with pytest.raises(WeightsError) as err:
    vae.load_vae(folder)
  message = str(err.value)
  assert "3 problems" in message and WEIGHTS in message
  assert f"missing tensor {prefix}.to_k.bias" in message
  assert f"wrong shape for {prefix}.to_v.weight: (16, 16, 3, 3), expected (16, 16)" in message
  assert f"unused tensor {prefix}.query.weight (16, 16)" in message
  assert f"{prefix}.value.weight -> {prefix}.to_v.weight" in message  # the renaming is named


def test_every_problem_is_listed(tiny_copy):
  folder = tiny_copy()
  tensors = load_file(str(folder / WEIGHTS))
  del tensors["decoder.up_blocks.1.resnets.0.conv_shortcut.bias"]
  tensors["encoder.extra.weight"] = np.zeros((3,), np.float32)
  tensors["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  tensors["encoder.mid_block.attentions.0.to_out.0.weight"] = np.zeros((16, 8), np.float32)
  save_file(tensors, str(folder / WEIGHTS))
  with pytest.raises(WeightsError) as err:
    vae.load_vae(folder)
  message = str(err.value)
  assert "4 problems" in message and "renamed" not in message
  assert "missing tensor decoder.up_blocks.1.resnets.0.conv_shortcut.bias" in message
  assert "unused tensor encoder.extra.weight (3,)" in message
  assert "wrong shape for quant_conv.weight: (8, 8, 3, 3), expected (8, 8, 1, 1)" in message
  assert ("wrong shape for encoder.mid_block.attentions.0.to_out.0.weight: (16, 8), "
          "expected (16, 16)") in message


def test_full_size_shapes_match_torch(sd_dir):
  data = json.loads((sd_dir / "full_size" / "vae_sd.json").read_text())
  got = vae.expected_hf_shapes(vae.vae_config_from_json(data["config"]))
  expected = {k: tuple(v) for k, v in data["shapes"].items()}
  assert sorted(got) == sorted(expected)
  assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_full_size_latent_grid():
  config = VAEConfig()
  model, params = AutoencoderKL(config), vae.abstract_params(config)
  mean, logvar = jax.eval_shape(
      lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode),
      params, jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32))
  assert mean.shape == logvar.shape == (1, 64, 64, 4)
  images = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode),
                          params, mean)
  assert images.shape == (1, 512, 512, 3) and images.dtype == jnp.float32


def test_unsupported_config_lists_every_setting(sd_dir):
  data = json.loads((sd_dir / "full_size" / "vae_sd.json").read_text())["config"]
  data.update(act_fn="relu", shift_factor=0.1159, use_quant_conv=False,
              mid_block_add_attention=False, up_block_types=["UpDecoderBlock2D"] * 3,
              sample_size=[512, 768])
  with pytest.raises(WeightsError) as err:
    vae.vae_config_from_json(data)
  for part in ("act_fn='relu'", "shift_factor=0.1159", "use_quant_conv=False",
               "mid_block_add_attention=False", "up_block_types", "sample_size=[512, 768]"):
    assert part in str(err.value)
  with pytest.raises(WeightsError, match="_class_name is 'VQModel'"):
    vae.vae_config_from_json({"_class_name": "VQModel"})
  with pytest.raises(WeightsError, match="not multiples of norm_num_groups"):
    vae.vae_config_from_json(dict(block_out_channels=[8, 12], norm_num_groups=8,
                                  down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2))


def test_bad_inputs_are_one_clear_error(loaded, sd_dir, tmp_path):
  config, params, _ = loaded["three"]
  with pytest.raises(VAEConfigError, match="multiples of 4"):
    _apply(config, params, AutoencoderKL.encode, np.zeros((1, 18, 16, 3), np.float32))
  with pytest.raises(VAEConfigError, match=r"\(B, H, W, 3\)"):
    _apply(config, params, AutoencoderKL.encode, np.zeros((1, 16, 16, 4), np.float32))
  with pytest.raises(VAEConfigError, match=r"\(B, h, w, 3\)"):
    _apply(config, params, AutoencoderKL.decode, np.zeros((1, 4, 4, 4), np.float32))
  with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.fp16\.safetensors"):
    vae.load_vae(sd_dir / "vae_tiny", variant="fp16")


def test_random_params_have_the_tree():
  config = VAEConfig.tiny()
  params = vae.random_params(config, jax.random.PRNGKey(0))
  assert (jax.tree_util.tree_structure(params)
          == jax.tree_util.tree_structure(vae.abstract_params(config)))
  again = vae.random_params(config, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(params["quant_conv"]["kernel"], again["quant_conv"]["kernel"])
