"""`python -m lr_jax.weights download` against a loopback imitation of the Hugging Face hub,
`LR_JAX_WEIGHTS` pointing every loader at the folder it fills, and `--help` of every command.

The server (127.0.0.1, a port of its own) answers the two requests `hf_hub_download` makes,
HEAD and GET of `/<repo>/resolve/<revision>/<file>`, from files of tests/fixtures: the tiny
DINO and CLIP saved as safetensors, and an aMUSEd folder of small files. As on the real hub,
facebook/dino-vitb16 has no model.safetensors on its main branch, only at refs/pr/7.
Nothing else touches the network.
"""
import hashlib
import http.server
import os
import pathlib
import threading
import urllib.parse

import pytest

from lr_jax import weights
from lr_jax.encoders import hf_files
from tests import cli_helpers

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
AMUSED_FILES = {  # the aMUSEd layout from the fixtures (download only: not one model)
    "vqvae": FIXTURES / "amused/vq_tiny/vqvae",
    "transformer": FIXTURES / "amused/transformer_plain/transformer",
    "text_encoder": FIXTURES / "amused/text_tiny/text_encoder",
    "tokenizer": FIXTURES / "amused/text_tiny/tokenizer",
}


def _hub_files() -> dict:
  """{(repo, revision): {path: bytes}}."""
  dino = {p.name: p.read_bytes() for p in (FIXTURES / "encoders/dino_tiny").iterdir()}
  clip = {p.name: p.read_bytes() for p in (FIXTURES / "encoders/clip_tiny").iterdir()
          if p.is_file()}
  amused = {f"{sub}/{p.name}": p.read_bytes()
            for sub, folder in AMUSED_FILES.items() for p in folder.iterdir()}
  return {("facebook/dino-vitb16", "main"): {"config.json": dino["config.json"]},
          ("facebook/dino-vitb16", "refs/pr/7"): dino,
          ("openai/clip-vit-base-patch16", "main"): clip,
          ("amused/amused-256", "main"): amused}


class _Hub(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  files: dict = {}
  log: list = []

  def _answer(self, body: bool):
    parts = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/").split("/")
    found = None
    if len(parts) > 4 and parts[2] == "resolve":
      repo = "/".join(parts[:2])
      rest = parts[3:]
      for revision in (rest[0], "/".join(rest[:3])):   # main, or refs/pr/N
        name = "/".join(rest[len(revision.split("/")):])
        if (repo, revision) in self.files and name in self.files[(repo, revision)]:
          found = (repo, revision, self.files[(repo, revision)][name])
          break
    self.log.append((self.command, self.path, found is not None))
    if found is None:
      self.send_response(404)
      self.send_header("X-Error-Code", "EntryNotFound")
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    repo, revision, data = found
    self.send_response(200)
    self.send_header("X-Repo-Commit", hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest())
    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if body:
      self.wfile.write(data)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._answer(body=False)

  def do_GET(self):  # pylint: disable=invalid-name
    self._answer(body=True)

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def hub():
  _Hub.files = _hub_files()
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}", _Hub.log
  server.shutdown()


def _online_env(cli_env, endpoint, tmp_path):
  """The CLI environment with the hub at `endpoint` (this test's server, nothing else)."""
  env = {k: v for k, v in cli_env.items() if k != "HF_HUB_OFFLINE"}
  return dict(env, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"),
              NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
              HF_HUB_DISABLE_TELEMETRY="1")


AMUSED_OFFICIAL = ("--config", "configs/amused_tiny.py", "--config.models=official")


def test_download_to_a_folder_then_every_loader_reads_it(cli_env, hub, tmp_path, monkeypatch):
  endpoint, log = hub
  target = tmp_path / "carry"
  proc = cli_helpers.run(_online_env(cli_env, endpoint, tmp_path), "lr_jax.weights",
                         "download", *AMUSED_OFFICIAL, "--to", str(target), timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[1/3] DINO facebook/dino-vitb16" in proc.stdout
  assert "[3/3] editor amused" in proc.stdout and "MB checked" in proc.stdout
  assert f"export LR_JAX_WEIGHTS={target}" in proc.stdout
  for name in ("dino-vitb16/model.safetensors", "clip-vit-base-patch16/tokenizer.json",
               "amused-256/vqvae/diffusion_pytorch_model.safetensors",
               "amused-256/tokenizer/tokenizer.json"):
    assert (target / name).is_file(), name
  # DINO's weights came from the pull request, as on the hub.
  assert any("dino-vitb16/resolve/refs%2Fpr%2F7/model.safetensors" in path
             for method, path, ok in log if ok)
  # Offline, LR_JAX_WEIGHTS points the loaders at the folder.
  from lr_jax.encoders import hf_weights  # pylint: disable=g-import-not-at-top
  from lr_jax.generators.amused import hub as amused_hub  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv(hf_files.WEIGHTS_ENV, str(target))
  dino = hf_weights.load_dino("facebook/dino-vitb16")
  clip = hf_weights.load_clip("openai/clip-vit-base-patch16")
  assert dino.params and clip.params and clip.tokenizer is not None
  assert amused_hub.resolve_amused("amused/amused-256") == target / "amused-256"


def test_download_into_the_caches(cli_env, hub, tmp_path):
  endpoint, _ = hub
  env = _online_env(cli_env, endpoint, tmp_path)
  proc = cli_helpers.run(env, "lr_jax.weights", "download", *AMUSED_OFFICIAL, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "the caches the loaders read" in proc.stdout
  cache = tmp_path / "hf_home" / "hub"
  for repo in ("facebook--dino-vitb16", "openai--clip-vit-base-patch16", "amused--amused-256"):
    assert (cache / f"models--{repo}").is_dir(), repo


def test_download_offline_says_so(cli_env, tmp_path):
  proc = cli_helpers.run(cli_env, "lr_jax.weights", "download", *AMUSED_OFFICIAL,
                         timeout=120)
  cli_helpers.assert_clean_error(proc, "HF_HUB_OFFLINE is set", "machine with network")


def test_fetch_help_lines_are_short_and_start_with_the_command():
  from lr_jax import run_settings  # pylint: disable=g-import-not-at-top
  for name in ("maskgit_imagenet256", "amused"):
    path = str(cli_helpers.REPO / "configs" / f"{name}.py")
    run = run_settings.parse(_load_config(path))
    text = weights.fetch_help(run)
    lines = text.splitlines()
    assert lines[1].strip() == f"python -m lr_jax.weights download --config configs/{name}.py"
    assert max(len(line) for line in lines) < 100, text
    assert "--revision refs/pr/7" in text and "--local-dir weights/dino-vitb16" in text


def _load_config(path: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


COMMANDS = ("lr_jax.edit", "lr_jax.train", "lr_jax.evaluate", "lr_jax.bench",
            "lr_jax.weights")


@pytest.mark.parametrize("module", COMMANDS)
def test_help_exits_0_and_lists_the_config_fields(cli_env, module):
  proc = cli_helpers.run(cli_env, module, "--config", "configs/tiny.py", "--help", timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--config.seed=0" in proc.stdout and "--config.models='tiny'" in proc.stdout
  assert "error:" not in proc.stderr
  if module != "lr_jax.weights":   # required flags missing: the help still comes
    proc = cli_helpers.run(cli_env, module, "--help", timeout=120)
    assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr[-2000:]


def test_help_of_the_editor_benchmark(cli_env):
  """It has no --config (each editor's own): its flags, exit 0."""
  proc = cli_helpers.run(cli_env, "lr_jax.editor_bench", "--help", timeout=120)
  assert proc.returncode == 0 and "--[no]tiny" in proc.stdout, proc.stderr[-2000:]
