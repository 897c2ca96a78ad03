"""The Colab notebooks: valid nbformat without outputs, and their tiny path runs offline.

Each notebook runs in a fresh python3 kernel (nbclient) with LR_JAX_TINY=1, in a temporary
working folder, with every non-loopback socket connection refused. Both kernels share one
temporary JAX compilation cache, so the second notebook reuses the first one's compiles.
"""
import json
import os
import pathlib

import nbformat
import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ("edit", "train")

# Runs first in each kernel: any attempt to reach another machine fails loudly.
_NO_NETWORK = '''
import socket as _socket
_real_connect = _socket.socket.connect
def _local_only(sock, address):
  host = address[0] if isinstance(address, tuple) else address
  if sock.family in (_socket.AF_INET, _socket.AF_INET6) and host not in (
      "127.0.0.1", "::1", "localhost"):
    raise OSError(f"test forbids network access (tried {address})")
  return _real_connect(sock, address)
_socket.socket.connect = _local_only
_socket.socket.connect_ex = _local_only
'''


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(str(REPO / "colabs" / f"{name}.ipynb"), as_version=4)


def _install_cell(nb) -> nbformat.NotebookNode:
  [cell] = [c for c in nb.cells if c.cell_type == "code" and "install(REPO_URL" in c.source]
  return cell


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_cleared(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and any(c.cell_type == "markdown" for c in nb.cells)
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    # No logic that exists only in a notebook: functions live in the package (the install
    # cell's are copies of lr_jax.notebook's: test_install_cell_copies_the_package_functions).
    if cell is not _install_cell(nb):
      assert "\ndef " not in "\n" + cell.source and "\nclass " not in "\n" + cell.source
  first = code[0].source
  assert 'os.environ.get("LR_JAX_TINY") == "1"' in first and "REPO_URL =" in first
  assert "setup_tpu" not in json.dumps(nb) and "tensorflow" not in json.dumps(nb).lower()


def test_edit_notebook_has_form_fields():
  source = "\n".join(c.source for c in _read("edit").cells if c.cell_type == "code")
  for field in ("PROMPT", "REFINE_STEPS", "SEED"):
    assert any(line.startswith(f"{field} =") and "#@param" in line
               for line in source.splitlines()), field
  assert "jax.devices()" in source and "api.load(" in source and "editor.edit(" in source
  assert "inference.run_edit" not in source   # the edit notebook uses the Python API
  assert "nb.upload_image" in source and "nb.download_weights" in source


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """Runs both notebooks' tiny path; returns {name: (executed notebook, its folder)}."""
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  cache = tmp_path_factory.mktemp("jax_cache")
  env = {
      "LR_JAX_TINY": "1", "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
      "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in os.environ.get(
          "PYTHONPATH", "").split(os.pathsep) if p]),
      "JAX_COMPILATION_CACHE_DIR": str(cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "MPLBACKEND": "Agg",
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernels inherit this process's environment
  results = {}
  try:
    for name in NOTEBOOKS:
      nb = _read(name)
      nb.cells.insert(0, nbformat.v4.new_code_cell(_NO_NETWORK))
      workdir = tmp_path_factory.mktemp(name)
      NotebookClient(nb, timeout=300, kernel_name="python3",
                     resources={"metadata": {"path": str(workdir)}}).execute()
      results[name] = (nb, workdir)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return results


def _shown_pictures(nb) -> int:
  return sum("image/png" in out.get("data", {}) for cell in nb.cells
             for out in cell.get("outputs", []))


def _text(nb) -> str:
  return "".join(out.get("text", "") + "".join(out.get("data", {}).get("text/plain", ""))
                 for cell in nb.cells for out in cell.get("outputs", []))


def test_edit_notebook_runs_tiny(executed):
  nb, folder = executed["edit"]
  sheets = sorted((folder / "edits").glob("*_sheet.png"))
  # Names carry the strategy (search without a trained RGN) and the seed.
  assert [p.name for p in sheets] == ["000_chelsea_a_lion_search_seed0_sheet.png",
                                      "000_chelsea_cat_face_search_seed0_sheet.png"]
  custom = sorted((folder / "edits_custom").glob("*_edited.png"))
  assert len(custom) == 1
  with Image.open(custom[0]) as edited, Image.open(folder / "samples" / "chelsea.png") as cat:
    assert edited.size == cat.size  # composited back at the input's resolution
  for sheet in sheets:
    with Image.open(sheet) as im:
      assert im.size[0] > 400 and im.size[1] > 300
  # Sample sheets (2), the chosen image, the custom sheet and the edited photo.
  assert _shown_pictures(nb) == 5
  assert "tiny config: no weights to download" in _text(nb)
  assert "CpuDevice" in _text(nb)


def test_train_notebook_runs_tiny(executed):
  nb, folder = executed["train"]
  workdir = folder / "runs" / "rgn_tiny"
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # 3 examples x 2 epochs
  assert (workdir / "checkpoints" / "6").is_dir()
  assert (folder / "loss_curve.png").stat().st_size > 5000
  text = _text(nb)
  assert "largest |restored - trained| = 0.0" in text
  assert "resumed at step 6" in text
  trained = sorted((folder / "edits_trained").glob("*.json"))
  assert len(trained) == 3
  assert all(json.loads(p.read_text())["rgn_checkpoint"] == "runs/rgn_tiny" for p in trained)
  assert _shown_pictures(nb) == 4  # the loss curves and three sheets


# -- lr_jax.notebook helpers (fast, no kernel) ----------------------------------------

def test_load_config_by_path_matches_the_repo_file(tmp_path):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  assert notebook.load_config("tiny").to_dict() == tiny.get_config().to_dict()
  assert notebook.find_config_file("tiny") == REPO / "configs" / "tiny.py"
  # An explicit repo_dir wins over the package's own checkout.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      "  return ml_collections.ConfigDict({'marker': arg or 'mine'})\n")
  assert notebook.load_config("tiny", repo_dir=tmp_path).marker == "mine"
  assert notebook.load_config("tiny", repo_dir=tmp_path, arg="x").marker == "x"


def test_load_config_errors(tmp_path):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  with pytest.raises(notebook.ConfigNotFoundError, match="no_such_config.py not found"):
    notebook.load_config("no_such_config", repo_dir=tmp_path)
  with pytest.raises(ValueError, match="bare name"):
    notebook.load_config("configs/tiny.py")


def test_download_weights_uses_local_files_without_network(tmp_path):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  config = notebook.load_config("maskgit_imagenet256")
  for name in ("tok", "tr"):
    (tmp_path / name).write_bytes(b"x")
  for name, files in (("dino", ("config.json", "model.safetensors")),
                      ("clip", ("config.json", "model.safetensors"))):
    (tmp_path / name).mkdir()
    for f in files:
      (tmp_path / name / f).write_text("{}")
  config.editor.tokenizer, config.editor.transformer = str(tmp_path / "tok"), str(tmp_path / "tr")
  config.dino.repo, config.clip.repo = str(tmp_path / "dino"), str(tmp_path / "clip")
  paths = notebook.download_weights(config)
  assert paths == {"maskgit_tokenizer": tmp_path / "tok", "maskgit_transformer": tmp_path / "tr",
                   "dino": tmp_path / "dino", "clip": tmp_path / "clip"}
  assert notebook.download_weights(notebook.load_config("tiny")) == {}


def test_setup_picks_the_editors_configs(tmp_path, capsys):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  assert notebook.setup(True, editor="amused").editor.name == "amused"
  assert "config amused_tiny: tiny random models" in capsys.readouterr().out
  config = notebook.setup(False, editor="amused")
  assert (config.editor.name, config.editor.resolution, config.models) == ("amused", 256, "official")
  assert notebook.setup(True).to_dict() == notebook.load_config("tiny").to_dict()
  assert notebook.setup(False).editor.name == "maskgit"
  with pytest.raises(ValueError, match="editor must be one of"):
    notebook.setup(True, editor="muse")
  # aMUSEd's files: one folder in the hub layout (a local one here).
  for sub, files in (("vqvae", ("config.json", "diffusion_pytorch_model.safetensors")),
                     ("transformer", ("config.json", "diffusion_pytorch_model.safetensors")),
                     ("text_encoder", ("config.json", "model.safetensors")),
                     ("tokenizer", ("tokenizer.json",))):
    (tmp_path / "amused" / sub).mkdir(parents=True)
    for f in files:
      (tmp_path / "amused" / sub / f).write_text("{}")
  config.editor.repo = str(tmp_path / "amused")
  from lr_jax.editors import amused  # pylint: disable=g-import-not-at-top
  assert amused.weight_files(config) == {"amused": tmp_path / "amused"}


def test_training_set_and_single_examples(tmp_path):
  from skimage import data  # pylint: disable=g-import-not-at-top
  from lr_jax.files import manifest  # pylint: disable=g-import-not-at-top
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  examples = manifest.read_manifest(notebook.write_training_set(tmp_path))
  assert [(e.image_path.name, e.prompt) for e in examples] == [
      ("chelsea.png", "a lion"), ("chelsea.png", "a tiger"), ("coffee.png", "a teapot")]
  with Image.open(tmp_path / "coffee.png") as im:
    assert (np.asarray(im) == data.coffee()).all()
  with pytest.raises(ValueError, match="no image 'nope'"):
    notebook.write_training_set(tmp_path, [("nope", "a lion", "x")])
  [one] = notebook.example_for(tmp_path / "coffee.png", " a teapot ", "")
  assert one.prompt == "a teapot" and one.source_prompt is None
  with pytest.raises(manifest.ManifestError, match="does not exist"):
    notebook.example_for(tmp_path / "missing.png", "a lion")
  with pytest.raises(manifest.ManifestError, match="non-empty"):
    notebook.example_for(tmp_path / "coffee.png", "  ")


def test_upload_image_outside_colab(tmp_path, capsys):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  picture = tmp_path / "p.png"
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(picture)
  assert notebook.upload_image(tmp_path / "up", fallback=picture) == picture
  with pytest.raises(FileNotFoundError):
    notebook.upload_image(tmp_path / "up", fallback=tmp_path / "missing.png")
  with pytest.raises(ValueError, match="IMAGE_PATH"):
    notebook.upload_image(tmp_path / "up")
  notebook.show(picture)  # no IPython kernel here: prints instead of displaying
  notebook.show(np.zeros((4, 5, 3)))
  assert "[picture]" in capsys.readouterr().out
  with pytest.raises(ValueError, match="H, W, 3"):
    notebook.show(np.zeros((4, 5)))


def test_max_param_difference():
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  a = {"w": np.array([1.0, 2.0]), "b": {"c": np.array(3.0)}}
  b = {"w": np.array([1.0, 2.5]), "b": {"c": np.array(2.0)}}
  assert notebook.max_param_difference(a, b) == 1.0
  assert notebook.max_param_difference(a, a) == 0.0
  with pytest.raises(ValueError, match="trees differ"):
    notebook.max_param_difference(a, {"w": a["w"]})


# -- install cell: repository from Colab's URL, JAX extra of the runtime (no kernel) --------

COLAB = "https://colab.research.google.com/github"
# The session record of Colab's Jupyter server names the notebook's source URL-encoded.
SESSIONS = json.dumps([{"name": "edit.ipynb", "type": "notebook", "path": (
    "fileId=https%3A%2F%2Fgithub.com%2Falice%2Flr_jax%2Fblob%2Fdev%2Fcolabs%2Fedit.ipynb")}])


@pytest.mark.parametrize("source, expected", [
    (f"{COLAB}/alice/lr_jax/blob/main/colabs/edit.ipynb", ("alice/lr_jax", "main")),
    (f"{COLAB}/bob-2/lr-jax.fork/blob/feature/colab-fix/colabs/train.ipynb",
     ("bob-2/lr-jax.fork", "feature/colab-fix")),
    (f"{COLAB}/alice/lr_jax/blob/v1.0/notes/edit.ipynb", ("alice/lr_jax", "v1.0")),
    ("https://github.com/alice/lr_jax/blob/main/colabs/edit.ipynb", ("alice/lr_jax", "main")),
    ("https://github.com/alice/lr_jax/tree/release/2", ("alice/lr_jax", "release/2")),
    ("https://github.com/alice/lr_jax.git", ("alice/lr_jax", None)),
    ("https://www.github.com/alice/lr_jax", ("alice/lr_jax", None)),
    (SESSIONS, ("alice/lr_jax", "dev")),
    ("fileId=https://github.com/alice/lr_jax/blob/main/colabs/edit.ipynb\\u0026x=1",
     ("alice/lr_jax", "main")),
    ("https://github.com/OWNER/lr_jax", None),  # the placeholder
    ("https://colab.research.google.com/drive/1AbCdEf", None),
    ("fileId=1AbCdEf", None),
    ("https://colab.research.google.com/gist/alice/0a1b2c/edit.ipynb", None),
    ("https://gist.github.com/alice/0a1b2c", None),
    ("https://gitlab.com/alice/lr_jax", None),
    ("", None),
])
def test_github_repo_from_colab_urls(source, expected):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  if expected is not None:
    expected = (f"https://github.com/{expected[0]}", expected[1])
  assert notebook.github_repo(source) == expected


class _Run:
  """Stands in for subprocess.run: records the commands, fails the one named `fail`."""

  def __init__(self, fail: str | None = None):
    self.commands, self.fail = [], fail

  def __call__(self, command, **kwargs):
    import subprocess  # pylint: disable=g-import-not-at-top
    assert kwargs == {"capture_output": True, "text": True}
    self.commands.append(command)
    failed = self.fail is not None and self.fail in command
    return subprocess.CompletedProcess(command, int(failed), "", "fatal: nope\n" if failed else "")


def test_install_clones_the_repository_colab_opened_the_notebook_from(tmp_path, capsys):
  import sys  # pylint: disable=g-import-not-at-top
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  clone = str(tmp_path / "clone")
  run = _Run()
  target = notebook.install(notebook.PLACEHOLDER_REPO_URL, "auto", clone, opened_from=SESSIONS,
                            runtime="gpu", run=run)
  assert target == f"{clone}[cuda]"
  assert run.commands == [
      ["git", "clone", "-q", "--depth", "1", "--branch", "dev", "https://github.com/alice/lr_jax",
       clone],
      [sys.executable, "-m", "pip", "install", "-q", f"{clone}[cuda]"]]
  out = capsys.readouterr().out
  assert "repository: https://github.com/alice/lr_jax, branch dev (from the GitHub URL" in out
  assert f"$ pip install -q {clone}[cuda]" in out
  # A set REPO_URL wins (its default branch); "auto" follows the runtime; "" adds no extra.
  for runtime, extra in notebook.JAX_EXTRA_FOR_RUNTIME.items():
    run = _Run()
    target = notebook.install("https://example.org/me/lr_jax.git", "auto", clone,
                              opened_from=SESSIONS, runtime=runtime, run=run)
    assert target == clone + (f"[{extra}]" if extra else "")
    assert run.commands[0] == ["git", "clone", "-q", "--depth", "1",
                               "https://example.org/me/lr_jax.git", clone]
  assert notebook.install("https://example.org/r.git", "", clone, runtime="gpu", run=_Run()) == clone
  # A permalink names a commit: a full clone, then a checkout.
  run = _Run()
  sha = "0123456789abcdef0123456789abcdef01234567"
  notebook.install(notebook.PLACEHOLDER_REPO_URL, "tpu", clone, run=run,
                   opened_from=f"{COLAB}/alice/lr_jax/blob/{sha}/colabs/train.ipynb")
  assert run.commands[:2] == [["git", "clone", "-q", "https://github.com/alice/lr_jax", clone],
                              ["git", "-C", clone, "checkout", "-q", sha]]
  assert run.commands[2][-1] == f"{clone}[tpu]"
  # A folder that is a clone already is installed as it is (a rerun after a failed pip).
  (tmp_path / "clone" / ".git").mkdir(parents=True)
  run = _Run()
  notebook.install(notebook.PLACEHOLDER_REPO_URL, "", clone, opened_from=SESSIONS, run=run)
  assert [c[1:4] for c in run.commands] == [["-m", "pip", "install"]]


@pytest.mark.parametrize("opened_from", [
    "", "https://colab.research.google.com/drive/1AbCdEf", "https://gitlab.com/alice/lr_jax",
    json.dumps([{"name": "edit.ipynb", "path": "fileId=1AbCdEf"}])])
def test_install_with_the_placeholder_and_no_github_source_says_what_to_set(opened_from):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  run = _Run()
  with pytest.raises(ValueError) as error:
    notebook.install(notebook.PLACEHOLDER_REPO_URL, "auto", "clone", opened_from=opened_from,
                     runtime="cpu", run=run)
  message = str(error.value)
  assert "\n" not in message and message.count(": ") == 1
  assert message.startswith(f"REPO_URL is still the placeholder {notebook.PLACEHOLDER_REPO_URL}")
  assert "set REPO_URL in the Settings cell" in message
  assert run.commands == []  # no confusing git error: nothing ran


def test_install_failure_is_one_line(tmp_path):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  with pytest.raises(RuntimeError) as error:
    notebook.install(notebook.PLACEHOLDER_REPO_URL, "", str(tmp_path / "c"), opened_from=SESSIONS,
                     run=_Run(fail="clone"))
  assert str(error.value) == ("git clone failed (its message is above): check REPO_URL in the "
                              "Settings cell (now https://github.com/alice/lr_jax, branch dev).")


def test_install_reads_colab_session_record(monkeypatch, tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  asked = []

  def fake_urlopen(address, timeout):
    asked.append((address, timeout))
    return io.BytesIO(SESSIONS.encode())

  monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
  monkeypatch.delenv("COLAB_JUPYTER_IP", raising=False)
  with pytest.raises(ValueError, match="placeholder"):  # not Colab: nothing is asked
    notebook.install(notebook.PLACEHOLDER_REPO_URL, "", "c", run=_Run())
  assert asked == []
  monkeypatch.setenv("COLAB_JUPYTER_IP", "172.28.0.12")
  monkeypatch.setenv("KMP_TARGET_PORT", "9000")
  run = _Run()
  notebook.install(notebook.PLACEHOLDER_REPO_URL, "", str(tmp_path / "c"), run=run)
  assert asked == [("http://172.28.0.12:9000/api/sessions", 5)]
  assert run.commands[0][-2:] == ["https://github.com/alice/lr_jax", str(tmp_path / "c")]

  def unreachable(address, timeout):
    raise OSError("no route to host")

  monkeypatch.setattr(urllib.request, "urlopen", unreachable)
  with pytest.raises(ValueError, match="set REPO_URL in the Settings cell"):
    notebook.install(notebook.PLACEHOLDER_REPO_URL, "", "c", run=_Run())


@pytest.fixture
def no_libtpu(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))


def test_detect_runtime_under_faked_environments(tmp_path, monkeypatch, no_libtpu):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  empty, tools, dev = tmp_path / "empty", tmp_path / "bin", tmp_path / "dev"
  for d in (empty, tools, dev):
    d.mkdir()
  smi = tools / "nvidia-smi"
  smi.write_text("#!/bin/sh\necho fake\n")
  smi.chmod(0o755)
  detect = lambda **env: notebook.detect_runtime({"PATH": str(empty), **env}, dev=str(dev))
  assert detect() == "cpu"
  assert detect(COLAB_GPU="0") == "cpu" and detect(COLAB_GPU="") == "cpu"
  assert detect(PATH=str(tools)) == "gpu"
  assert detect(COLAB_GPU="1") == "gpu"
  assert detect(PATH=str(tools), TPU_NAME="local") == "gpu"  # nvidia-smi decides first
  for name in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
    assert detect(**{name: "10.0.0.2:8470"}) == "tpu"
  (dev / "accel0").touch()
  assert detect() == "tpu"
  (dev / "accel0").unlink()
  (dev / "vfio").mkdir()
  (dev / "vfio" / "vfio").touch()  # the vfio control file alone is no TPU
  assert detect() == "cpu"
  (dev / "vfio" / "0").touch()
  assert detect() == "tpu"
  (dev / "vfio" / "0").unlink()
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # libtpu installed
  assert detect() == "tpu"


def test_check_accelerator_names_the_fix_when_jax_misses_the_accelerator(capsys):
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top
  for runtime, package in (("gpu", "jax[cuda12]"), ("tpu", "jax[tpu]")):
    with pytest.raises(notebook.AcceleratorUnusedError) as error:
      notebook.check_accelerator(runtime, "cpu", environ={})
    message = str(error.value)
    assert "\n" not in message and f"this runtime has a {runtime.upper()}" in message
    assert "runs on the CPU" in message and f'!pip install -U "{package}"' in message
    assert "Restart session" in message
    assert notebook.check_accelerator(runtime, runtime, environ={}) == runtime
  assert notebook.check_accelerator("cpu", "cpu", environ={}) == "cpu"
  # JAX_PLATFORMS set: the user chose the CPU (the notebook test does): a note, no error.
  assert notebook.check_accelerator("gpu", "cpu", environ={"JAX_PLATFORMS": "cpu"}) == "cpu"
  assert "JAX_PLATFORMS='cpu' runs JAX on the CPU" in capsys.readouterr().out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_copies_the_package_functions(name, tmp_path, capsys):
  import ast  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  from lr_jax import notebook  # pylint: disable=g-import-not-at-top

  def without_docstring(function: ast.FunctionDef) -> str:
    function.body = function.body[1:] if isinstance(function.body[0], ast.Expr) else function.body
    return ast.dump(function)

  nb = _read(name)
  cell = _install_cell(nb).source
  assert cell.startswith("#@title") and "!" not in "".join(  # pure Python, no shell escapes
      line.lstrip()[:1] for line in cell.splitlines())
  defined = [n for n in ast.parse(cell).body if isinstance(n, ast.FunctionDef)]
  assert tuple(n.name for n in defined) == notebook.BOOTSTRAP_FUNCTIONS
  for node in defined:
    package = ast.parse(textwrap.dedent(inspect.getsource(getattr(notebook, node.name)))).body[0]
    assert ast.dump(node) == without_docstring(package), f"{node.name}: rerun tools/make_notebooks.py"
  # The copies run on their own (standard library only, no module names); with lr_jax
  # importable the cell installs nothing.
  settings = next(c.source for c in nb.cells if c.cell_type == "code")
  namespace = {}
  exec(settings + "\n" + cell, namespace)  # pylint: disable=exec-used
  assert namespace["REPO_URL"] == notebook.PLACEHOLDER_REPO_URL and namespace["JAX_EXTRA"] == "auto"
  assert inspect.signature(namespace["install"]).parameters["placeholder"].default == (
      notebook.PLACEHOLDER_REPO_URL)
  assert capsys.readouterr().out == ""
  run = _Run()
  namespace["install"](namespace["REPO_URL"], "auto", str(tmp_path / "c"), opened_from=SESSIONS,
                       runtime="tpu", run=run)
  assert run.commands[-1][-1] == f"{tmp_path / 'c'}[tpu]"
