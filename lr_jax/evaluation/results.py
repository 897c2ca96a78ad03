"""The evaluation's `results.jsonl`: one line per finished (image, strategy) pair,
keyed by everything its result depends on.

A pair's key holds its manifest row and strategy and a hash of its inputs (the
decoded pixels of the image, the prompts, the class id, the decoded object mask, for
the RGN strategies the checkpoint step) and of the folder's settings; the inputs
themselves are kept in the line too (`inputs`), so a rerun that finds a pair's
inputs changed says what changed and redoes it. Every line is checked when read:
one that is not a result is an error naming the file and the line.

A job of several processes (`lr_jax.hosts`) writes one file per process,
`shares/results.p<index>-of-<count>.jsonl`, in the same format; process 0 merges them
into `results.jsonl` (`read_stored`: the lines already there first, then those of the
shares by manifest row and strategy, the order a single process writes them in) and
removes them. Any later run, of any number of processes, reads the shares left by a
killed job as finished pairs.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import pathlib
import time
from typing import Any, Iterable, Sequence

import numpy as np

from lr_common import output_files
from lr_common.errors import UserError
from lr_jax.files import manifest as manifest_lib

RESULTS_FILE = "results.jsonl"
SHARES_DIR = "shares"
RGN_STRATEGIES = ("rgn", "refine")


class ResultsError(UserError, ValueError):
  """A results file that cannot be used (the message names the file and the line)."""


def array_sha1(array: np.ndarray | None) -> str | None:
  """A hash of an array's dtype, shape and values (None for None)."""
  if array is None:
    return None
  array = np.ascontiguousarray(array)
  digest = hashlib.sha1(f"{array.dtype.str}{array.shape}".encode())
  digest.update(array.tobytes())
  return digest.hexdigest()


def settings_sha1(settings: dict[str, Any]) -> str:
  return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def pair_inputs(example: manifest_lib.Example, image_sha1: str, mask_sha1: str | None,
                strategy: str, rgn_step: int | None = None) -> dict[str, Any]:
  """What the result of one pair depends on besides its row, strategy and settings
  (the hashes: `array_sha1` of the decoded image and object mask)."""
  inputs = {"image_sha1": image_sha1, "prompt": example.prompt,
            "source_prompt": example.source_prompt, "class_id": example.class_id,
            "mask_sha1": mask_sha1}
  if strategy in RGN_STRATEGIES:
    inputs["rgn_step"] = rgn_step
  return inputs


def pair_key(index: int, strategy: str, inputs: dict[str, Any], settings_id: str) -> str:
  """The identity of a result line: manifest row, strategy, and the hash of its inputs
  and settings."""
  digest = hashlib.sha1(json.dumps([inputs, settings_id], sort_keys=True).encode())
  return f"{index}|{strategy}|{digest.hexdigest()[:20]}"


# ---------------------------------------------------------------- reading, checking

_NUMBER = (int, float)
_FIELDS = {"key": str, "index": int, "image": str, "prompt": str, "strategy": str,
           "seconds": _NUMBER, "includes_compile": bool, "metrics": dict, "files": dict,
           "chosen_box_tlhw_pixels": list, "editor_box_tlhw_pixels": list}


def _type_name(kind) -> str:
  return "a number" if kind == _NUMBER else {
      str: "a string", int: "an integer", bool: "true or false", dict: "an object",
      list: "a list"}[kind]


def result_problem(row: Any) -> str | None:
  """What makes a parsed line not a result line (None: it is one)."""
  if not isinstance(row, dict):
    return f"a JSON {type(row).__name__}, not an object"
  missing = [k for k in _FIELDS if k not in row]
  if missing:
    return f"no {', '.join(repr(k) for k in missing)}"
  for name, kind in _FIELDS.items():
    value = row[name]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
      return f"{name!r} must be {_type_name(kind)}, got {value!r}"[:200]
  if row["index"] < 0:
    return f"'index' must be >= 0, got {row['index']}"
  if not isinstance(row.get("regions"), (dict, type(None))):
    return "'regions' must be an object or null"
  for group in ("metrics", "regions"):
    for name, value in (row.get(group) or {}).items():
      if value is not None and not isinstance(value, _NUMBER):
        return f"{group} {name!r} must be a number, true/false or null, got {value!r}"[:200]
  for name in ("chosen_box_tlhw_pixels", "editor_box_tlhw_pixels"):
    box = row[name]
    if len(box) != 4 or any(isinstance(v, bool) or not isinstance(v, _NUMBER) for v in box):
      return f"{name!r} must be 4 numbers (top, left, height, width), got {box!r}"[:200]
  if not isinstance(row["files"].get("edited"), str):
    return "'files' has no 'edited' path"
  return None


def read_results(out_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The result lines of an evaluation folder (none if it has no results yet); a line
  that is not JSON, or not a result, is a ResultsError naming it."""
  return read_lines(pathlib.Path(out_dir) / RESULTS_FILE)


def _read_text(path: pathlib.Path, tries: int = 4, pause_s: float = 0.25) -> str:
  """The file's text; a stale NFS handle (another host replaced the file while it was
  opened here) is read again, up to `tries` times."""
  attempt = 1
  while True:
    try:
      return path.read_text(encoding="utf-8")
    except OSError as e:
      if e.errno != errno.ESTALE or attempt >= tries:
        raise
    attempt += 1
    time.sleep(pause_s)


def read_lines(path: pathlib.Path) -> list[dict[str, Any]]:
  """The result lines of one results file (`read_results`), or of one process's share."""
  if not path.is_file():
    return []
  try:
    text = _read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise ResultsError(f"{path}: cannot be read ({e}); move it away to start afresh") from None
  rows = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      problem = "is not JSON"
    else:
      problem = result_problem(row)
      problem = problem and f"is not a result line ({problem})"
    if problem:
      raise ResultsError(f"{path}: line {number} {problem}; the file was edited by hand? "
                         "Remove that line (its pair is then redone) to resume")
    rows.append(row)
  return rows


# ---------------------------------------------------------------- shares of processes

def share_path(out_dir: str | pathlib.Path, index: int, count: int) -> pathlib.Path:
  """The results file of process `index` of `count`."""
  return pathlib.Path(out_dir) / SHARES_DIR / f"results.p{index}-of-{count}.jsonl"


def share_files(out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """The processes' results files in a folder, in name order."""
  folder = pathlib.Path(out_dir) / SHARES_DIR
  return sorted(folder.glob("results.p*-of-*.jsonl")) if folder.is_dir() else []


@dataclasses.dataclass
class Stored:
  """What a folder holds: `results.jsonl`'s lines, then the lines only in shares."""
  rows: list[dict[str, Any]]
  from_shares: set[str]           # keys of the lines that come from share files
  files: list[pathlib.Path]       # the share files read


def read_stored(out_dir: str | pathlib.Path, strategies: Sequence[str] = ()) -> Stored:
  """`results.jsonl`'s lines, then each line of the share files whose key is not there,
  ordered by manifest row and then by strategy (as in `strategies`; others after them
  by name). A share line whose key `results.jsonl` has too takes that line's place: it
  is newer (a pair redone because its line no longer held, e.g. its photo moved)."""
  rows = read_results(out_dir)
  where = {r["key"]: i for i, r in enumerate(rows)}
  extra, from_shares = {}, set()
  files = share_files(out_dir)
  for path in files:
    for row in read_lines(path):
      key = row["key"]
      from_shares.add(key)
      if key in where:
        rows[where[key]] = row
      else:
        extra.setdefault(key, row)
  rank = {s: n for n, s in enumerate(strategies)}
  ordered = sorted(extra.values(),
                   key=lambda r: (r["index"], rank.get(r["strategy"], len(rank)), r["strategy"]))
  return Stored(rows + ordered, from_shares, files)


def remove_shares(files: Iterable[pathlib.Path]) -> None:
  """Removes merged share files (and their folder once empty)."""
  folders = set()
  for path in files:
    path.unlink(missing_ok=True)
    folders.add(path.parent)
  for folder in folders:
    try:
      folder.rmdir()
    except OSError:   # not empty (a lock, a file of the user's): left
      pass


def _finite(value: Any) -> Any:
  """JSON-safe: a NaN or infinite number becomes None."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def write_results(out_dir: pathlib.Path, rows: Iterable[dict[str, Any]]) -> None:
  """All lines at once, atomically: a kill leaves the old file or the new one."""
  write_lines(pathlib.Path(out_dir) / RESULTS_FILE, rows)


def write_lines(path: pathlib.Path, rows: Iterable[dict[str, Any]]) -> None:
  """`write_results` into any results file (a process's share)."""
  text = "".join(json.dumps(_finite(r), allow_nan=False) + "\n" for r in rows)
  output_files.write_text(path, text, overwrite=True)


# ---------------------------------------------------------------- what is still to do

def why_redo(row: dict[str, Any], inputs: dict[str, Any], settings_id: str) -> str:
  """Why a line of the same row and strategy no longer holds this pair's result."""
  old = row.get("inputs")
  if not isinstance(old, dict):
    return "its line comes from an earlier lr_jax (no record of its inputs)"
  names = {"image_sha1": "the image's content", "mask_sha1": "the object mask",
           "rgn_step": "the RGN checkpoint step"}
  changed = [names.get(k, f"the {k}") for k in sorted(set(old) | set(inputs))
             if old.get(k) != inputs.get(k)]
  if row.get("settings_sha1") != settings_id:
    changed.append("the settings")
  return f"{' and '.join(changed) or 'its inputs'} changed"


def split(rows: list[dict[str, Any]], wanted: dict[tuple[int, str], dict[str, Any]],
          settings_id: str) -> tuple[list[dict[str, Any]], list[tuple[int, str]],
                                     dict[tuple[int, str], str]]:
  """(lines kept, pairs to do, {pair: why it is redone}) for the wanted pairs
  {(index, strategy): {"key", "inputs"}}.

  A line of a wanted pair with another key is stale: it is dropped and its pair
  redone; so is a line whose edited photo is gone. Lines of pairs not wanted now
  (another strategy, a row past the manifest's end) are kept as they are.
  """
  done, kept, redo = set(), [], {}
  for row in rows:
    pair = (row["index"], row["strategy"])
    if pair not in wanted:
      kept.append(row)
    elif pair in done:
      continue   # a repeated line: the first one counts
    elif row["key"] != wanted[pair]["key"]:
      redo[pair] = why_redo(row, wanted[pair]["inputs"], settings_id)
    elif not pathlib.Path(row["files"]["edited"]).is_file():
      redo[pair] = f"its edited photo {row['files']['edited']} is gone"
    else:
      done.add(pair)
      redo.pop(pair, None)
      kept.append(row)
  todo = [pair for pair in wanted if pair not in done]
  return kept, todo, redo
