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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_cleared(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and any(c.cell_type == "markdown" for c in nb.cells)
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    # No logic that exists only in a notebook: functions live in the package.
    assert "\ndef " not in "\n" + cell.source and "\nclass " not in "\n" + cell.source
  first = code[0].source
  assert 'os.environ.get("LR_JAX_TINY") == "1"' in first and "REPO_URL =" in first
  assert "setup_tpu" not in json.dumps(nb) and "tensorflow" not in json.dumps(nb).lower()


def test_edit_notebook_has_form_fields():
  source = "\n".join(c.source for c in _read("edit").cells if c.cell_type == "code")
  for field in ("PROMPT", "REFINE_STEPS", "SEED"):
    assert any(line.startswith(f"{field} =") and "#@param" in line
               for line in source.splitlines()), field
  assert "jax.devices()" in source and "inference.run_edit" in source
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
  assert [p.name for p in sheets] == ["000_chelsea_a_lion_sheet.png",
                                      "001_chelsea_cat_face_sheet.png"]
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
  config.maskgit.tokenizer, config.maskgit.transformer = str(tmp_path / "tok"), str(tmp_path / "tr")
  config.dino.repo, config.clip.repo = str(tmp_path / "dino"), str(tmp_path / "clip")
  paths = notebook.download_weights(config)
  assert paths == {"maskgit_tokenizer": tmp_path / "tok", "maskgit_transformer": tmp_path / "tr",
                   "dino": tmp_path / "dino", "clip": tmp_path / "clip"}
  assert notebook.download_weights(notebook.load_config("tiny")) == {}


def test_training_set_and_single_examples(tmp_path):
  from skimage import data  # pylint: disable=g-import-not-at-top
  from lr_jax import manifest  # pylint: disable=g-import-not-at-top
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
