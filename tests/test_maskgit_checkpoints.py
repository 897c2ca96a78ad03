"""Checkpoint trees, strict loading and the download cache (all offline)."""
import io
import os
import urllib.error
import urllib.request

import flax.serialization
import numpy as np
import pytest
from flax import traverse_util

from maskgit import checkpoints
from maskgit.checkpoints import CheckpointError
from maskgit.configs import get_config

TINY_DIR = "maskgit_official_tiny"


def _reference_trees(fixtures_dir):
  """{section: {path: shape}} from the official param-tree listing."""
  trees, section = {}, None
  for line in (fixtures_dir / "maskgit_param_tree.txt").read_text().splitlines():
    if line.startswith("# tokenizer"):
      section = trees.setdefault("tokenizer", {})
    elif line.startswith("# transformer"):
      section = trees.setdefault("transformer", {})
    elif line.strip() and not line.startswith("#"):
      path, shape, dtype = line.split("\t")
      assert dtype == "float32"
      section[path.removeprefix("params/")] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
  return trees


def _flat_shapes(tree):
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.mark.parametrize("name", ["imagenet256", "imagenet512"])
def test_imagenet_trees_match_official(fixtures_dir, name):
  ref = _reference_trees(fixtures_dir)
  assert (len(ref["tokenizer"]), len(ref["transformer"])) == (168, 393)
  tok, tr = map(_flat_shapes, checkpoints.param_shapes(get_config(name)))
  expected_tr = dict(ref["transformer"])
  if name == "imagenet512":
    expected_tr["Embed_0/position_embeddings/embedding"] = (1025, 768)
  assert tok == ref["tokenizer"]
  assert tr == expected_tr
  # Totals printed in the listing's header for ImageNet-256.
  if name == "imagenet256":
    assert sum(int(np.prod(s)) for s in tok.values()) == 54_515_587
    assert sum(int(np.prod(s)) for s in tr.values()) == 172_457_193


@pytest.fixture()
def tiny_files(fixtures_dir):
  folder = fixtures_dir / TINY_DIR
  return folder / "tokenizer_tiny.msgpack", folder / "transformer_tiny.msgpack"


@pytest.fixture(scope="module")
def tiny_shapes():
  return checkpoints.param_shapes(get_config("tiny"))


def test_load_params_returns_checkpoint_values(tiny_files, tiny_shapes):
  params = checkpoints.load_params(str(tiny_files[1]), tiny_shapes[1])
  raw = flax.serialization.msgpack_restore(tiny_files[1].read_bytes())["params"]
  flat, flat_raw = (traverse_util.flatten_dict(t, sep="/") for t in (params, raw))
  assert flat.keys() == flat_raw.keys()
  for key, value in flat.items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(value), flat_raw[key])


def test_truncated_file_rejected(tmp_path, tiny_files, tiny_shapes):
  data = tiny_files[0].read_bytes()
  bad = tmp_path / "truncated.msgpack"
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated.msgpack"):
    checkpoints.load_params(str(bad), tiny_shapes[0])


def test_random_bytes_rejected(tmp_path, tiny_shapes):
  bad = tmp_path / "noise.bin"
  bad.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(CheckpointError, match="noise.bin"):
    checkpoints.load_params(str(bad), tiny_shapes[0])


def test_wrong_model_lists_keys(tiny_files, tiny_shapes):
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_params(str(tiny_files[0]), tiny_shapes[1])
  message = str(info.value)
  assert "41 missing, 168 unexpected" in message
  assert "missing: Embed_0/word_embeddings/embedding (75, 64)" in message
  assert "unexpected: decoder/Conv_0/bias" in message


def test_missing_unexpected_and_misshaped_in_one_error(tmp_path, tiny_files, tiny_shapes):
  raw = flax.serialization.msgpack_restore(tiny_files[1].read_bytes())
  flat = traverse_util.flatten_dict(raw["params"], sep="/")
  del flat["MlmLayer_0/mlm_bias/bias"]
  flat["Extra_0/kernel"] = np.zeros((2, 2), np.float32)
  flat["Embed_0/position_embeddings/embedding"] = np.zeros((9, 64), np.float32)
  path = tmp_path / "edited.msgpack"
  path.write_bytes(flax.serialization.msgpack_serialize(
      {"params": traverse_util.unflatten_dict(flat, sep="/")}))
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_params(str(path), tiny_shapes[1])
  message = str(info.value)
  assert "1 missing, 1 unexpected, 1 mis-shaped" in message
  assert "missing: MlmLayer_0/mlm_bias/bias (75,)" in message
  assert "unexpected: Extra_0/kernel (2, 2)" in message
  assert "Embed_0/position_embeddings/embedding: checkpoint (9, 64), model (17, 64)" in message


def test_file_without_params_entry_rejected(tmp_path, tiny_shapes):
  path = tmp_path / "plain.msgpack"
  path.write_bytes(flax.serialization.msgpack_serialize({"weights": np.zeros(3, np.float32)}))
  with pytest.raises(CheckpointError, match="params"):
    checkpoints.load_params(str(path), tiny_shapes[0])


def test_unknown_name_lists_valid_names(tmp_path):
  with pytest.raises(CheckpointError, match="tokenizer_imagenet256.*maskgit_imagenet512"):
    checkpoints.fetch_checkpoint("maskgit_imagenet1024", cache_dir=str(tmp_path))


def test_urls_and_cache_dir(monkeypatch, tmp_path):
  assert checkpoints.CHECKPOINT_URLS["maskgit_imagenet512"] == (
      "https://storage.googleapis.com/maskgit-public/checkpoints/maskgit_imagenet512_checkpoint")
  assert len(checkpoints.CHECKPOINT_URLS) == 4
  monkeypatch.delenv("MASKGIT_CACHE_DIR", raising=False)
  assert str(checkpoints.default_cache_dir()).endswith(os.path.join(".cache", "lr_jax", "maskgit"))
  monkeypatch.setenv("MASKGIT_CACHE_DIR", str(tmp_path / "env_cache"))
  assert checkpoints.default_cache_dir() == tmp_path / "env_cache"


def test_local_path_used_as_is(tiny_files, monkeypatch):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  assert checkpoints.fetch_checkpoint(str(tiny_files[0])) == tiny_files[0]


def _no_network(url, *args, **kwargs):
  raise urllib.error.URLError("network is unreachable")


class _FakeResponse(io.BytesIO):
  """Serves bytes like an HTTP response; optionally fails after `fail_after` bytes."""

  def __init__(self, data, fail_after=None, claimed_length=None):
    super().__init__(data if fail_after is None else data[:fail_after])
    self.headers = {"Content-Length": str(claimed_length or len(data))}
    self._fail = fail_after is not None

  def read(self, size=-1):
    chunk = super().read(size)
    if not chunk and self._fail:
      raise ConnectionResetError("connection reset by peer")
    return chunk


def test_offline_download_error_names_url_and_destination(monkeypatch, tmp_path):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(CheckpointError) as info:
    checkpoints.fetch_checkpoint("tokenizer_imagenet256", cache_dir=str(tmp_path))
  message = str(info.value)
  assert checkpoints.CHECKPOINT_URLS["tokenizer_imagenet256"] in message
  assert str(tmp_path / "tokenizer_imagenet256") in message
  assert "MASKGIT_CACHE_DIR" in message
  # Neutral wording: flags of one command (e.g. --config.maskgit.*) do not exist in others.
  assert "--" not in message and "\n" not in message
  assert list(tmp_path.iterdir()) == []


def test_offline_error_ends_with_callers_hint(monkeypatch, tmp_path):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(CheckpointError, match=r"or use --weights_dir\.$"):
    checkpoints.fetch_checkpoint("maskgit_imagenet256", cache_dir=str(tmp_path),
                                 hint="use --weights_dir")


def test_load_maskgit_offline_names_both_files_in_one_line(monkeypatch, tmp_path):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_maskgit(get_config("imagenet256"), cache_dir=str(tmp_path), hint="HINT")
  message = str(info.value)
  for name in ("tokenizer_imagenet256", "maskgit_imagenet256"):
    assert checkpoints.CHECKPOINT_URLS[name] in message
    assert str(tmp_path / name) in message
  assert "\n" not in message and message.endswith("or HINT.")


def test_download_into_env_cache_then_reuse(monkeypatch, tmp_path, tiny_files, tiny_shapes):
  data = tiny_files[0].read_bytes()
  calls = []

  def serve(url, *args, **kwargs):
    calls.append(url)
    return _FakeResponse(data)

  monkeypatch.setenv("MASKGIT_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(urllib.request, "urlopen", serve)
  params = checkpoints.load_params("tokenizer_imagenet256", tiny_shapes[0])
  destination = tmp_path / "cache" / "tokenizer_imagenet256"
  assert destination.read_bytes() == data
  assert calls == [checkpoints.CHECKPOINT_URLS["tokenizer_imagenet256"]]
  assert list((tmp_path / "cache").iterdir()) == [destination]
  assert params["quantizer"]["codebook"].shape == (64, 32)
  # Second use: served from the cache, no network.
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  assert checkpoints.fetch_checkpoint("tokenizer_imagenet256") == destination


@pytest.mark.parametrize("mode", ["connection_reset", "short_body"])
def test_interrupted_download_leaves_nothing(monkeypatch, tmp_path, tiny_files, mode):
  data = tiny_files[0].read_bytes()
  if mode == "connection_reset":
    response = _FakeResponse(data, fail_after=len(data) // 2)
  else:  # the server closes early: fewer bytes than Content-Length
    response = _FakeResponse(data[: len(data) // 2], claimed_length=len(data))
  monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: response)
  with pytest.raises(CheckpointError, match="tokenizer_imagenet256"):
    checkpoints.fetch_checkpoint("tokenizer_imagenet256", cache_dir=str(tmp_path))
  assert list(tmp_path.iterdir()) == []


def test_load_maskgit_with_local_files_and_defaults(tiny_files, monkeypatch, tmp_path):
  config = get_config("tiny")
  tok, tr = checkpoints.load_maskgit(config, str(tiny_files[0]), str(tiny_files[1]))
  assert tok["quantizer"]["codebook"].shape == (64, 32)
  assert tr["Embed_0"]["word_embeddings"]["embedding"].shape == (75, 64)
  with pytest.raises(CheckpointError, match="no official checkpoint"):
    checkpoints.load_maskgit(config)
  # ImageNet configs default to the official names (here: offline -> clear error).
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(CheckpointError, match="tokenizer_imagenet512_checkpoint"):
    checkpoints.load_maskgit(get_config("imagenet512"), cache_dir=str(tmp_path))
