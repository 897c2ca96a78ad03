"""One command on several processes (`lr_jax.hosts`): two processes on 127.0.0.1 (CPU,
`jax.distributed`) evaluate a tiny manifest as one process does, a killed job is resumed
redoing only its lost pair, `lr_jax.edit --manifest` splits its images, and processes
started differently stop together before any work."""
import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lr_jax import hosts
from lr_jax.evaluation import results as results_lib
from lr_jax.evaluation import runner as evaluation
from lr_jax.files import manifest
from tests import cli_helpers
from tests.tiny_setup import tiny_config

STRATEGIES = ("random", "dino_random")
SMALL = ("--config.region.num_anchors=1",)
TIMING = ("seconds", "includes_compile")   # differ between runs
# Process 1 of the killed job: SIGKILL after its first line, once process 0 has written
# its two (else JAX ends process 0 too when it misses process 1's heartbeat: at
# 100 s, which a loaded machine may reach).
KILLED_AFTER_FIRST_PAIR = """
import os, runpy, signal, sys, time
from lr_jax.evaluation import results
write = results.write_lines
def write_and_die(path, rows):
  write(path, rows)
  other = path.with_name("results.p0-of-2.jsonl")
  while not other.exists() or len(other.read_text().splitlines()) < 2:
    time.sleep(0.05)
  os.kill(os.getpid(), signal.SIGKILL)
results.write_lines = write_and_die
sys.argv[0] = "lr_jax.evaluate"
runpy.run_module("lr_jax.evaluate", run_name="__main__", alter_sys=True)
"""


# Process 1 never writes JAX's compilation cache (process 0 does), so it compiles in every
# job: cheaper XLA passes make that a third quicker (every run here uses them alike).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"


@pytest.fixture(scope="module")
def env(cli_env):
  # The processes talk over 127.0.0.1; every other address still goes to the dead proxy.
  return dict(cli_env, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
              XLA_FLAGS=f"{cli_env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("hosts_data")
  rows, cols = np.mgrid[0:64, 0:80]
  for k in range(2):
    photo = np.stack([rows * (3 + k), cols * 2 + 40 * k, (rows + cols * k) % 256], -1)
    Image.fromarray(photo.astype(np.uint8)).save(folder / f"im{k}.png")
  (folder / "m.json").write_text(json.dumps([{"image": "im0.png", "prompt": "a lion"},
                                             {"image": "im1.png", "prompt": "a dog"}]))
  return folder


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Job:
  """Processes of one command started together, their output in files."""

  def __init__(self, env, logs: pathlib.Path, args, count: int = 1, module="lr_jax.evaluate",
               scripts: dict[int, str] | None = None):
    port = _free_port()
    self.logs, self.procs = logs, []
    for k in range(count):
      extra = ({} if count == 1 else dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                          JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(k)))
      launcher = ["-c", scripts[k]] if scripts and k in scripts else ["-m", module]
      with open(self._log(k, "out"), "w") as out, open(self._log(k, "err"), "w") as err:
        self.procs.append(subprocess.Popen(
            [sys.executable, *launcher, *args], cwd=cli_helpers.REPO, env=dict(env, **extra),
            stdout=out, stderr=err))

  def _log(self, k, kind) -> pathlib.Path:
    return self.logs.with_name(f"{self.logs.name}.p{k}.{kind}")

  def out(self, k: int) -> str:
    return self._log(k, "out").read_text()

  def err(self, k: int) -> str:
    return self._log(k, "err").read_text()

  def wait(self, timeout: float = 300) -> list[int]:
    end = time.monotonic() + timeout
    try:
      return [p.wait(max(end - time.monotonic(), 1)) for p in self.procs]
    finally:
      self.kill()

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def check(self, timeout: float = 300) -> "Job":
    codes = self.wait(timeout)
    assert codes == [0] * len(codes), [(c, self.err(k)[-3000:]) for k, c in enumerate(codes)]
    return self


def _eval_args(data, out) -> list[str]:
  return ["--config", "configs/tiny.py", *SMALL, "--manifest", str(data / "m.json"),
          "--strategies", ",".join(STRATEGIES), "--out", str(out)]


def _comparable(out: pathlib.Path) -> list[dict]:
  """The result lines without their timings, paths relative to the folder."""
  rows = results_lib.read_results(out)
  return [json.loads(json.dumps({k: v for k, v in r.items() if k not in TIMING})
                     .replace(str(out), "OUT")) for r in rows]


def _summary(out: pathlib.Path) -> list[str]:
  return [line for line in (out / "summary.csv").read_text().splitlines()
          if ",seconds," not in line]


@pytest.fixture(scope="module")
def runs(env, data, tmp_path_factory):
  """The reference (one process) and the same command on two processes, run together."""
  tmp = tmp_path_factory.mktemp("hosts_runs")
  start = time.monotonic()
  one = Job(env, tmp / "one", _eval_args(data, tmp / "one"))
  two = Job(env, tmp / "two", _eval_args(data, tmp / "two"), count=2)
  eight = Job(dict(env, XLA_FLAGS=f"{env['XLA_FLAGS']} {EIGHT_DEVICES}"), tmp / "eight",
              _eval_args(data, tmp / "eight"))
  one.check(), two.check(), eight.check()
  print(f"one process, two processes, eight devices, side by side: "
        f"{time.monotonic() - start:.1f} s")
  return tmp, one, two


def test_two_processes_give_one_process_results(runs):
  tmp, one, two = runs
  assert _comparable(tmp / "two") == _comparable(tmp / "one")   # the lines, in order
  assert [r["strategy"] for r in _comparable(tmp / "one")] == [*STRATEGIES] * 2
  assert _summary(tmp / "two") == _summary(tmp / "one")
  assert sorted(p.name for p in (tmp / "two" / "sheets").iterdir()) == sorted(
      p.name for p in (tmp / "one" / "sheets").iterdir())
  assert not (tmp / "two" / results_lib.SHARES_DIR).exists()   # merged, removed
  assert not (tmp / "two" / evaluation.LOCK_FILE).exists()
  # Each process edited its diagonal half: (image + strategy) mod 2.
  assert "2 of 4 pairs (2 images x 2 strategies) are its share; 2 to edit" in two.out(0)
  assert "2 of 4 pairs (2 images x 2 strategies) are its share; 2 to edit" in two.out(1)
  assert "## " in two.out(0) and "## " not in two.out(1)   # process 0 reports
  assert "process 0 merged every share" in two.out(1)


def _close(a, b, path="") -> list[str]:
  """Where two result lines differ beyond float rounding (rel 1e-4, abs 1e-5)."""
  if isinstance(a, dict) and isinstance(b, dict):
    if a.keys() != b.keys():
      return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
    return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return [f"{path}: lengths {len(a)} != {len(b)}"]
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
  if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
    return [] if np.isclose(a, b, rtol=1e-4, atol=1e-5) else [f"{path}: {a} != {b}"]
  return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_eight_devices_evaluate_as_one(runs):
  """The same command on one process with 8 (simulated) devices: every line's boxes,
  keys and pick equal one device's, its measures equal up to float rounding."""
  tmp = runs[0]
  eight, one = _comparable(tmp / "eight"), _comparable(tmp / "one")
  assert [r["key"] for r in eight] == [r["key"] for r in one]
  assert not [d for a, b in zip(eight, one) for d in _close(a, b)]


def test_a_killed_job_redoes_only_its_lost_pair(env, data, runs, tmp_path):
  ref, out = runs[0] / "one", tmp_path / "eval"
  killed = Job(env, tmp_path / "killed", _eval_args(data, out), count=2,
               scripts={1: KILLED_AFTER_FIRST_PAIR})
  try:
    assert killed.procs[1].wait(300) == -signal.SIGKILL
    end = time.monotonic() + 300   # process 0 does its share, then waits for process 1's
    while "waits for" not in killed.out(0):
      assert killed.procs[0].poll() is None and time.monotonic() < end, killed.err(0)[-3000:]
      time.sleep(0.1)
  finally:
    killed.kill()   # the whole job is killed, as a scheduler would
  assert not (out / results_lib.RESULTS_FILE).exists() and (out / evaluation.LOCK_FILE).exists()
  before = {r["key"]: r for path in results_lib.share_files(out)
            for r in results_lib.read_lines(path)}
  assert len(before) == 3   # process 0's two pairs, process 1's first

  resumed = Job(env, tmp_path / "resumed", _eval_args(data, out), count=2).check()
  assert "2 already done, skipped, nothing to edit" in resumed.out(0)
  assert "1 already done, skipped, 1 to edit" in resumed.out(1)
  assert "Taking over" in resumed.err(0)   # the killed process 0's lock
  rows = results_lib.read_results(out)
  assert {r["key"]: r for r in rows if r["key"] in before} == before   # not redone
  assert _comparable(out) == _comparable(ref)
  assert _summary(out) == _summary(ref)
  assert not results_lib.share_files(out)


def test_shares_of_a_killed_job_of_any_size_are_merged_in_one_process_order(
    runs, data, tmp_path, monkeypatch):
  """A job of three processes killed before merging: one process finishes it, editing
  nothing, and writes the reference's results.jsonl byte for byte."""
  ref = runs[0] / "one"
  rows = results_lib.read_results(ref)
  out = tmp_path / "eval"
  (out / results_lib.SHARES_DIR).mkdir(parents=True)
  (out / evaluation.SETTINGS_FILE).write_bytes((ref / evaluation.SETTINGS_FILE).read_bytes())
  results_lib.write_lines(results_lib.share_path(out, 2, 3), [rows[3], rows[0]])
  results_lib.write_lines(results_lib.share_path(out, 0, 3), [rows[2], rows[1]])
  monkeypatch.setattr(evaluation, "build_models", lambda c: pytest.fail("built models"))
  examples = manifest.read_manifest(data / "m.json")
  merged = evaluation.evaluate(tiny_config(**{"region.num_anchors": 1}), examples,
                               STRATEGIES, out, progress=False)
  assert merged == rows
  assert ((out / results_lib.RESULTS_FILE).read_bytes()
          == (ref / results_lib.RESULTS_FILE).read_bytes())
  assert not (out / results_lib.SHARES_DIR).exists()


def test_edit_manifest_on_two_processes(env, data, runs, tmp_path):
  out = tmp_path / "edits"
  job = Job(env, tmp_path / "edit", ["--config", "configs/tiny.py", *SMALL, "--manifest",
                                     str(data / "m.json"), "--strategy", "random", "--out",
                                     str(out)], count=2, module="lr_jax.edit").check()
  printed = [line for line in job.out(0).splitlines() if "best candidate" in line]
  assert [pathlib.Path(line.split(":")[0]).name for line in printed] == ["im0.png", "im1.png"]
  assert "1 images done; process 0 prints every result" in job.out(1)
  # Each image edited once, named, numbered and seeded as one process does (the
  # evaluation's random edits are those edits).
  edited = sorted(out.glob("*_edited.png"))
  assert [p.name for p in edited] == ["000_im0_a_lion_random_seed0_edited.png",
                                      "001_im1_a_dog_random_seed0_edited.png"]
  for path in edited:
    same = runs[0] / "one" / "edits" / "random" / path.name.replace("_random_seed0", "")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(same)))


def _with_more_flags(module: str, *flags: str) -> str:
  """A script running `python -m module` with `flags` after the job's own (the last
  value of a flag wins): one process started differently."""
  return (f"import runpy, sys; sys.argv[0] = {module!r}; sys.argv += {list(flags)!r}; "
          f"runpy.run_module({module!r}, run_name='__main__')")


def _all_stopped(job: "Job", what: str) -> None:
  """Both processes ended with the one error naming process 1 and what differs."""
  assert job.wait(120) == [1, 1]
  for k in (0, 1):
    proc = subprocess.CompletedProcess([], 1, job.out(k), job.err(k))
    cli_helpers.assert_clean_error(proc, "process 1 of 2 was started differently", what)


def test_processes_started_differently_stop_together(env, data, tmp_path):
  out = tmp_path / "eval"
  args = _eval_args(data, out)
  job = Job(env, tmp_path / "differ", args, count=2,
            scripts={1: _with_more_flags("lr_jax.evaluate", "--seed", "3")})
  _all_stopped(job, "settings (config and flags)")
  assert not out.exists()   # nothing started: no folder, no lock


def test_edit_processes_with_other_photos_stop_together(env, data, tmp_path):
  """`lr_jax.edit --manifest` on processes that read other manifests would skip or repeat
  photos: every process stops with the same error before any model loads."""
  other = tmp_path / "other.json"
  other.write_text(json.dumps([{"image": str(data / "im1.png"), "prompt": "a lion"},
                               {"image": str(data / "im0.png"), "prompt": "a dog"}]))
  out = tmp_path / "edits"
  args = ["--config", "configs/tiny.py", *SMALL, "--strategy", "random", "--out", str(out)]
  job = Job(env, tmp_path / "differ", [*args, "--manifest", str(data / "m.json")], count=2,
            module="lr_jax.edit",
            scripts={1: _with_more_flags("lr_jax.edit", "--manifest", str(other))})
  _all_stopped(job, "examples (manifest)")
  assert not out.exists() or not list(out.glob("*.png"))   # nothing edited


# ---------------------------------------------------------------- the pieces

def test_shares_cover_every_item_once():
  for count in (1, 2, 3, 5):
    shares = [hosts.Share(k, count) for k in range(count)]
    items = [i for s in shares for i in hosts.block(7, s)]
    assert items == list(range(7))
    owners = [[hosts.pair_process(i, j, count) for j in range(3)] for i in range(4)]
    for k in range(count):   # each process gets its part of every strategy
      assert count > 4 or all(k in [row[j] for row in owners] for j in range(3))


@pytest.mark.parametrize("variables,needle", [
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an integer >= 1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID must be an integer in 0..1"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "need JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "together"),
    ({"JAX_COORDINATOR_ADDRESS": "nohost"}, "host:port"),
])
def test_bad_process_variables_are_named(monkeypatch, variables, needle):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "LR_JAX_DISTRIBUTED"):
    monkeypatch.delenv(name, raising=False)
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(hosts.HostsError, match=needle):
    hosts.requested()


def test_the_environment_picks_the_job(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "LR_JAX_DISTRIBUTED"):
    monkeypatch.delenv(name, raising=False)
  assert hosts.requested() is None and hosts.current() == hosts.SINGLE
  monkeypatch.setenv("LR_JAX_DISTRIBUTED", "1")   # Cloud TPU: JAX finds the rest
  assert hosts.requested() == {"coordinator_address": None, "num_processes": None,
                               "process_id": None}
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert hosts.requested() == {"coordinator_address": "10.0.0.2:1234", "num_processes": 4,
                               "process_id": 3}


def test_a_share_line_replaces_the_results_line_of_its_pair(runs, tmp_path):
  """A pair redone because its line no longer held (its photo moved) comes back in a
  share with the same key: that newer line is the one kept, so the job can finish."""
  rows = results_lib.read_results(runs[0] / "one")
  out = tmp_path / "eval"
  out.mkdir()
  stale = [dict(rows[0], image=str(tmp_path / "moved_away.png"))] + rows[1:]
  results_lib.write_lines(out / results_lib.RESULTS_FILE, stale)
  share = results_lib.share_path(out, 1, 2)
  share.parent.mkdir()
  results_lib.write_lines(share, [rows[0]])
  stored = results_lib.read_stored(out, STRATEGIES)
  assert [r["key"] for r in stored.rows] == [r["key"] for r in rows]
  assert stored.rows[0]["image"] == rows[0]["image"] and rows[0]["key"] in stored.from_shares


def test_a_stale_nfs_read_is_tried_again(runs, tmp_path, monkeypatch):
  """Another host replacing a share while this one opens it gives ESTALE on NFS: read
  again; any other error, or ESTALE that lasts, is the clear ResultsError."""
  import errno
  rows = results_lib.read_results(runs[0] / "one")
  share = tmp_path / "results.p1-of-2.jsonl"
  results_lib.write_lines(share, rows)
  read, failures = pathlib.Path.read_text, {"left": 2}
  def flaky(self, *args, **kwargs):
    if self == share and failures["left"]:
      failures["left"] -= 1
      raise OSError(errno.ESTALE, "Stale file handle")
    return read(self, *args, **kwargs)
  monkeypatch.setattr(pathlib.Path, "read_text", flaky)
  monkeypatch.setattr(results_lib.time, "sleep", lambda s: None)
  assert results_lib.read_lines(share) == rows and failures["left"] == 0
  failures["left"] = 99
  with pytest.raises(results_lib.ResultsError, match="Stale file handle"):
    results_lib.read_lines(share)
  assert failures["left"] == 99 - 4   # tried 4 times


def test_every_todo_list_is_made_before_any_process_goes_on(tmp_path, monkeypatch):
  """Process 0 merges (and removes) the shares once every pair is stored: a process
  still reading the folder then would find its pairs nowhere and redo them. So each
  process reads the folder, then all meet, then they edit."""
  from types import SimpleNamespace
  from lr_jax.evaluation import multihost
  order = []
  plan = SimpleNamespace(out_dir=tmp_path, strategies=list(STRATEGIES),
                         wanted={(i, s): {} for i in range(2) for s in STRATEGIES})
  monkeypatch.setattr(results_lib, "read_stored", lambda *a: order.append("read") or None)
  monkeypatch.setattr(evaluation, "stored_pairs",
                      lambda p, stored, quiet: ([], list(p.wanted), []))
  monkeypatch.setattr(hosts, "agree", lambda problem, share, *a, **k: order.append("meet"))
  monkeypatch.setattr(evaluation, "edit_and_measure",
                      lambda *a, **k: order.append("edit"))
  multihost._own_share(plan, hosts.Share(1, 2), None, False)   # pylint: disable=protected-access
  assert order == ["read", "meet", "edit"]


def test_an_error_of_any_kind_on_one_process_stops_every_process(monkeypatch):
  """A process whose step fails with an OSError (an NFS error, say), not only with a
  UserError, still joins the exchange: it raises its own error, the others a HostsError
  naming it, instead of waiting for it forever."""
  said = {}
  def exchange(text, share):
    said[share.index] = text
    mine = json.loads(text)
    failed = {"problem": "OSError: [Errno 116] Stale file handle", "same": {}, "facts": {}}
    return [json.dumps(failed), text] if share.index == 1 else [text, json.dumps(mine)]
  monkeypatch.setattr(hosts, "all_texts", exchange)
  def stale():
    raise OSError(116, "Stale file handle")
  with pytest.raises(OSError, match="Stale file handle"):
    hosts.on_every_process(hosts.Share(0, 2), stale)
  assert "Stale file handle" in json.loads(said[0])["problem"]
  with pytest.raises(hosts.HostsError, match="process 0 of 2 stopped: OSError"):
    hosts.on_every_process(hosts.Share(1, 2), lambda: 3)
