"""One writer per folder: a lock file naming the process that holds the folder.

The lock (e.g. `train.lock` in a training workdir, `evaluate.lock` in an evaluation
folder) is a small JSON file: pid, host, start time. It is created with O_EXCL, so of
two runs started together one gets it. A second run is refused with a message naming
the holder; a lock left by a run that ended without removing it (killed) on this host
is taken over with a warning. A lock from another host cannot be checked from here:
it is refused, and the message says which file to delete if that run is gone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import time
from typing import Iterator

from lr_common.errors import UserError


class FolderBusyError(UserError, RuntimeError):
  """Another run holds the folder."""


_HELD: dict[pathlib.Path, int] = {}   # locks this process holds -> nesting depth


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's live process
    return True
  except (OverflowError, ValueError):   # not a pid at all
    return False
  return True


def _holder(path: pathlib.Path) -> dict | None:
  """The lock's holder {pid, host, started}, or None when the file is unreadable."""
  try:
    holder = json.loads(path.read_text())
    return {"pid": int(holder["pid"]), "host": str(holder["host"]),
            "started": holder.get("started")}
  except FileNotFoundError:
    raise
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None


def acquire(folder: str | os.PathLike, name: str, *, doing: str = "used",
            flag: str = "--out", error: type[Exception] = FolderBusyError) -> pathlib.Path:
  """Marks `folder` (which exists) as held by this process: `folder/name`.

  `doing` words the messages ("is being {doing} by another run"), `flag` is the option
  that picks another folder, `error` the exception a busy folder raises."""
  path = pathlib.Path(folder) / name
  mine = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  for _ in range(5):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      pass
    else:
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps(mine))
      return path
    try:
      holder = _holder(path)
      if holder is None and time.time() - path.stat().st_mtime < 2.0:
        time.sleep(0.5)   # maybe a run writing its lock right now: read it again
        holder = _holder(path)
    except FileNotFoundError:   # released meanwhile: try again
      continue
    if holder is not None and holder["host"] != mine["host"]:
      raise error(f"{folder} is being {doing} by pid {holder['pid']} on host "
                  f"{holder['host']} (since {holder['started']}); use another {flag}, or "
                  f"delete {path} if that run is gone.")
    if holder is not None and holder["pid"] != mine["pid"] and _alive(holder["pid"]):
      raise error(f"{folder} is being {doing} by another run (pid {holder['pid']}, since "
                  f"{holder['started']}); wait for it to finish or use another {flag}.")
    _take_over(path, holder)
  raise error(f"{folder}: cannot take the lock {path} (other runs keep taking it); "
              f"use another {flag}.")


def _take_over(path: pathlib.Path, holder: dict | None) -> None:
  """Removes a lock whose run has ended (moved aside first, so that a fresh lock another
  run wrote meanwhile is put back rather than removed)."""
  aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
  try:
    os.replace(path, aside)
  except FileNotFoundError:
    return
  try:
    moved = _holder(aside)
  except FileNotFoundError:
    return
  if moved != holder:   # not the lock we judged stale: give it back
    with contextlib.suppress(OSError):
      os.link(aside, path)
    aside.unlink(missing_ok=True)
    return
  aside.unlink(missing_ok=True)
  who = f"pid {holder['pid']}" if holder else "unreadable lock file"
  logging.warning("Taking over %s: the run that held it (%s) has ended.", path, who)


def release(path: pathlib.Path) -> None:
  """Removes this process's lock (another process's lock is left alone)."""
  try:
    if json.loads(pathlib.Path(path).read_text()).get("pid") == os.getpid():
      pathlib.Path(path).unlink()
  except (OSError, ValueError, AttributeError):
    pass


@contextlib.contextmanager
def held(folder: str | os.PathLike, name: str, **kwargs) -> Iterator[pathlib.Path]:
  """`acquire` for the block, then `release`; a lock this process already holds is
  held again (nested blocks) and released by the outermost block."""
  path = (pathlib.Path(folder) / name).absolute()
  if path in _HELD:
    _HELD[path] += 1
  else:
    acquire(folder, name, **kwargs)
    _HELD[path] = 1
  try:
    yield path
  finally:
    _HELD[path] -= 1
    if not _HELD[path]:
      del _HELD[path]
      release(path)
