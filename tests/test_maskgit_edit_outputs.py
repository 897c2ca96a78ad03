"""Where `python -m maskgit.edit` writes, checked before any model is loaded."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from maskgit import checkpoints, edit, editing

REPO = pathlib.Path(__file__).parents[1]


@pytest.fixture()
def photo(tmp_path):
  path = tmp_path / "photo.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(path)
  return path


@pytest.fixture()
def fake_model(monkeypatch):
  """No checkpoints, no compile: the editor paints every box mid-gray."""
  calls = []

  def load_maskgit(*args, **kwargs):
    calls.append("load")
    return None, None

  def make_editor(config, edit_config):
    def editor(tok, tr, images, boxes, labels, rng):
      batch, count = boxes.shape[:2]
      size = images.shape[1]
      return {"raw": np.full((batch, count, size, size, 3), 0.5, np.float32),
              "pixel_mask": np.ones((batch, count, size, size), np.float32)}
    return editor

  monkeypatch.setattr(checkpoints, "load_maskgit", load_maskgit)
  monkeypatch.setattr(editing, "make_editor", make_editor)
  return calls


@pytest.fixture()
def no_compute(monkeypatch):
  """Fails the test if the image is read or a model loaded."""
  def refuse(*args, **kwargs):
    raise AssertionError("the output should have been refused before this")
  monkeypatch.setattr(edit, "load_image", refuse)
  monkeypatch.setattr(checkpoints, "load_maskgit", refuse)


def _edit(photo, out, *extra, boxes=("0,0,8,8",)):
  return edit.cli(["edit", f"--image={photo}", *[f"--box={b}" for b in boxes],
                   "--label=1", "--config=tiny", f"--out={out}", *extra])


def _one_error_line(capsys):
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err
  return lines[0]


def _is_png(path):
  with Image.open(path) as image:
    return image.format == "PNG" and image.size == (48, 40)


@pytest.mark.parametrize("boxes,names", [
    (["0,0,8,8"], ["photo_edited.png"]),
    (["0,0,8,8", "10,10,8,8"], ["photo_edited_0.png", "photo_edited_1.png"]),
])
def test_existing_folder_gets_named_files_inside(photo, tmp_path, fake_model, capsys,
                                                 boxes, names):
  folder = tmp_path / "results"
  folder.mkdir()
  assert _edit(photo, folder, boxes=boxes) == 0, capsys.readouterr().err
  assert sorted(p.name for p in folder.iterdir()) == names  # no temp files left
  assert all(_is_png(folder / name) for name in names)
  assert not (tmp_path / "results.png").exists()


def test_existing_file_refused(photo, tmp_path, no_compute, capsys):
  out = tmp_path / "out.png"
  out.write_bytes(b"an earlier result")
  assert _edit(photo, out) == 1
  line = _one_error_line(capsys)
  assert str(out) in line and "--overwrite" in line
  assert out.read_bytes() == b"an earlier result"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "photo.png"]


def test_overwrite_replaces_existing_file(photo, tmp_path, fake_model, capsys):
  out = tmp_path / "out.png"
  out.write_bytes(b"an earlier result")
  assert _edit(photo, out, "--overwrite") == 0, capsys.readouterr().err
  assert _is_png(out)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "photo.png"]


def test_several_existing_files_in_one_line(photo, tmp_path, no_compute, capsys):
  for k in range(2):
    (tmp_path / f"out_{k}.png").write_bytes(b"old")
  assert _edit(photo, tmp_path / "out.png", boxes=("0,0,8,8", "10,10,8,8")) == 1
  line = _one_error_line(capsys)
  assert "out_0.png" in line and "out_1.png" in line and "--overwrite" in line


def test_symlink_at_output_name(photo, tmp_path, fake_model, monkeypatch, capsys):
  target = tmp_path / "precious.png"
  target.write_bytes(b"not to be touched")
  out = tmp_path / "out.png"
  out.symlink_to(target)
  with monkeypatch.context() as patch:
    patch.setattr(edit, "load_image", lambda *a: pytest.fail("image read"))
    assert _edit(photo, out) == 1
  line = _one_error_line(capsys)
  assert fake_model == []  # refused before any model was loaded
  assert "symbolic link" in line and "--overwrite" in line and str(out) in line
  assert out.is_symlink() and target.read_bytes() == b"not to be touched"
  # --overwrite replaces the link itself, never its target.
  assert _edit(photo, out, "--overwrite") == 0, capsys.readouterr().err
  assert not out.is_symlink() and _is_png(out)
  assert target.read_bytes() == b"not to be touched"


def test_path_under_a_file(photo, tmp_path, no_compute, capsys):
  blocker = tmp_path / "notes.txt"
  blocker.write_text("a file")
  assert _edit(photo, blocker / "sub" / "out.png") == 1
  line = _one_error_line(capsys)
  assert str(blocker) in line and "is a file, not a folder" in line
  assert blocker.read_text() == "a file"


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unwritable_folder(photo, tmp_path, no_compute, capsys, monkeypatch, how):
  folder = tmp_path / "locked"
  folder.mkdir()
  folder.chmod(0o500)
  try:
    if how == "simulated":  # as root chmod does not bind: os.access says no instead
      real_access = os.access
      monkeypatch.setattr(os, "access", lambda path, mode, **kw: False
                          if pathlib.Path(path) == folder else real_access(path, mode, **kw))
    elif os.access(folder, os.W_OK):
      pytest.skip("permissions are not enforced for this user (root?)")
    assert _edit(photo, folder / "out.png") == 1
    line = _one_error_line(capsys)
    assert str(folder) in line and "not writable" in line
  finally:
    folder.chmod(0o700)
  assert list(folder.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "folder"])
def test_name_too_long(photo, tmp_path, no_compute, capsys, where):
  long = "x" * 300
  out = tmp_path / (f"{long}.png" if where == "file" else f"{long}/out.png")
  assert _edit(photo, out) == 1
  line = _one_error_line(capsys)
  assert "longer than this file system allows" in line
  assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_entry_point_refuses_existing_file(photo, tmp_path):
  out = tmp_path / "out.png"
  out.write_bytes(b"an earlier result")
  done = subprocess.run(
      [sys.executable, "-m", "maskgit.edit", f"--image={photo}", "--box=0,0,8,8",
       "--label=1", "--config=tiny", f"--out={out}"],
      capture_output=True, text=True, timeout=120, cwd=REPO,
      env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert done.returncode == 1 and len(lines) == 1, done.stderr
  assert lines[0].startswith("error: ") and "--overwrite" in lines[0]
  assert out.read_bytes() == b"an earlier result"
