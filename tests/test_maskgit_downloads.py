"""MaskGIT downloads from a loopback HTTP server: only verified files enter the cache."""
import http.server
import shlex
import threading
import urllib.error
import urllib.request

import flax.serialization
import numpy as np
import pytest

from maskgit import checkpoints
from maskgit.checkpoints import CheckpointError
from maskgit.configs import get_config

NAME = "tokenizer_imagenet256"
HTML = b"<!DOCTYPE html><html><body><h1>Quota exceeded</h1></body></html>\n"


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
  folder = fixtures_dir / "maskgit_official_tiny"
  tok, tr = (folder / "tokenizer_tiny.msgpack", folder / "transformer_tiny.msgpack")
  return dict(tok=tok, tr=tr, tok_bytes=tok.read_bytes(),
              shapes=checkpoints.param_shapes(get_config("tiny")))


@pytest.fixture(scope="module")
def server(tiny):
  """127.0.0.1:<free port>; paths /truncated, /html, /valid, /wrong_tree."""
  body = tiny["tok_bytes"]
  routes = {  # path: (content type, body, send Content-Length)
      "/truncated": ("application/octet-stream", body[: len(body) // 2], False),
      "/html": ("text/html; charset=utf-8", HTML, True),
      "/valid": ("application/octet-stream", body, True),
      "/wrong_tree": ("application/octet-stream", tiny["tr"].read_bytes(), True),
  }
  requests = []

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes

    def do_GET(self):  # pylint: disable=invalid-name
      requests.append(self.path)
      if self.path not in routes:
        self.send_error(404)
        return
      content_type, data, with_length = routes[self.path]
      self.send_response(200)
      self.send_header("Content-Type", content_type)
      if with_length:
        self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    yield dict(url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=requests)
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture()
def serve(server, monkeypatch):
  """serve(route): the official name NAME now downloads from the loopback route."""
  monkeypatch.setenv("no_proxy", "127.0.0.1")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1")

  def point(route, name=NAME):
    url = server["url"] + route
    monkeypatch.setitem(checkpoints.CHECKPOINT_URLS, name, url)
    return url
  return point


def _no_network(url, *args, **kwargs):
  raise urllib.error.URLError("network is unreachable")


@pytest.mark.parametrize("route,words", [
    ("/truncated", ["without a Content-Length", "cut short", "msgpack"]),
    ("/html", ["text/html", "page", "msgpack"]),
])
@pytest.mark.parametrize("api", ["fetch_checkpoint", "load_params"])
def test_bad_download_is_not_cached(serve, tmp_path, tiny, route, words, api):
  url = serve(route)
  cache = tmp_path / "cache"
  with pytest.raises(CheckpointError) as info:
    if api == "fetch_checkpoint":
      checkpoints.fetch_checkpoint(NAME, cache_dir=str(cache))
    else:
      checkpoints.load_params(NAME, tiny["shapes"][0], cache_dir=str(cache))
  message = str(info.value)
  destination = cache / NAME
  assert url in message and str(destination) in message and "nothing was saved" in message
  for word in words:
    assert word in message, message
  assert ".partial" not in message and "\n" not in message
  assert not destination.exists()
  assert list(cache.iterdir()) == []  # no .partial left behind


def test_wrong_tree_rejected_before_rename(serve, tmp_path, tiny):
  """load_params checks the shape tree of the temp file, so it never enters the cache."""
  url = serve("/wrong_tree")
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_params(NAME, tiny["shapes"][0], cache_dir=str(tmp_path))
  message = str(info.value)
  assert url in message and "does not match the model" in message
  assert "missing" in message and "\n" not in message
  assert list(tmp_path.iterdir()) == []


def test_callers_validator_runs_before_rename(serve, tmp_path):
  serve("/valid")
  seen = []

  def refuse(path):
    seen.append(path.name)
    raise CheckpointError(f"{path} is not the file I want")

  with pytest.raises(CheckpointError, match="the download is not the file I want"):
    checkpoints.fetch_checkpoint(NAME, cache_dir=str(tmp_path), validate=refuse)
  assert seen and seen[0].endswith(".partial")
  assert list(tmp_path.iterdir()) == []


def test_valid_download_is_cached_and_loads(serve, server, tmp_path, tiny, monkeypatch):
  serve("/valid")
  params = checkpoints.load_params(NAME, tiny["shapes"][0], cache_dir=str(tmp_path))
  destination = tmp_path / NAME
  assert destination.read_bytes() == tiny["tok_bytes"]
  assert list(tmp_path.iterdir()) == [destination]
  assert params["quantizer"]["codebook"].shape == (64, 32)
  # Served from the cache afterwards, without the network.
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  again = checkpoints.load_params(NAME, tiny["shapes"][0], cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again["quantizer"]["codebook"],
                                params["quantizer"]["codebook"])


def test_load_maskgit_checks_downloads(serve, tmp_path, tiny):
  """Both files fetched, each verified against its model before entering the cache."""
  serve("/valid", "tokenizer_imagenet256")
  serve("/html", "maskgit_imagenet256")
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_maskgit(get_config("tiny"), "tokenizer_imagenet256",
                             "maskgit_imagenet256", cache_dir=str(tmp_path))
  message = str(info.value)
  assert "maskgit_imagenet256" in message and "text/html" in message
  assert list(tmp_path.iterdir()) == [tmp_path / "tokenizer_imagenet256"]


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "wrong_tree"])
def test_corrupt_cached_file_names_the_file_to_delete(tmp_path, tiny, corruption,
                                                     monkeypatch):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  cached = tmp_path / NAME
  if corruption == "truncated":
    cached.write_bytes(tiny["tok_bytes"][:1000])
  elif corruption == "garbage":
    cached.write_bytes(HTML)
  else:
    cached.write_bytes(tiny["tr"].read_bytes())
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_maskgit(get_config("tiny"), NAME, str(tiny["tr"]),
                             cache_dir=str(tmp_path))
  first_line = str(info.value).splitlines()[0]
  assert f"cached checkpoint {cached} " in first_line
  assert f"delete {cached} and rerun to download it again" in first_line
  assert cached.exists()  # reported, not removed behind the user's back


def test_bad_explicit_file_is_called_invalid_not_a_cache_entry(tmp_path, tiny):
  bad = tmp_path / "mine.msgpack"
  bad.write_bytes(tiny["tok_bytes"][:1000])
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_params(str(bad), tiny["shapes"][0])
  message = str(info.value)
  assert message.startswith(f"{bad} is not a valid checkpoint")
  assert "delete" not in message and "cached" not in message
  plain = tmp_path / "plain.msgpack"
  plain.write_bytes(flax.serialization.msgpack_serialize({"weights": np.zeros(3)}))
  with pytest.raises(CheckpointError, match="is not a valid checkpoint.*'params'"):
    checkpoints.load_params(str(plain), tiny["shapes"][0])


def test_offline_error_has_paste_ready_commands(monkeypatch, tmp_path):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(CheckpointError) as info:
    checkpoints.load_maskgit(get_config("imagenet256"), cache_dir=str(tmp_path / "c d"))
  message = str(info.value)
  assert "\n" not in message
  command = message.split("`")[1]
  words = shlex.split(command)
  folder = str(tmp_path / "c d")
  assert words[:3] == ["mkdir", "-p", folder]
  for name in ("tokenizer_imagenet256", "maskgit_imagenet256"):
    url = checkpoints.CHECKPOINT_URLS[name]
    assert f"curl -fL -o {shlex.quote(f'{folder}/{name}')} {url}" in command
  assert words.count("curl") == 2 and words.count("&&") == 2
  assert list(tmp_path.iterdir()) == [tmp_path / "c d"]
