"""The real commands (`python -m lr_jax.train`, `python -m lr_jax.edit`) as subprocesses.

Bad input must end with exit status 1, one `error:` line and no traceback; unusual but
valid images must work with a warning; a run killed with SIGKILL and resumed must end
with the parameters of an uninterrupted run.

All runs share a persistent XLA compilation cache (a temporary folder of this module)
so that only the first train and the first edit compile; the error runs stop before
any compilation.
"""
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from lr_jax import checkpointing
from lr_jax import samples
from lr_jax.models import build_models
from tests import cli_helpers

REPO = cli_helpers.REPO
# Steps of the training runs below: enough that a run killed after its first
# checkpoint has work left.
EPOCHS = 4
TRAIN_FLAGS = (f"--config.train.epochs={EPOCHS}", "--config.train.checkpoint_every=1",
               "--noprogress")


@pytest.fixture(scope="module")
def env(cli_env):
  return cli_env


_run = cli_helpers.run
_assert_clean_error = cli_helpers.assert_clean_error


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli_samples")
  samples.write_samples(d)
  return d


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
  """An uninterrupted tiny training run with no data flags (the shipped sample)."""
  workdir = tmp_path_factory.mktemp("cli_full")
  start = time.time()
  proc = _run(env, "lr_jax.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
              *TRAIN_FLAGS)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"trained {2 * EPOCHS} steps" in proc.stdout
  print(f"uninterrupted tiny training run: {time.time() - start:.1f} s")
  return workdir


def test_a_rerun_of_a_finished_training_says_it_trained_nothing(env, trained):
  proc = _run(env, "lr_jax.train", "--config", "configs/tiny.py", "--workdir", str(trained),
              *TRAIN_FLAGS)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"nothing to train: {trained} already holds step {2 * EPOCHS}" in proc.stdout
  assert "trained" not in proc.stdout.replace("train more", "")


def test_unreadable_small_and_huge_images_are_listed_together(env, tmp_path):
  folder = tmp_path / "bad"
  folder.mkdir()
  (folder / "garbage.png").write_bytes(b"this is not a PNG")
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "small.png")
  Image.fromarray(np.zeros((64, 10001, 3), np.uint8)).save(folder / "huge.png")
  proc = _run(env, "lr_jax.edit", "--config", "configs/tiny.py", "--image", str(folder),
              "--prompt", "a lion", "--out", str(tmp_path / "out"))
  text = _assert_clean_error(proc, "garbage.png", "small.png", "40x40", "huge.png", "10001")
  assert "64" in text and "10000" in text   # the allowed range is stated
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_image(env, tmp_path):
  proc = _run(env, "lr_jax.edit", "--config", "configs/tiny.py",
              "--image", str(tmp_path / "nope.png"), "--prompt", "a lion",
              "--out", str(tmp_path / "out"))
  _assert_clean_error(proc, "nope.png", "does not exist")


def test_empty_prompt(env, sample_dir, tmp_path):
  proc = _run(env, "lr_jax.edit", "--config", "configs/tiny.py",
              "--image", str(sample_dir / "chelsea.png"), "--prompt", "  ",
              "--out", str(tmp_path / "out"))
  _assert_clean_error(proc, "empty")


def test_config_typo(env, tmp_path):
  proc = _run(env, "lr_jax.train", "--config", "configs/tiny.py",
              "--workdir", str(tmp_path / "wd"), "--config.train.epochz=3")
  _assert_clean_error(proc, "--config.train.epochz=3", "'epochz'", '"epochs"')
  assert not (tmp_path / "wd").exists()
  proc = _run(env, "lr_jax.train", "--config", "configs/tiny.py",
              "--workdir", str(tmp_path / "wd"), "--config.train.epochs=three")
  _assert_clean_error(proc, "--config.train.epochs=three")


def test_missing_weights_offline_say_what_to_download(env, sample_dir, tmp_path):
  start = time.time()
  proc = _run(env, "lr_jax.edit", "--config", "configs/maskgit_imagenet256.py",
              "--image", str(sample_dir / "chelsea.png"), "--prompt", "a lion",
              "--out", str(tmp_path / "out"), timeout=120)
  text = _assert_clean_error(proc, "facebook/dino-vitb16", "openai/clip-vit-base-patch16",
                             "tokenizer_imagenet256", "maskgit_imagenet256")
  assert "https://" in text   # where to get the MaskGIT files
  assert time.time() - start < 60


def test_workdir_of_another_config(env, trained):
  proc = _run(env, "lr_jax.train", "--config", "configs/tiny.py", "--workdir", str(trained),
              *TRAIN_FLAGS, "--config.optim.learning_rate=0.1")
  _assert_clean_error(proc, "optim.learning_rate", "another config", str(trained))


def test_prompt_without_class_match_shows_closest_classes(env, sample_dir, tmp_path):
  proc = _run(env, "lr_jax.edit", "--config", "configs/tiny.py",
              "--config.data.min_class_similarity=0.999",
              "--image", str(sample_dir / "chelsea.png"), "--prompt", "zzqx blorp",
              "--out", str(tmp_path / "out"))
  text = _assert_clean_error(proc, "zzqx blorp", "closest")
  # Five "<id> <name> (<similarity>)" suggestions.
  assert text.count("(0.") + text.count("(-0.") >= 5, text


def test_grayscale_rgba_16bit_cmyk_work_with_a_warning(env, trained, tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "odd"
  folder.mkdir()
  shapes = {}
  Image.fromarray((rng.random((80, 100)) * 255).astype(np.uint8), "L").save(folder / "gray.png")
  shapes["gray"] = (80, 100)
  rgba = (rng.random((90, 70, 4)) * 255).astype(np.uint8)
  Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
  shapes["rgba"] = (90, 70)
  Image.fromarray((rng.random((100, 120)) * 65535).astype(np.uint16)).save(folder / "deep.png")
  assert Image.open(folder / "deep.png").mode.startswith("I")
  shapes["deep"] = (100, 120)
  Image.fromarray((rng.random((70, 65, 3)) * 255).astype(np.uint8)).convert("CMYK").save(
      folder / "cmyk.jpg")
  shapes["cmyk"] = (70, 65)
  out = tmp_path / "out"
  proc = _run(env, "lr_jax.edit", "--config", "configs/tiny.py", "--image", str(folder),
              "--prompt", "a lion", "--out", str(out), "--rgn_checkpoint", str(trained))
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
  warnings = [l for l in proc.stderr.splitlines() if l.startswith("W")]
  for name, word in (("gray.png", "grayscale"), ("rgba.png", "transparency"),
                     ("deep.png", "16-bit"), ("cmyk.jpg", "CMYK")):
    assert any(name in l and word in l for l in warnings), (name, proc.stderr[-3000:])
  for stem, (h, w) in shapes.items():
    edited = list(out.glob(f"*_{stem}_*_edited.png"))
    assert len(edited) == 1, sorted(p.name for p in out.iterdir())
    assert np.asarray(Image.open(edited[0])).shape == (h, w, 3)
    record = json.loads(next(out.glob(f"*_{stem}_*.json")).read_text())
    assert record["rgn_checkpoint"] == str(trained)


def test_killed_run_resumes_to_the_same_parameters(env, trained, tmp_path):
  """SIGKILL after the first checkpoint, rerun the same command: same RGN as `trained`."""
  workdir = tmp_path / "cut"
  command = [sys.executable, "-m", "lr_jax.train", "--config", "configs/tiny.py",
             "--workdir", str(workdir), *TRAIN_FLAGS]
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  first = workdir / "checkpoints" / "1"
  deadline = time.time() + 240
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
  done = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert done and done[-1] < 2 * EPOCHS, done   # really killed mid-way
  config = tiny.get_config()
  config.train.epochs = EPOCHS
  models = build_models(config).models
  at_kill = checkpointing.load_rgn_params(workdir, models, config)

  resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-4000:]

  want = checkpointing.load_rgn_params(trained, models, config)
  got = checkpointing.load_rgn_params(workdir, models, config)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
  # The rerun did train on from the killed run's checkpoint.
  assert max(np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(at_kill), jax.tree.leaves(got))) > 1e-6
  # The metrics file has each step once, with the uninterrupted run's losses.
  rows = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows(workdir)] == list(range(1, 2 * EPOCHS + 1))
  np.testing.assert_allclose([r["loss"] for r in rows(workdir)],
                             [r["loss"] for r in rows(trained)], rtol=0, atol=1e-6)
  assert checkpointing.make_manager(workdir).latest_step() == 2 * EPOCHS
