"""An evaluation split over the processes of one job (`lr_jax.hosts`): the same call on
every process, the folder on a file system they all see.

Process k of n edits the pairs (image i, strategy j) with (i + j) mod n == k that the
folder does not hold yet (`hosts.pair_process`), on its own devices, and rewrites its
own file `shares/results.p<k>-of-<n>.jsonl` atomically after each pair: a kill loses
the pair in flight only. Process 0 holds the folder for the whole job (`evaluate.lock`;
the others hold nothing, and stop with it when it cannot get the folder). After its own
share it polls the other shares until every pair is there, merges them into
`results.jsonl` in the order one process writes (`results.read_stored`), removes them
and writes the report; a job whose other processes finish no pair for `wait_s` seconds
is stopped with a message naming what is missing. The others, once done, wait for
process 0 to let the folder go, so that none reaches JAX's shutdown (where processes
wait for each other only a few minutes) long before the rest.

A killed process keeps its finished pairs in its share; JAX's coordination service ends
the other processes soon after (they miss its heartbeat). Running the command again, on
any number of processes (one too), skips every finished pair, wherever its line is, and
redoes only the lost ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import time
from typing import Any, Callable, Sequence

from lr_common import folder_lock
from lr_common import output_files
from lr_jax import hosts
from lr_jax.evaluation import results as results_lib
from lr_jax.evaluation import runner
from lr_jax.files import manifest as manifest_lib
from lr_jax.models import Built

POLL_S = 0.5   # how often a waiting process looks at the folder


def _identity(p: runner.Plan) -> dict[str, str]:
  """What every process of a job must have alike (hashes)."""
  pairs = sorted([i, s, w["inputs"]] for (i, s), w in p.wanted.items())
  digest = lambda value: hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()
  return {"settings (config and flags)": results_lib.settings_sha1(p.settings),
          "pairs (manifest rows, their images, prompts and masks, strategies)": digest(pairs)}


def owner(p: runner.Plan, pair: tuple[int, str], count: int) -> int:
  """The process that edits `pair` in a job of `count` processes."""
  return hosts.pair_process(pair[0], p.strategies.index(pair[1]), count)


DEFAULT_WAIT_S = 3600.0   # how long process 0 waits for a next pair of the others


def evaluate_and_report(config, examples: list[manifest_lib.Example],
                        strategies: Sequence[str], out_dir: str | pathlib.Path,
                        share: hosts.Share = hosts.SINGLE, *,
                        wait_s: float = DEFAULT_WAIT_S, **kwargs
                        ) -> tuple[list[dict[str, Any]], dict[str, pathlib.Path]]:
  """`runner.evaluate_and_report` as process `share` of a job (a single process: just
  that): process 0 reports; the others return their own lines and no files."""
  if not share.several:
    return runner.evaluate_and_report(config, examples, strategies, out_dir, **kwargs)
  return evaluate(config, examples, strategies, out_dir, share, wait_s=wait_s,
                  then=runner.report_new, **kwargs)


def evaluate(config, examples: list[manifest_lib.Example], strategies: Sequence[str],
             out_dir: str | pathlib.Path, share: hosts.Share, *, wait_s: float,
             built: Built | None = None, progress: bool = True,
             then: Callable[[runner.Plan, list, list], dict] | None = None, **plan_args
             ) -> tuple[list[dict[str, Any]], dict[str, pathlib.Path]]:
  """`runner.evaluate` as process `share` of a job: every process checks and agrees
  (`hosts.agree`) before any work, edits its share; process 0 merges, calls
  `then(plan, lines, new pairs)` (the report) and returns all lines and what `then`
  returned; the others return their own lines and no files."""
  checked, problem = None, None
  try:   # 1. every process checks everything (writes nothing), and they agree
    checked = runner.plan(config, examples, strategies, out_dir, **plan_args)
    mine = results_lib.share_path(checked.out_dir, share.index, share.count)
    output_files.check_folder(mine.parent)
    output_files.check_outputs([mine], overwrite=True)
  except Exception as e:  # pylint: disable=broad-except  (any error: all stop, `agree`)
    problem = e
  hosts.agree(problem, share, checked and _identity(checked))
  lock, holder = _hold(checked, share)   # 2. process 0 takes the folder, the others see it
  try:
    rows = _own_share(checked, share, built, progress)
    if not share.main:
      _wait_for_main(checked, share, holder)
      return rows, {}
    merged, new = _merge(checked, share, wait_s)
    return merged, (then(checked, merged, new) if then else {})
  finally:
    if lock is not None:
      folder_lock.release(lock)


def _hold(p: runner.Plan, share: hosts.Share) -> tuple[pathlib.Path | None, str]:
  """Process 0 takes the folder (`evaluate.lock`) and writes its settings; every process
  checks that it sees them; all stop if any of that fails (a folder made now is removed).
  Returns the lock (process 0's; None elsewhere) and its text."""
  lock, problem, made = None, None, None
  if share.main:
    try:
      made = None if p.out_dir.exists() else p.out_dir
      p.out_dir.mkdir(parents=True, exist_ok=True)
      lock = folder_lock.acquire(p.out_dir, runner.LOCK_FILE, doing="evaluated",
                                 flag="--out", error=runner.EvaluationError)
      runner.check_folder(p.out_dir, p.settings)   # again: another run may have started it
      runner.write_settings(p)
    except Exception as e:  # pylint: disable=broad-except  (any error: all stop, `agree`)
      problem = e
  try:
    holder = hosts.agree(problem, share, facts={"lock": lock and lock.read_text()})[0]["lock"]
    hosts.agree(None if share.main else _sees(p, holder), share)
  except Exception:
    if lock is not None:
      folder_lock.release(lock)
    if made is not None:   # a job that did not start leaves no folder behind
      with contextlib.suppress(OSError):
        (made / runner.SETTINGS_FILE).unlink(missing_ok=True)
        made.rmdir()
    raise
  return lock, holder


def _sees(p: runner.Plan, holder: str) -> Exception | None:
  """Why this process cannot work in process 0's folder (None: it can)."""
  lock = p.out_dir / runner.LOCK_FILE
  try:
    if lock.read_text() == holder:
      return None
  except OSError:
    pass
  return runner.EvaluationError(
      f"{lock}, just written by process 0, is not there for this process: --out must be "
      "one folder that every process sees (the same path, on a file system all hosts "
      "share: NFS, Filestore, a gcsfuse bucket)")


def _own_share(p: runner.Plan, share: hosts.Share, built: Built | None,
               progress: bool) -> list[dict[str, Any]]:
  """Edits this process's pairs the folder does not hold; returns its share file's lines."""
  path = results_lib.share_path(p.out_dir, share.index, share.count)
  share_pairs = [pair for pair in p.wanted if owner(p, pair, share.count) == share.index]
  problem, todo, rows = None, [], []
  try:
    stored = results_lib.read_stored(p.out_dir, p.strategies)
    _, todo, _ = runner.stored_pairs(p, stored, quiet=not share.main)
    todo = [pair for pair in todo if owner(p, pair, share.count) == share.index]
    rows = results_lib.read_lines(path)   # this process's lines of a killed job stay
  except Exception as e:  # pylint: disable=broad-except  (any error: all stop, `agree`)
    problem = e
  # Every to-do list is made before process 0 may merge the shares and remove them (a
  # process reading the folder in between would see its pairs nowhere and redo them).
  hosts.agree(problem, share)
  done = len(share_pairs) - len(todo)
  print(f"evaluate: {share}: {len(share_pairs)} of {len(p.wanted)} pairs ("
        f"{len({i for i, _ in p.wanted})} images x {len(p.strategies)} strategies) are its "
        "share; " + (f"{done} already done, skipped, " if done else "")
        + (f"{len(todo)} to edit" if todo else "nothing to edit"), flush=True)
  if todo:
    path.parent.mkdir(exist_ok=True)
    runner.edit_and_measure(p, rows, todo, built, progress, done, path=path,
                            total=len(share_pairs))
  return rows


def _merge(p: runner.Plan, share: hosts.Share, wait_s: float
           ) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
  """Process 0: waits until the folder holds every pair (a job that finishes none for
  `wait_s` seconds is an error), merges the shares into `results.jsonl`; returns the
  plan's lines and the pairs new since the last report."""
  said, left, since = False, None, time.monotonic()
  while True:
    stored = results_lib.read_stored(p.out_dir, p.strategies)
    rows, todo, new = runner.stored_pairs(p, stored, quiet=True)
    if not todo:
      break
    if left is None or len(todo) < left:
      left, since = len(todo), time.monotonic()
    elif time.monotonic() - since > wait_s:
      raise runner.EvaluationError(_stalled(p, share, todo, wait_s))
    if not said:
      who = sorted({owner(p, pair, share.count) for pair in todo})
      print(f"evaluate: {share} waits for {len(todo)} pairs of process"
            f"{'es' if len(who) > 1 else ''} {', '.join(map(str, who))} "
            f"({p.out_dir / results_lib.SHARES_DIR})", flush=True)
      said = True
    time.sleep(POLL_S)
  results_lib.write_results(p.out_dir, rows)
  results_lib.remove_shares(stored.files)
  print(f"evaluate: every share merged into {p.out_dir / results_lib.RESULTS_FILE}",
        flush=True)
  return runner.current_rows(p, rows), new


def _stalled(p: runner.Plan, share: hosts.Share, todo: list[tuple[int, str]],
             wait_s: float) -> str:
  who = sorted({owner(p, pair, share.count) for pair in todo})
  missing = [k for k in who if not results_lib.share_path(p.out_dir, k, share.count).exists()]
  examples = ", ".join(f"{pathlib.Path(p.examples[i].image_path).name} {s}"
                       for i, s in todo[:3])
  return (f"no pair of process{'es' if len(who) > 1 else ''} {', '.join(map(str, who))} "
          f"finished in {wait_s:g} s; {len(todo)} of {len(p.wanted)} pairs are missing "
          f"({examples}{', ...' if len(todo) > 3 else ''})"
          + (f"; nothing of process {', '.join(map(str, missing))} is in "
             f"{p.out_dir / results_lib.SHARES_DIR}: is --out a folder every host sees?"
             if missing else "")
          + ". The finished pairs are kept: run the same command again on every process "
          "to do the rest (--wait_for_shares: how long to wait)")


def _wait_for_main(p: runner.Plan, share: hosts.Share, holder: str) -> None:
  """The other processes: waits until process 0 lets the folder go, then checks that it
  merged every pair."""
  lock = p.out_dir / runner.LOCK_FILE
  while True:
    try:
      if lock.read_text() != holder:
        break
    except OSError:   # removed: process 0 is done
      break
    time.sleep(POLL_S)
  keys = {r["key"] for r in results_lib.read_results(p.out_dir)}
  missing = [pair for pair, w in p.wanted.items() if w["key"] not in keys]
  if missing:
    raise runner.EvaluationError(
        f"{share}: process 0 let {p.out_dir} go with {len(missing)} of {len(p.wanted)} pairs "
        "not in results.jsonl (see its output); run the same command again on every "
        "process to finish")
  print(f"evaluate: {share}: done; process 0 merged every share into "
        f"{p.out_dir / results_lib.RESULTS_FILE}", flush=True)
