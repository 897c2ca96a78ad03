"""The strict HF -> Flax converter, config reading and hub resolution (offline)."""
import json
import shutil
import socket

import huggingface_hub
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lr_jax.encoders import hf_files

from lr_jax.encoders import hf_weights
from lr_jax.encoders.hf_weights import WeightsError


@pytest.fixture()
def dino_copy(fixtures_dir, tmp_path):
  target = tmp_path / "dino"
  shutil.copytree(fixtures_dir / "encoders" / "dino_tiny", target)
  return target


@pytest.fixture()
def clip_copy(fixtures_dir, tmp_path):
  target = tmp_path / "clip"
  shutil.copytree(fixtures_dir / "encoders" / "clip_tiny", target)
  return target


def rewrite(directory, edit):
  path = directory / "model.safetensors"
  tensors = load_file(str(path))
  edit(tensors)
  save_file(tensors, str(path))


def test_configs_read_from_config_json(fixtures_dir):
  clip = hf_weights.load_clip(fixtures_dir / "encoders" / "clip_tiny").config
  assert (clip.vision.image_size, clip.vision.patch_size, clip.vision.hidden_size) == (32, 8, 32)
  assert (clip.text.vocab_size, clip.text.max_positions, clip.projection_dim) == (514, 77, 16)
  assert clip.vision.activation == clip.text.activation == "quick_gelu"
  assert clip.text.eos_token_id == 2 and clip.vision.layer_norm_eps == 1e-5
  dino = hf_weights.load_dino(fixtures_dir / "encoders" / "dino_tiny").config
  assert (dino.activation, dino.layer_norm_eps, dino.patch_size) == ("gelu", 1e-12, 8)


def test_legacy_config_dict_keys_win():
  data = {"text_config": {"hidden_size": 64}, "text_config_dict": {"hidden_size": 32, "num_attention_heads": 4},
          "vision_config": {"patch_size": 16}}
  cfg = hf_weights.clip_config_from_json(data)
  assert cfg.text.hidden_size == 32 and cfg.vision.patch_size == 16 and cfg.vision.image_size == 224


def test_openai_style_config_parsing():
  """The layout of openai/clip-vit-base-patch16's config.json: full `text_config`
  with the legacy eos_token_id 2, and sizes repeated in `*_config_dict`."""
  data = {"projection_dim": 512, "logit_scale_init_value": 2.6592,
          "text_config": {"eos_token_id": 2, "bos_token_id": 0, "hidden_size": 512,
                          "vocab_size": 49408},
          "text_config_dict": None,
          "vision_config": {"patch_size": 16, "hidden_size": 768, "intermediate_size": 3072},
          "vision_config_dict": None}
  cfg = hf_weights.clip_config_from_json(data)
  assert cfg.text.eos_token_id == 2 and cfg.vision.patch_size == 16
  assert (cfg.text.hidden_size, cfg.text.num_heads, cfg.text.max_positions) == (512, 8, 77)
  assert (cfg.vision.hidden_size, cfg.vision.num_layers, cfg.vision.image_size) == (768, 12, 224)
  data["text_config"]["eos_token_id"] = [49407]
  assert hf_weights.clip_config_from_json(data).text.eos_token_id == 49407
  data["text_config"]["eos_token_id"] = None
  with pytest.raises(WeightsError, match="eos_token_id"):
    hf_weights.clip_config_from_json(data)


def test_every_problem_is_listed(dino_copy):
  def edit(t):
    t["extra.weight"] = np.zeros((3,), np.float32)
    del t["encoder.layer.1.output.dense.bias"]
    t["layernorm.weight"] = np.zeros((31,), np.float32)
  rewrite(dino_copy, edit)
  with pytest.raises(WeightsError) as err:
    hf_weights.load_dino(dino_copy)
  msg = str(err.value)
  assert "3 problems" in msg
  assert "unused tensor extra.weight" in msg
  assert "missing tensor encoder.layer.1.output.dense.bias" in msg
  assert "wrong shape for layernorm.weight: (31,), expected (32,)" in msg


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.update({"text_model.extra": np.ones((2, 2), np.float32)}), "unused tensor text_model.extra"),
    (lambda t: t.pop("visual_projection.weight"), "missing tensor visual_projection.weight"),
    (lambda t: t.update({"text_model.encoder.layers.0.self_attn.q_proj.weight":
                         np.zeros((32, 16), np.float32)}), "wrong shape"),
], ids=["extra", "missing", "shape"])
def test_clip_converter_errors(clip_copy, edit, expected):
  rewrite(clip_copy, edit)
  with pytest.raises(WeightsError, match=expected):
    hf_weights.load_clip(clip_copy)


def test_documented_ignores_and_vit_prefix(fixtures_dir, dino_copy, clip_copy):
  reference = hf_weights.load_dino(fixtures_dir / "encoders" / "dino_tiny").params

  def add_pooler_with_prefix(t):
    for key in list(t):
      t["vit." + key] = t.pop(key)
    t["vit.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    t["vit.pooler.dense.bias"] = np.zeros((32,), np.float32)
  rewrite(dino_copy, add_pooler_with_prefix)
  params = hf_weights.load_dino(dino_copy).params
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), params, reference)
  assert all(jax.tree_util.tree_leaves(same))
  rewrite(clip_copy, lambda t: t.update({"text_model.embeddings.position_ids":
                                         np.arange(77, dtype=np.int64)[None]}))
  hf_weights.load_clip(clip_copy)


def test_linear_weights_are_transposed_and_qkv_mapped(fixtures_dir):
  directory = fixtures_dir / "encoders" / "dino_tiny"
  tensors = load_file(str(directory / "model.safetensors"))
  params = hf_weights.load_dino(directory).params
  attn = params["block_1"]["attn"]
  for ours, theirs in [("query", "query"), ("key", "key"), ("value", "value")]:
    np.testing.assert_array_equal(attn[ours]["kernel"],
                                  tensors[f"encoder.layer.1.attention.attention.{theirs}.weight"].T)
  np.testing.assert_array_equal(params["patch_embed"]["kernel"][2, 5, 1],
                                tensors["embeddings.patch_embeddings.projection.weight"][:, 1, 2, 5])


def test_truncated_safetensors(dino_copy):
  path = dino_copy / "model.safetensors"
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(WeightsError, match="it is truncated"):
    hf_weights.load_dino(dino_copy)


def test_unreadable_dtype_is_not_called_truncated(dino_copy, monkeypatch):
  import safetensors.numpy

  def refuse(path):
    raise TypeError("data type 'bfloat16' not understood")
  monkeypatch.setattr(safetensors.numpy, "load_file", refuse)
  with pytest.raises(WeightsError) as err:
    hf_weights.load_dino(dino_copy)
  assert "truncated" not in str(err.value) and "header is intact" in str(err.value)
  assert "F32" in str(err.value)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_half_precision_checkpoints_load_as_float32(fixtures_dir, dino_copy, dtype_name):
  import ml_dtypes
  dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float16
  rewrite(dino_copy, lambda t: t.update({k: v.astype(dtype) for k, v in t.items()}))
  raw = load_file(str(dino_copy / "model.safetensors"))
  assert raw["layernorm.weight"].dtype == dtype
  params = hf_weights.load_dino(dino_copy).params
  attn = params["block_1"]["attn"]["query"]["kernel"]
  assert attn.dtype == np.float32
  np.testing.assert_array_equal(
      attn, raw["encoder.layer.1.attention.attention.query.weight"].astype(np.float32).T)


def test_missing_directory_gives_instructions(tmp_path):
  with pytest.raises(WeightsError, match="hf download facebook/dino-vitb16"):
    hf_weights.load_dino(tmp_path / "does_not_exist")
  (tmp_path / "empty").mkdir()
  with pytest.raises(WeightsError, match=r"lacks \['config.json', 'model.safetensors'\]"):
    hf_weights.load_clip(tmp_path / "empty")


def test_offline_hub_id_gives_instructions(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
  with pytest.raises(WeightsError) as err:
    hf_weights.load_clip("openai/clip-vit-base-patch16")
  msg = str(err.value)
  assert "'openai/clip-vit-base-patch16'" in msg
  assert "hf download openai/clip-vit-base-patch16 config.json model.safetensors" in msg
  assert "tokenizer.json" in msg and "--local-dir clip-vit-base-patch16" in msg
  with pytest.raises(WeightsError) as err:
    hf_weights.load_dino()  # the paper's default: DINO ViT-B/16
  msg = str(err.value)
  assert "'facebook/dino-vitb16'" in msg
  # Its main branch has no model.safetensors: point at the hub PR that has it,
  # and at the one-time conversion of pytorch_model.bin.
  assert ("hf download facebook/dino-vitb16 config.json model.safetensors "
          "--revision refs/pr/7 --local-dir dino-vitb16" in msg)
  assert "pytorch_model.bin" in msg and "save_file" in msg


class FakeHub:
  """hf_hub_download stand-in: `files` maps revision (None = main) -> available names."""

  def __init__(self, root, files, source_dir):
    self.root, self.files, self.source_dir, self.calls = root, files, source_dir, []

  def download(self, repo_id, filename, revision=None, **kwargs):
    self.calls.append((repo_id, filename, revision))
    if filename not in self.files.get(revision, ()):
      raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not at {revision}")
    target = self.root / str(revision).replace("/", "_") / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(self.source_dir / filename, target)
    return str(target)


def test_hub_main_without_safetensors_uses_known_revision(fixtures_dir, tmp_path, monkeypatch):
  source = fixtures_dir / "encoders" / "dino_tiny"
  hub = FakeHub(tmp_path, {None: {"config.json"},
                           "refs/pr/7": {"config.json", "model.safetensors"}}, source)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.download)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no PR lookup
  bundle = hf_weights.load_dino()
  assert ("facebook/dino-vitb16", "model.safetensors", None) in hub.calls
  assert ("facebook/dino-vitb16", "model.safetensors", "refs/pr/7") in hub.calls
  assert bundle.config.patch_size == 8  # the fixture's config, read from the PR revision


def test_hub_safetensors_from_converter_bot_pull_request(fixtures_dir, tmp_path, monkeypatch):
  source = fixtures_dir / "encoders" / "clip_tiny"
  tokenizer = set(hf_weights.CLIP_TOKENIZER_FILES) & {p.name for p in source.iterdir()}
  hub = FakeHub(tmp_path, {None: {"config.json"} | tokenizer,
                           "refs/pr/21": {"config.json", "model.safetensors"} | tokenizer}, source)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.download)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(hf_files, "_unreachable_reason", lambda endpoint: None)  # "online"
  asked = []

  class FakeApi:
    def get_repo_discussions(self, repo_id, author=None, discussion_type=None):
      asked.append((repo_id, author, discussion_type))
      return iter([type("D", (), {"num": 21})()])
  monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
  bundle = hf_weights.load_clip()
  assert asked == [("openai/clip-vit-base-patch16", "SFconvertbot", "pull_request")]
  assert ("openai/clip-vit-base-patch16", "model.safetensors", "refs/pr/21") in hub.calls
  assert bundle.tokenizer is not None and bundle.config.projection_dim == 16


def test_local_directory_with_only_pytorch_bin_explains_conversion(dino_copy):
  (dino_copy / "model.safetensors").rename(dino_copy / "pytorch_model.bin")
  with pytest.raises(WeightsError) as err:
    hf_weights.load_dino(dino_copy)
  msg = str(err.value)
  assert "lacks ['model.safetensors']" in msg
  assert f"torch.load('{dino_copy}/pytorch_model.bin'" in msg


def test_missing_tokenizer_for_real_vocab(clip_copy):
  (clip_copy / "tokenizer.json").unlink()
  config = json.loads((clip_copy / "config.json").read_text())
  assert hf_weights.load_clip(clip_copy).tokenizer is not None  # tiny vocab: offline fallback
  config["text_config"]["vocab_size"] = 515
  (clip_copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(WeightsError, match="no tokenizer files"):
    hf_weights.load_clip(clip_copy)


def _closed_local_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]  # closed again on exit: connections are refused


def test_unreachable_hub_searches_only_the_cache_and_fails_fast(fixtures_dir, tmp_path,
                                                                monkeypatch):
  """No HF_HUB_OFFLINE, but the endpoint refuses: one probe, cache-only lookups, no retries."""
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  endpoint = f"http://127.0.0.1:{_closed_local_port()}"
  monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
  assert "is unreachable" in hf_files._unreachable_reason(endpoint)
  hub = FakeHub(tmp_path, {"refs/pr/7": {"config.json", "model.safetensors"}},
                fixtures_dir / "encoders" / "dino_tiny")
  flags = []

  def cache_only(repo_id, filename, revision=None, local_files_only=False):
    flags.append(local_files_only)
    return hub.download(repo_id, filename, revision)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
  monkeypatch.setattr(huggingface_hub, "HfApi", None)  # a pull-request lookup would crash
  bundle = hf_weights.load_dino()  # found "in the cache" at the known revision
  assert bundle.config.patch_size == 8 and flags and all(flags)
  hub.files = {}
  with pytest.raises(WeightsError, match=r"hub not asked: 127\.0\.0\.1:\d+ is unreachable"):
    hf_weights.load_dino()
