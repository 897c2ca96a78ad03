"""The Colab notebooks: valid nbformat without outputs, and their tiny path runs offline.

Each notebook runs in a fresh python3 kernel (nbclient) with LR_JAX_TINY=1, in a temporary
working folder, with every non-loopback socket connection refused. Both kernels share one
temporary JAX compilation cache, so the second notebook reuses the first one's compiles.
"""
import json
import os
import pathlib

import nbformat
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
  assert "jax.devices()" in source and "editor.run_edit" in source
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
