"""Faults through the real commands (subprocesses, tiny config, offline): each is exit
status 1, one `error:` line, no traceback, and earlier files stay byte for byte as they
were; faults that can be recovered from (a stale lock, a damaged newest checkpoint) are
recovered from with a warning."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from lr_jax import checkpointing
from lr_jax import samples
from tests.cli_helpers import assert_clean_error, run, snapshot

TINY = ("--config", "configs/tiny.py")
TRAIN = ("--config.train.epochs=1", "--config.train.checkpoint_every=1", "--noprogress")


@pytest.fixture(scope="module")
def env(cli_env):
  return cli_env


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
  d = tmp_path_factory.mktemp("faults_samples")
  samples.write_samples(d)
  return d / "chelsea.png"


@pytest.fixture(scope="module")
def workdir(env, tmp_path_factory):
  """A finished tiny training run: 2 steps (the sample's two prompts), 2 checkpoints."""
  wd = tmp_path_factory.mktemp("faults_run")
  proc = run(env, "lr_jax.train", *TINY, "--workdir", str(wd), *TRAIN)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


@pytest.fixture(scope="module")
def edited(env, cat, tmp_path_factory):
  out = tmp_path_factory.mktemp("faults_out")
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(list(out.iterdir())) == 3
  # A plain run prints no advice about packages lr_jax does not use.
  assert "PyTorch was not found" not in proc.stderr, proc.stderr
  return out


@pytest.mark.parametrize("override,needle", [   # every check: tests/test_settings.py
    ("--config.train.batch_size=-1", "train.batch_size must be an integer >= 1, got -1"),
    ("--config.region.sizes=(1,9)", "at most 4 tokens"),
    ("--config.optim.learning_rate=nan", "optim.learning_rate"),
])
def test_bad_config_values_fail_before_anything_is_written(env, tmp_path, override, needle):
  wd = tmp_path / "wd"
  proc = run(env, "lr_jax.train", *TINY, "--workdir", str(wd), *TRAIN, override)
  assert_clean_error(proc, needle)
  assert not wd.exists()


def test_editing_twice_into_one_folder_keeps_the_first_results(env, cat, edited):
  before = snapshot(edited)
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(edited), "--seed", "7")
  assert_clean_error(proc, "already exist", "--overwrite")
  assert snapshot(edited) == before


def test_overwrite_replaces_and_never_writes_through_a_link(env, cat, edited, tmp_path):
  out = tmp_path / "out"
  subprocess.run(["cp", "-r", str(edited), str(out)], check=True)
  target = tmp_path / "precious.png"
  target.write_bytes(b"keep me")
  photo = next(out.glob("*_edited.png"))
  photo.unlink()
  photo.symlink_to(target)
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(out), "--seed", "3")
  assert_clean_error(proc, "symbolic link")
  again = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
              "--out", str(out), "--seed", "3", "--overwrite")
  assert again.returncode == 0, again.stderr[-2000:]
  assert target.read_bytes() == b"keep me"           # the link's target is untouched
  assert not photo.is_symlink() and Image.open(photo).size == (451, 300)
  assert snapshot(out) != snapshot(edited)           # replaced by the seed-3 edit


@pytest.mark.parametrize("kind", ["file", "under_file", "too_long"])
def test_unwritable_out_fails_before_any_work(env, cat, tmp_path, kind):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  out = {"file": blocker, "under_file": blocker / "sub",
         "too_long": tmp_path / ("n" * 300)}[kind]
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(out))
  assert_clean_error(proc, "cannot write")
  assert blocker.read_text() == "x"
  assert "edit:" not in proc.stderr   # stopped before the progress bar, i.e. any compute


def test_manifest_that_is_not_utf8(env, tmp_path):
  manifest = tmp_path / "m.json"
  manifest.write_bytes('[{"image": "café.png", "prompt": "a lion"}]'.encode("latin-1"))
  proc = run(env, "lr_jax.edit", *TINY, "--manifest", str(manifest), "--out",
             str(tmp_path / "out"))
  assert_clean_error(proc, "not UTF-8")


def test_commands_work_from_another_folder(env, cat, tmp_path):
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(tmp_path / "out"), cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # The default config (the official weights) is found too: offline, that is the
  # missing-weights error, not a missing config file.
  proc = run(env, "lr_jax.edit", "--image", str(cat), "--prompt", "a lion",
             "--out", str(tmp_path / "out2"), cwd=tmp_path, timeout=120)
  assert_clean_error(proc, "Pretrained weights are missing")
  proc = run(env, "lr_jax.train", "--config", "configs/nope.py", "--workdir",
             str(tmp_path / "wd"), cwd=tmp_path)
  assert_clean_error(proc, "config file 'configs/nope.py' not found")


def test_samples_help_creates_no_folder(env, tmp_path):
  proc = run(env, "lr_jax.samples", "--help", cwd=tmp_path)
  assert proc.returncode == 0 and "usage" in proc.stdout
  assert not (tmp_path / "--help").exists()


def test_second_trainer_on_a_workdir_is_refused_and_a_stale_lock_taken_over(
    env, workdir, tmp_path):
  before = snapshot(workdir)
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    lock = workdir / checkpointing.LOCK_NAME
    lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                "started": "earlier"}))
    proc = run(env, "lr_jax.train", *TINY, "--workdir", str(workdir), *TRAIN)
    assert_clean_error(proc, "being trained by another run", str(holder.pid))
    assert {k: v for k, v in snapshot(workdir).items() if k != "train.lock"} == before
  finally:
    holder.kill()
    holder.wait()
  proc = run(env, "lr_jax.train", *TINY, "--workdir", str(workdir), *TRAIN)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Taking over" in proc.stderr and not lock.exists()


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
  return dst


def _damage(step_dir: pathlib.Path) -> None:
  for f in (step_dir / "default").rglob("*"):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def test_damaged_newest_checkpoint_is_set_aside_and_the_next_resumed(env, workdir, tmp_path):
  wd = _copy(workdir, tmp_path / "wd")
  _damage(wd / "checkpoints" / "2")
  proc = run(env, "lr_jax.train", *TINY, "--workdir", str(wd), *TRAIN)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "cannot be read" in proc.stderr and "Resuming from step 1" in proc.stderr
  assert [p.name for p in (wd / "checkpoints").iterdir() if p.name.startswith("broken_2")]
  assert checkpointing.make_manager(wd).latest_step() == 2    # redone
  # Every checkpoint damaged: one line.
  for step in ("1", "2"):
    _damage(wd / "checkpoints" / step)
  proc = run(env, "lr_jax.train", *TINY, "--workdir", str(wd), *TRAIN)
  assert_clean_error(proc, "No checkpoint", "can be read")


def test_bad_rgn_checkpoints_are_one_line(env, cat, workdir, tmp_path):
  args = ("lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion")
  damaged = _copy(workdir, tmp_path / "damaged")
  _damage(damaged / "checkpoints" / "2")
  assert_clean_error(run(env, *args, "--out", str(tmp_path / "o1"),
                         "--rgn_checkpoint", str(damaged)), "damaged")
  no_record = _copy(workdir, tmp_path / "no_record")
  (no_record / "config.json").unlink()
  assert_clean_error(run(env, *args, "--out", str(tmp_path / "o2"),
                         "--rgn_checkpoint", str(no_record)), "no config.json")
  # A checkpoint whose parameters are NaN (written as training never writes them).
  poisoned = _copy(workdir, tmp_path / "poisoned")
  manager = checkpointing.make_manager(poisoned)
  state = manager.restore(2)
  manager.save(3, args=ocp.args.StandardSave(
      jax.tree.map(lambda x: np.asarray(x) * np.nan if np.asarray(x).dtype.kind == "f"
                   else np.asarray(x), state)), force=True)
  manager.wait_until_finished()
  manager.close()
  assert_clean_error(run(env, *args, "--out", str(tmp_path / "o3"),
                         "--rgn_checkpoint", str(poisoned)), "NaN or infinite")
  assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())
