"""Faults through the real commands (subprocesses, tiny config, offline): each is exit
status 1, one `error:` line, no traceback, and earlier files stay byte for byte as they
were; faults that can be recovered from (a stale lock, a damaged newest checkpoint) are
recovered from with a warning. The pieces behind them (the folder lock, seeds of any
size, the write check) are also tested as library functions, which is quicker."""
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from lr_common import folder_lock
from lr_common import output_files
from lr_jax import checkpointing
from lr_jax import editor_bench
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
    # Numbers at their limits: checked against what the code does with them.
    (f"--config.region.roi_size={2**70}", "region.roi_size must be an integer in"),
    ("--config.score.alpha=1e39", "a number float32 holds"),
])
def test_bad_config_values_fail_before_anything_is_written(env, tmp_path, override, needle):
  wd = tmp_path / "wd"
  proc = run(env, "lr_jax.train", *TINY, "--workdir", str(wd), *TRAIN, override)
  assert_clean_error(proc, needle)
  assert not wd.exists()


def test_editing_twice_into_one_folder_keeps_the_first_results(env, cat, edited, tmp_path):
  before = snapshot(edited)
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(edited))   # the same strategy and seed: the same file names
  assert_clean_error(proc, "already exist", "--overwrite")
  assert snapshot(edited) == before
  # Another seed writes files of its own beside them (the names carry the seed).
  out = tmp_path / "out"
  subprocess.run(["cp", "-r", str(edited), str(out)], check=True)
  again = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
              "--out", str(out), "--seed", "7")
  assert again.returncode == 0, again.stderr[-2000:]
  assert snapshot(out) == {**before, **{k: v for k, v in snapshot(out).items() if "seed7" in k}}
  assert len(list(out.iterdir())) == 6


def test_overwrite_replaces_and_never_writes_through_a_link(env, cat, edited, tmp_path):
  out = tmp_path / "out"
  subprocess.run(["cp", "-r", str(edited), str(out)], check=True)
  target = tmp_path / "precious.png"
  target.write_bytes(b"keep me")
  photo = next(out.glob("*_edited.png"))
  photo.unlink()
  photo.symlink_to(target)
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(out))   # the same names as the link's
  assert_clean_error(proc, "symbolic link")
  again = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
              "--out", str(out), "--overwrite")
  assert again.returncode == 0, again.stderr[-2000:]
  assert target.read_bytes() == b"keep me"           # the link's target is untouched
  assert not photo.is_symlink() and Image.open(photo).size == (451, 300)
  # Replaced by the same edit (same seed): the bytes of the first run.
  assert photo.read_bytes() == (edited / photo.name).read_bytes()


@pytest.mark.parametrize("kind", ["file", "under_file", "too_long", "virtual_fs"])
def test_unwritable_out_fails_before_any_work(env, cat, tmp_path, kind):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  out = {"file": blocker, "under_file": blocker / "sub",
         "too_long": tmp_path / ("n" * 300),
         "virtual_fs": pathlib.Path("/proc/lr_jax_faults/out")}[kind]   # writable to os.access
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


# ---------------------------------------------------------------- second round (issue 21)

def test_a_seed_of_any_size_is_its_own_and_recorded(env, cat, edited, tmp_path):
  # 2**32 gave seed 0's picture; 1e308 x a box side overflowed an int in window mode.
  out = tmp_path / "out"
  proc = run(env, "lr_jax.edit", *TINY, "--image", str(cat), "--prompt", "a lion",
             "--out", str(out), "--seed", str(2**32), "--config.region.window_scale=1e308")
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(next(out.glob("*.json")).read_text())
  assert record["seed"] == 2**32 and "prng_key(4294967296)" in record["edit_rng"]
  photo = lambda d: np.asarray(Image.open(next(d.glob("*_edited.png"))))
  assert (photo(out) != photo(edited)).any()   # not seed 0's edit


def test_pie_bench_run_start_past_64_bits(env, tmp_path):
  mapping = tmp_path / "mapping_file.json"
  mapping.write_text(json.dumps({"000": {"image_path": "000.jpg", "editing_prompt": "a [tiger]",
                                         "mask": [2**63, 4]}}))
  proc = run(env, "lr_jax.evaluate", *TINY, "--manifest", str(mapping), "--strategies",
             "random", "--out", str(tmp_path / "eval"))
  assert_clean_error(proc, "entry '000'", "outside the 512x512 image")
  assert not (tmp_path / "eval").exists()


@pytest.fixture()
def eval_manifest(cat, tmp_path):
  manifest = tmp_path / "m.json"
  manifest.write_text(json.dumps([{"image": str(cat), "prompt": "a lion"}]))
  return manifest


def test_a_results_line_that_is_not_a_result(env, eval_manifest, tmp_path):
  out = tmp_path / "eval"
  out.mkdir()
  (out / "results.jsonl").write_text('{"key": "0|random|x", "index": 0}\n')   # JSON, no result
  before = snapshot(out)
  proc = run(env, "lr_jax.evaluate", *TINY, "--manifest", str(eval_manifest),
             "--strategies", "random", "--out", str(out))
  assert_clean_error(proc, "results.jsonl: line 1 is not a result line", "Remove that line")
  assert snapshot(out) == before   # the lock is gone again too


def test_second_evaluation_on_a_folder_is_refused(env, eval_manifest, tmp_path):
  out = tmp_path / "eval"
  out.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    (out / "evaluate.lock").write_text(json.dumps(
        {"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"}))
    before = snapshot(out)
    proc = run(env, "lr_jax.evaluate", *TINY, "--manifest", str(eval_manifest),
               "--strategies", "dino_random", "--out", str(out))
    assert_clean_error(proc, "being evaluated by another run", f"pid {holder.pid}")
    assert snapshot(out) == before
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("module,args,needle", [
    ("lr_jax.bench", ("--json", "{tmp}"), "it is a folder"),
    ("lr_jax.bench", ("--what", "search", "--devices", "64"),
     "--devices 64: this host has 1 device (on a CPU, simulate more with XLA_FLAGS"),
    ("lr_jax.samples", ("/proc/lr_jax_faults",), "cannot create files in /proc"),
    ("lr_jax.editor_bench", ("--tiny", "--json", "/proc/lr_jax_faults/x.json"),
     "cannot create files in /proc"),
    ("lr_jax.editor_bench", ("--tiny", "--editors="), "need --editors in amused, maskgit"),
    ("lr_jax.editor_bench", ("--tiny", "--dtypes="), "need --dtypes in float32, bfloat16"),
    ("lr_jax.evaluate", ("--manifest", "{manifest}", "--strategies=", "--out", "{tmp}/e"),
     "no strategy given"),
    ("lr_jax.evaluate", ("--manifest", "{manifest}", "--wait_for_shares=0", "--out", "{tmp}/e"),
     "--wait_for_shares must be > 0"),
])
def test_outputs_and_empty_selections_fail_before_any_timing(env, eval_manifest, tmp_path,
                                                             module, args, needle):
  args = [a.format(tmp=tmp_path, manifest=eval_manifest) for a in args]
  proc = run(env, module, *args)
  assert_clean_error(proc, needle)
  assert "device:" not in proc.stdout and "ms/img" not in proc.stdout   # nothing was timed
  assert not (tmp_path / "e").exists()


def test_folder_lock_refuses_the_living_and_takes_over_from_the_dead(tmp_path, caplog):
  busy = folder_lock.FolderBusyError
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  lock = tmp_path / "x.lock"
  try:
    lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                "started": "then"}))
    with pytest.raises(busy, match=rf"being used by another run \(pid {holder.pid}, since then"):
      folder_lock.acquire(tmp_path, "x.lock")
  finally:
    holder.kill()
    holder.wait()
  with caplog.at_level(logging.WARNING):   # the holder has ended: taken over
    path = folder_lock.acquire(tmp_path, "x.lock")
  assert "Taking over" in caplog.text and json.loads(path.read_text())["pid"] == os.getpid()
  folder_lock.release(path)
  assert not path.exists()
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
  with pytest.raises(busy, match=rf"pid 1 on host elsewhere .*delete {lock}"):
    folder_lock.acquire(tmp_path, "x.lock", flag="--workdir")
  folder_lock.release(lock)   # not ours: left alone
  assert lock.exists()
  lock.write_text("{half a lo")   # a lock that cannot be read (an old one): taken over
  os.utime(lock, (0, 0))
  folder_lock.release(folder_lock.acquire(tmp_path, "x.lock"))
  with folder_lock.held(tmp_path, "y.lock") as held:   # nested: held until the outer ends
    with folder_lock.held(tmp_path, "y.lock"):
      pass
    assert held.exists()
  assert not held.exists()


def test_write_check_asks_the_file_system(tmp_path):
  assert output_files.write_problem(tmp_path) is None
  assert not list(tmp_path.iterdir())   # the probe is gone
  assert "virtual file system" in output_files.write_problem("/proc")
  with pytest.raises(output_files.OutputError, match="cannot create files in /proc"):
    output_files.check_outputs(["/proc/lr_jax_faults/a.json"], overwrite=True)
  if os.geteuid() != 0:   # root writes into read-only modes
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(output_files.OutputError, match="not writable"):
      output_files.check_folder(ro / "out")


def test_editor_bench_flags_are_checked_before_timing(tmp_path):
  check = editor_bench.check_flags
  assert check(["amused"], ["1", "4"], ["float32"], 1, json_path=str(tmp_path / "new" / "x.json")
               ) == [1, 4]
  for args, needle in ((([], ["1"], ["float32"], 1), "need --editors in"),
                       ((["amused"], ["1"], [], 1), "need --dtypes in"),
                       ((["amused"], [str(2**70)], ["float32"], 1), "--ns takes"),
                       ((["amused"], ["x"], ["float32"], 1), "--ns must be integers")):
    with pytest.raises(editor_bench.errors.UsageError, match=needle):
      check(*args)
  with pytest.raises(output_files.OutputError, match="it is a folder"):
    check(["amused"], ["1"], ["float32"], 1, json_path=str(tmp_path))
  editor_bench.write_json(str(tmp_path / "new" / "x.json"), [{"n": 1}])
  assert json.loads((tmp_path / "new" / "x.json").read_text()) == [{"n": 1}]


@pytest.mark.parametrize("module,args,needle", [
    # The Stable Diffusion editor's settings, before any model loads.
    ("lr_jax.train", ("--config", "configs/stable_diffusion_tiny.py", "--workdir", "{tmp}/wd",
                      "--config.editor.num_steps=0"), "editor.num_steps"),
    ("lr_jax.edit", ("--config", "configs/stable_diffusion_tiny.py", "--image", "{cat}",
                     "--prompt", "a lion", "--out", "{tmp}/o", "--config.editor.scheduler=euler"),
     "editor.scheduler"),
    # A dtype that is none of float32, bfloat16 and auto.
    ("lr_jax.edit", (*TINY, "--image", "{cat}", "--prompt", "a lion", "--out", "{tmp}/o",
                     "--config.editor.dtype=float16"), "'float32', 'bfloat16', 'auto'"),
    # Who computes the bfloat16 products: MaskGIT's and aMUSEd's choice.
    ("lr_jax.edit", (*TINY, "--image", "{cat}", "--prompt", "a lion", "--out", "{tmp}/o",
                     "--config.editor.cpu_matmul=mkl"), "cpu_matmul must be one of"),
    ("lr_jax.train", ("--config", "configs/amused_tiny.py", "--workdir", "{tmp}/wd",
                      "--config.editor.cpu_matmul=mkl"), "editor.cpu_matmul must be one of"),
    # Your own box, and the strategies that need what was not given.
    ("lr_jax.edit", (*TINY, "--image", "{cat}", "--prompt", "a lion", "--out", "{tmp}/o",
                     "--box", "0,0,0,5"), "empty"),
    ("lr_jax.edit", (*TINY, "--image", "{cat}", "--prompt", "a lion", "--out", "{tmp}/o",
                     "--box", "0,0,5"), "four numbers"),
    ("lr_jax.edit", (*TINY, "--image", "{cat}", "--prompt", "a lion", "--out", "{tmp}/o",
                     "--strategy", "rgn"), "--rgn_checkpoint"),
    # The memory cap of editing over devices.
    ("lr_jax.edit", (*TINY, "--image", "{cat}", "--prompt", "a lion", "--out", "{tmp}/o",
                     "--config.infer.max_edits_per_device=-1"),
     "infer.max_edits_per_device must be an integer >= 0, got -1"),
    # The weights command.
    ("lr_jax.weights", ("download",), "--config"),
])
def test_new_surfaces_fail_before_any_work(env, cat, tmp_path, module, args, needle):
  args = [a.format(tmp=tmp_path, cat=cat) for a in args]
  proc = run(env, module, *args)
  assert_clean_error(proc, needle)
  assert not (tmp_path / "o").exists() and not (tmp_path / "wd").exists()


@pytest.mark.parametrize("args, needle", [
    (("--port", "70000"), "70000"),
    (("--config", "configs/no_such.py"), "no_such.py"),
    (("--port", "TAKEN"), "cannot serve on --host 127.0.0.1 --port"),
])
def test_app_command_refuses_bad_flags_before_models_load(env, args, needle):
  """`python -m lr_jax.app`: a port out of range or taken, a config that is not there."""
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    proc = run(env, "lr_jax.app", *TINY, *(port if a == "TAKEN" else a for a in args),
               timeout=120)
  assert_clean_error(proc, needle)


# ---------------------------------------------------------------- several processes (issue 22)

@pytest.mark.parametrize("module,variables,needle", [
    ("lr_jax.evaluate", {"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES must be an integer >= 1, got 'two'"),
    ("lr_jax.edit", {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     "need JAX_COORDINATOR_ADDRESS"),
])
def test_bad_process_variables_fail_before_any_work(env, eval_manifest, tmp_path, module,
                                                    variables, needle):
  proc = run(env, module, *TINY, "--manifest", str(eval_manifest), "--out",
             str(tmp_path / "e"), **variables)
  assert_clean_error(proc, needle)
  assert not (tmp_path / "e").exists()


def test_a_share_line_that_is_not_a_result(env, eval_manifest, tmp_path):
  """The lines a killed job's process left in `shares/` are read like results.jsonl's."""
  out = tmp_path / "eval"
  (out / "shares").mkdir(parents=True)
  (out / "shares" / "results.p1-of-2.jsonl").write_text('{"key": "0|random|x"}\n')
  before = snapshot(out)
  proc = run(env, "lr_jax.evaluate", *TINY, "--manifest", str(eval_manifest),
             "--strategies", "random", "--out", str(out))
  assert_clean_error(proc, "results.p1-of-2.jsonl: line 1 is not a result line",
                     "Remove that line")
  assert snapshot(out) == before
