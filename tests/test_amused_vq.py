"""aMUSEd's VQ model against diffusers' PyTorch VQModel (fixtures of tools/amused_fixtures_vq.py),
the full-size parameter tree, and the hub loader's errors (offline)."""
import functools
import json
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lr_jax.generators.amused import hub
from lr_jax.generators.amused.vq import VQConfig, VQConfigError, VQModel, abstract_params, random_params
from lr_jax.encoders.hf_files import WeightsError

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny(amused_dir):
  config, params = hub.load_vq(amused_dir / "vq_tiny")
  return config, params, dict(np.load(amused_dir / "vq_tiny_io.npz"))


@pytest.fixture()
def tiny_copy(amused_dir, tmp_path):
  target = tmp_path / "pipeline"
  shutil.copytree(amused_dir / "vq_tiny", target)
  return target


@functools.lru_cache(maxsize=None)
def _jitted(config, method, dtype):
  return jax.jit(lambda p, v: VQModel(config, dtype).apply({"params": p}, v, method=method))


def _apply(config, params, method, x, dtype=jnp.float32):
  return np.asarray(_jitted(config, method, dtype)(params, x))


def test_config_read_from_config_json(tiny, amused_dir):
  assert tiny[0] == VQConfig.tiny()
  full = json.loads((amused_dir / "vq_full_config.json").read_text())
  assert hub.vq_config_from_json(full) == VQConfig()
  assert VQConfig().downsample_factor == 16 and VQConfig().vq_embed_dim == 64


def test_encoding_matches_diffusers(tiny):
  config, params, io = tiny
  latents = _apply(config, params, VQModel.encode_latents, io["pixels"])
  np.testing.assert_allclose(latents, io["latents"], atol=1e-5, rtol=0)
  # Exact ids are a fair demand: every latent's nearest code wins by >= 1e-2 (fixture script).
  assert io["margins"].min() > 1e-2
  ids = _apply(config, params, VQModel.encode_ids, io["pixels"])
  assert ids.dtype == np.int32 and ids.shape == (2, 4, 6)
  np.testing.assert_array_equal(ids, io["ids"])
  assert len(np.unique(ids)) > 8


@pytest.mark.parametrize("ids_key, pixels_key", [("ids", "decoded"),
                                                 ("all_code_ids", "all_code_decoded")])
def test_decoding_matches_diffusers(tiny, ids_key, pixels_key):
  config, params, io = tiny
  decoded = _apply(config, params, VQModel.decode_ids, io[ids_key])
  assert decoded.shape == (2, 16, 24, 3) and decoded.dtype == np.float32
  np.testing.assert_allclose(decoded, io[pixels_key], atol=1e-5, rtol=0)


def test_bfloat16_decoding_is_finite_and_close(tiny):
  config, params, io = tiny
  decoded = _apply(config, params, VQModel.decode_ids, io["ids"], jnp.bfloat16)
  assert np.isfinite(decoded).all()
  assert np.abs(decoded - io["decoded"]).max() < 0.15  # measured 0.044 (values up to 3)


def test_full_size_tree_matches_torch_shapes(amused_dir):
  expected = json.loads((amused_dir / "vq_full_shapes.json").read_text())
  flat = jax.tree_util.tree_flatten_with_path(abstract_params(VQConfig()))[0]
  got = {}
  for key_path, leaf in flat:
    name, _ = hub.vq_param_name(tuple(str(k.key) for k in key_path))
    shape = tuple(leaf.shape)
    got[name] = [shape[3], shape[2], shape[0], shape[1]] if len(shape) == 4 else list(shape)
  assert sorted(got) == sorted(expected)
  assert {k: v for k, v in got.items() if expected[k] != v} == {}


@pytest.mark.parametrize("size, grid", [(256, 16), (512, 32)])
def test_full_size_token_grids(size, grid):
  model = VQModel(VQConfig())
  params = abstract_params(VQConfig())
  ids = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=VQModel.encode_ids),
                       params, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert ids.shape == (2, grid, grid) and ids.dtype == jnp.int32
  pixels = jax.eval_shape(lambda p, i: model.apply({"params": p}, i, method=VQModel.decode_ids),
                          params, ids)
  assert pixels.shape == (2, size, size, 3)


def test_every_problem_is_listed(tiny_copy):
  path = tiny_copy / "vqvae" / WEIGHTS
  tensors = load_file(str(path))
  del tensors["decoder.up_blocks.1.resnets.0.conv_shortcut.bias"]
  tensors["encoder.extra.weight"] = np.zeros((3,), np.float32)
  tensors["quantize.embedding.weight"] = np.zeros((31, 6), np.float32)
  save_file(tensors, str(path))
  with pytest.raises(WeightsError) as err:
    hub.load_vq(tiny_copy)
  message = str(err.value)
  assert "3 problems" in message and WEIGHTS in message
  assert "missing tensor decoder.up_blocks.1.resnets.0.conv_shortcut.bias" in message
  assert "unused tensor encoder.extra.weight (3,)" in message
  assert "wrong shape for quantize.embedding.weight: (31, 6), expected (32, 6)" in message


def test_fp16_variant(tiny, tiny_copy):
  folder = tiny_copy / "vqvae"
  with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.fp16\.safetensors"):
    hub.load_vq(tiny_copy, variant="fp16")
  tensors = load_file(str(folder / WEIGHTS))
  save_file({k: v.astype(np.float16) for k, v in tensors.items()},
            str(folder / "diffusion_pytorch_model.fp16.safetensors"))
  (folder / WEIGHTS).unlink()
  config, params = hub.load_vq(tiny_copy, variant="fp16")
  assert config == tiny[0]
  codes = params["quantize"]["embedding"]["embedding"]
  assert codes.dtype == jnp.float32
  np.testing.assert_array_equal(
      codes, tensors["quantize.embedding.weight"].astype(np.float16).astype(np.float32))
  with pytest.raises(WeightsError, match="unknown weights variant 'bf16'"):
    hub.load_vq(tiny_copy, variant="bf16")


def test_offline_repo_fails_fast_with_the_download_command(tmp_path):
  start = time.perf_counter()
  with pytest.raises(WeightsError) as err:
    hub.resolve_amused(hub.AMUSED_512, variant="fp16", cache_dir=tmp_path)
  assert time.perf_counter() - start < 10
  message = str(err.value)
  assert "HF_HUB_OFFLINE" in message and "vqvae/config.json" in message
  assert ("hf download amused/amused-512 vqvae/config.json "
          "vqvae/diffusion_pytorch_model.fp16.safetensors transformer/config.json "
          "transformer/diffusion_pytorch_model.fp16.safetensors text_encoder/config.json "
          "text_encoder/model.fp16.safetensors tokenizer/ --local-dir amused-512") in message


def test_repo_id_found_in_the_hub_cache(tiny, amused_dir, tmp_path):
  """A repo id resolves offline from a huggingface_hub cache (its snapshot layout)."""
  repo = tmp_path / "models--amused--amused-256"
  commit = "0" * 40
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  shutil.copytree(amused_dir / "vq_tiny", repo / "snapshots" / commit)
  root = hub.resolve_amused(hub.AMUSED_256, cache_dir=tmp_path, subfolders=("vqvae", "tokenizer"))
  assert root == repo / "snapshots" / commit
  config, params = hub.load_vq(hub.AMUSED_256, cache_dir=tmp_path)
  assert config == tiny[0]
  np.testing.assert_array_equal(params["quant_conv"]["kernel"], tiny[1]["quant_conv"]["kernel"])
  with pytest.raises(WeightsError, match="text_encoder/model.safetensors"):
    hub.resolve_amused(hub.AMUSED_256, cache_dir=tmp_path)


def test_local_directory_errors(tiny_copy):
  with pytest.raises(WeightsError) as err:
    hub.resolve_amused(tiny_copy)
  message = str(err.value)
  for name in ("transformer/config.json", "text_encoder/model.safetensors"):
    assert name in message
  assert "tokenizer/" not in message.split("lacks")[1].split("]")[0]  # the tokenizer is complete
  (tiny_copy / "tokenizer" / "tokenizer.json").unlink()
  with pytest.raises(WeightsError, match=r"tokenizer/vocab\.json \+ tokenizer/merges\.txt"):
    hub.load_tokenizer(tiny_copy)
  with pytest.raises(WeightsError, match="neither an existing directory nor a hub repo id"):
    hub.resolve_amused(tiny_copy / "absent")
  with pytest.raises(WeightsError, match="unknown aMUSEd subfolder 'unet'"):
    hub.resolve_amused(tiny_copy, subfolders=("unet",))


def test_tokenizer_and_subfolder_reading(amused_dir):
  tokenizer = hub.load_tokenizer(amused_dir / "vq_tiny")
  assert len(tokenizer("a cat")["input_ids"]) > 2
  config, tensors = hub.read_subfolder(amused_dir / "vq_tiny", "vqvae")
  assert config["_class_name"] == "VQModel" and "encoder.conv_in.weight" in tensors
  with pytest.raises(WeightsError, match="holds no weights"):
    hub.read_subfolder(amused_dir / "vq_tiny", "tokenizer")


def test_unsupported_config_lists_every_setting(amused_dir):
  data = json.loads((amused_dir / "vq_full_config.json").read_text())
  data.update(act_fn="relu", norm_type="spatial", mid_block_add_attention=True,
              up_block_types=["UpDecoderBlock2D"] * 4)
  with pytest.raises(WeightsError) as err:
    hub.vq_config_from_json(data)
  for part in ("act_fn='relu'", "norm_type='spatial'", "mid_block_add_attention=True",
               "up_block_types"):
    assert part in str(err.value)
  del data["mid_block_add_attention"]  # diffusers' default is True: unsupported, too
  with pytest.raises(WeightsError, match="mid_block_add_attention=True"):
    hub.vq_config_from_json(data)
  with pytest.raises(WeightsError, match="not multiples of norm_num_groups"):
    hub.vq_config_from_json(dict(block_out_channels=[8, 12], norm_num_groups=8,
                                 down_block_types=["DownEncoderBlock2D"] * 2,
                                 up_block_types=["UpDecoderBlock2D"] * 2,
                                 mid_block_add_attention=False))


def test_bad_inputs_are_one_clear_error(tiny):
  config, params, _ = tiny
  with pytest.raises(VQConfigError, match="multiples of 4"):
    _apply(config, params, VQModel.encode_ids, np.zeros((1, 18, 24, 3), np.float32))
  with pytest.raises(VQConfigError, match=r"\(B, H, W, 3\)"):
    _apply(config, params, VQModel.encode_ids, np.zeros((1, 16, 24, 4), np.float32))
  with pytest.raises(VQConfigError, match=r"\(B, h, w\)"):
    _apply(config, params, VQModel.decode_ids, np.zeros((1, 16), np.int32))


def test_random_params_have_the_tree_and_sane_scale():
  config = VQConfig.tiny()
  params = random_params(config, jax.random.PRNGKey(0))
  abstract = abstract_params(config)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(abstract)
  again = random_params(config, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(params["quant_conv"]["kernel"], again["quant_conv"]["kernel"])
  pixels = np.random.default_rng(0).uniform(size=(1, 16, 16, 3)).astype(np.float32)
  decoded = _apply(config, params, VQModel.__call__, pixels)
  assert np.isfinite(decoded).all() and 0.05 < decoded.std() < 20
