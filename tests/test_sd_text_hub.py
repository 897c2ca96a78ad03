"""Stable Diffusion's text encoders against transformers' PyTorch CLIPTextModel (fixtures of
tools/sd_fixtures_text.py), the full-size parameter trees, and the hub layout (offline)."""
import ast
import json
import shlex
import shutil
import time
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lr_jax.encoders import clip_text
from lr_jax.encoders.diffusers_layout import PipelineLayout
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.generators.stable_diffusion import hub

CASES = ("quick_gelu", "gelu")


@pytest.fixture(scope="session")
def sd_dir(fixtures_dir):
  return fixtures_dir / "stable_diffusion"


@pytest.fixture(scope="module")
def loaded(sd_dir):
  """{case: (config, params, io)} through the hub loader (a local directory of the layout)."""
  return {case: (*hub.load_text_encoder(sd_dir / f"text_{case}"),
                 dict(np.load(sd_dir / f"text_{case}_io.npz"))) for case in CASES}


def _close(actual, expected, atol=1e-5):
  error = float(np.max(np.abs(np.asarray(actual) - expected)))
  assert error < atol, error
  return error


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_transformers(loaded, case):
  config, params, io = loaded[case]
  ids = np.asarray(io["input_ids"], np.int32)
  out = clip_text.ClipTextModel(config).apply({"params": params}, ids)
  assert out.last_hidden_state.shape == io["last_hidden_state"].shape
  _close(out.last_hidden_state, io["last_hidden_state"])   # SD's conditioning
  _close(out.pooled, io["pooled"])
  _close(out.penultimate, io["penultimate"])
  assert out.text_embeds is None
  # The pooled row is the first eos (padding with eos) or the largest id (legacy eos 2).
  first_eos = np.argmax(ids == ids.max(), axis=1)
  np.testing.assert_array_equal(np.asarray(out.pooled),
                                np.asarray(out.last_hidden_state)[np.arange(3), first_eos])


def test_configs_from_config_json(loaded):
  quick, gelu = loaded["quick_gelu"][0], loaded["gelu"][0]
  assert (quick.text.activation, quick.text.eos_token_id, quick.projection_dim) == (
      "quick_gelu", 513, None)
  assert (gelu.text.activation, gelu.text.eos_token_id, gelu.text.num_layers) == ("gelu", 2, 3)
  assert gelu.projection_dim is None  # a CLIPTextModel, though its config names projection_dim
  with pytest.raises(WeightsError, match="cannot tell whether"):
    clip_text.text_config_from_json({"hidden_size": 32})
  with pytest.raises(WeightsError, match="hidden_act"):
    clip_text.text_config_from_json({"architectures": ["CLIPTextModel"], "hidden_act": "relu"})


def test_full_size_trees_match_transformers(sd_dir):
  for name, preset in (("sd15", clip_text.ClipTextConfig.clip_l14(None)),
                       ("sd2", clip_text.ClipTextConfig.open_clip_h14())):
    data = json.loads((sd_dir / "full_size" / f"text_encoder_{name}.json").read_text())
    config = clip_text.text_config_from_json(data["config"])
    assert config == preset, name
    expected = {k: tuple(v) for k, v in data["shapes"].items()}
    assert clip_text.expected_hf_shapes(config) == expected, name
  assert preset.text.hidden_size == 1024 and preset.text.num_layers == 23


def test_tokenizer_gives_the_pipeline_ids(sd_dir, loaded):
  for case in CASES:
    io = loaded[case][2]
    tokenizer = hub.load_tokenizer(sd_dir / f"text_{case}")
    ids = tokenizer(list(io["prompts"]), padding="max_length", max_length=77, truncation=True,
                    return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ids, io["input_ids"])


def test_conversion_is_strict_and_takes_both_name_styles(sd_dir, loaded):
  config, params, _ = loaded["gelu"]
  tensors = load_file(str(sd_dir / "text_gelu" / "text_encoder" / "model.safetensors"))
  assert "text_model.embeddings.position_ids" in tensors  # ignored
  unprefixed = {k.removeprefix("text_model."): v for k, v in tensors.items()}  # transformers 5
  again = clip_text.convert_text_encoder(unprefixed, config)
  np.testing.assert_array_equal(again["text"]["final_norm"]["scale"],
                                params["text"]["final_norm"]["scale"])
  tensors["text_projection.weight"] = np.zeros((512, 48), np.float32)
  del tensors["text_model.final_layer_norm.bias"]
  with pytest.raises(WeightsError, match=r"\(2 problems\)") as err:
    clip_text.convert_text_encoder(tensors, config)
  assert "unused tensor text_projection.weight" in str(err.value)
  assert "missing tensor text_model.final_layer_norm.bias" in str(err.value)


# -- the hub layout ------------------------------------------------------------------------

def write_layout(root, variant=None):
  """A pipeline directory: the gelu text encoder and tokenizer, stand-in unet/vae files."""
  source = root.parent / "source"
  for sub in ("text_encoder", "tokenizer"):
    shutil.copytree(source / sub, root / sub)
  if variant:
    tensors = load_file(str(root / "text_encoder" / "model.safetensors"))
    (root / "text_encoder" / "model.safetensors").unlink()
    save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()},
              str(root / "text_encoder" / hub.weights_filename("text_encoder", variant)))
  for sub in ("unet", "vae"):
    (root / sub).mkdir()
    (root / sub / "config.json").write_text(json.dumps({"_class_name": sub}))
    save_file({"w": np.ones(2, np.float32)}, str(root / sub / hub.weights_filename(sub, variant)))
  (root / "scheduler").mkdir()
  (root / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "PNDMScheduler"}')
  return root


@pytest.fixture()
def layout(sd_dir, tmp_path):
  shutil.copytree(sd_dir / "text_gelu", tmp_path / "source")
  return tmp_path


def test_variant_file_names():
  assert hub.weights_filename("unet") == "diffusion_pytorch_model.safetensors"
  assert hub.weights_filename("vae", "fp16") == "diffusion_pytorch_model.fp16.safetensors"
  assert hub.subfolder_files("text_encoder", "fp16") == [
      "text_encoder/config.json", "text_encoder/model.fp16.safetensors"]
  assert hub.subfolder_files("scheduler", "fp16") == ["scheduler/scheduler_config.json"]
  assert "tokenizer/merges.txt" in hub.subfolder_files("tokenizer")
  with pytest.raises(WeightsError, match="unknown weights variant 'bf16'"):
    hub.weights_filename("unet", "bf16")
  with pytest.raises(WeightsError, match="holds no weights"):
    hub.weights_filename("scheduler")
  with pytest.raises(WeightsError, match="unknown Stable Diffusion subfolder 'vqvae'"):
    hub.resolve_stable_diffusion(hub.SD15_INPAINTING, subfolders=("vqvae",))


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_local_directory_resolves_and_reads(layout, loaded, variant):
  root = write_layout(layout / "pipeline", variant)
  assert hub.resolve_stable_diffusion(root, variant) == root
  data, tensors = hub.read_component(root, "unet", variant)
  assert data == {"_class_name": "unet"} and list(tensors) == ["w"]
  assert hub.read_component(root, "scheduler") == ({"_class_name": "PNDMScheduler"}, {})
  config, params = hub.load_text_encoder(root, variant)
  assert config == loaded["gelu"][0]
  kernel = params["text"]["block_0"]["fc1"]["kernel"]
  want = loaded["gelu"][1]["text"]["block_0"]["fc1"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, want.astype(np.float16) if variant else want)
  other = "fp16" if variant is None else None
  with pytest.raises(WeightsError, match="lacks") as err:
    hub.resolve_stable_diffusion(root, other)
  assert f"unet/{hub.weights_filename('unet', other)}" in str(err.value)


def test_local_directory_lists_every_missing_file(layout):
  root = write_layout(layout / "pipeline")
  (root / "vae" / "config.json").unlink()
  (root / "scheduler" / "scheduler_config.json").unlink()
  (root / "tokenizer" / "merges.txt").unlink()
  with pytest.raises(WeightsError) as err:
    hub.resolve_stable_diffusion(root)
  message = str(err.value)
  assert ("lacks ['vae/config.json', 'tokenizer/tokenizer.json (or tokenizer/vocab.json + "
          "tokenizer/merges.txt)', 'scheduler/scheduler_config.json']") in message
  for repo in (hub.SD15_INPAINTING, hub.SD2_INPAINTING):
    assert f"hf download {repo} unet/config.json" in message
  assert f"--local-dir {root}" in message
  with pytest.raises(WeightsError, match="scheduler_config.json"):
    hub.read_component(root, "scheduler")
  with pytest.raises(WeightsError, match="neither an existing directory nor a hub repo id"):
    hub.resolve_stable_diffusion(root / "absent")


def test_offline_repo_ids_fail_fast_listing_every_file(tmp_path):
  for repo, variant in ((hub.SD15_INPAINTING, None), (hub.SD2_INPAINTING, "fp16")):
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
      hub.resolve_stable_diffusion(repo, variant, cache_dir=tmp_path)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    suffix = ".fp16" if variant else ""
    files = [f"unet/diffusion_pytorch_model{suffix}.safetensors", "unet/config.json",
             f"vae/diffusion_pytorch_model{suffix}.safetensors", "vae/config.json",
             "text_encoder/config.json", f"text_encoder/model{suffix}.safetensors",
             "tokenizer/tokenizer.json (or tokenizer/vocab.json + tokenizer/merges.txt)",
             "scheduler/scheduler_config.json"]
    assert "HF_HUB_OFFLINE" in message
    listed = message.split("could not get ")[1].split(" of Hugging Face repo")[0]
    assert sorted(ast.literal_eval(listed)) == sorted(files)
    folder = repo.split("/")[1]
    assert (f"hf download {repo} unet/config.json unet/diffusion_pytorch_model{suffix}.safetensors"
            f" vae/config.json vae/diffusion_pytorch_model{suffix}.safetensors "
            f"text_encoder/config.json text_encoder/model{suffix}.safetensors tokenizer/ "
            f"scheduler/scheduler_config.json --local-dir {folder}") in message
  with pytest.raises(WeightsError, match="text_encoder/model.safetensors"):
    hub.load_text_encoder(hub.SD15_INPAINTING, cache_dir=tmp_path)


def test_download_command_is_accepted_by_the_hf_cli(monkeypatch):
  """The hint runs as is with the installed `hf` CLI (the download itself is stubbed)."""
  cli = pytest.importorskip("huggingface_hub.cli.hf")
  download = pytest.importorskip("huggingface_hub.cli.download")
  calls = []
  monkeypatch.setattr(download, "snapshot_download", lambda **kw: calls.append(kw) or "/x")
  command = hub.download_command(hub.SD2_INPAINTING, "fp16", ("text_encoder", "tokenizer"))
  words = shlex.split(command)
  assert words[:2] == ["hf", "download"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. "Ignoring `--include`": files would be skipped
    cli.app(args=words[1:], standalone_mode=False)
  assert calls[0]["repo_id"] == hub.SD2_INPAINTING
  assert calls[0]["allow_patterns"] == ["text_encoder/config.json",
                                        "text_encoder/model.fp16.safetensors", "tokenizer/**"]
  assert calls[0]["local_dir"] == "stable-diffusion-2-inpainting" and calls[0]["revision"] is None


def test_bad_files_are_weights_errors_naming_the_file(layout):
  root = write_layout(layout / "pipeline")
  (root / "tokenizer" / "vocab.json").write_text("<!DOCTYPE html><html>rate limited</html>")
  with pytest.raises(WeightsError, match=r"tokenizer/vocab\.json"):
    hub.load_tokenizer(root)
  (root / "tokenizer" / "tokenizer.json").write_text("<html>404</html>")
  with pytest.raises(WeightsError, match=r"tokenizer/tokenizer\.json"):
    hub.load_tokenizer(root)
  shutil.rmtree(root / "tokenizer")
  shutil.copytree(layout / "source" / "tokenizer", root / "tokenizer")
  (root / "tokenizer" / "merges.txt").write_text("<html>\n<body>Not found</body>\n</html>\n")
  with pytest.raises(WeightsError, match=r"tokenizer/merges\.txt is not a BPE merges file"):
    hub.load_tokenizer(root)
  (root / "text_encoder" / "config.json").write_text("[1, 2]")
  with pytest.raises(WeightsError, match=r"text_encoder/config\.json holds a JSON list"):
    hub.read_component(root, "text_encoder")
  with pytest.raises(WeightsError, match=r"text_encoder/config\.json holds a JSON list"):
    hub.load_text_encoder(root)


def test_layout_is_parameterised():
  layout = PipelineLayout(name="Toy", repos=("me/toy",), subfolders=("model", "tok"),
                          weights_stems={"model": "weights"}, tokenizers=("tok",))
  assert layout.subfolder_files("model", "fp16") == ["model/config.json",
                                                     "model/weights.fp16.safetensors"]
  assert layout.download_command("me/toy") == (
      "hf download me/toy model/config.json model/weights.safetensors tok/ --local-dir toy")
  with pytest.raises(ValueError, match="no file list"):
    PipelineLayout(name="Bad", repos=("a/b",), subfolders=("x",), weights_stems={})
