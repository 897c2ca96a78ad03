"""Writing results without losing anything: outputs are checked before any work starts,
written to a temporary file in their folder and renamed into place, and an existing file
(or a symbolic link) at an output name is never replaced unless asked to."""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat
import tempfile
from typing import Iterator, Optional, Sequence

from lr_common.errors import UserError


class OutputError(UserError, ValueError):
  """An output cannot, or must not, be written (the message says why and what to do)."""


def _name_max(folder: pathlib.Path) -> int:
  try:
    return os.pathconf(folder, "PC_NAME_MAX")
  except (OSError, ValueError):
    return 255


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
  """The nearest parent of `path` that exists (as anything, links included)."""
  folder = path.parent
  while not os.path.lexists(folder) and folder != folder.parent:
    folder = folder.parent
  return folder


_REASONS = {errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOENT: "a virtual file system that takes no new files",
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "the disk quota is used up"}


def write_problem(folder: str | os.PathLike) -> Optional[str]:
  """Why no file can be created in the existing `folder` (None when one can). Asks the
  file system itself, so a read-only mount, a virtual file system (/proc, /sys) or
  missing permissions are found also where `os.access` says yes (as root): a
  temporary file is created there and removed at once."""
  try:
    fd, name = tempfile.mkstemp(prefix=".write_check.", dir=folder)
  except OSError as e:
    return _REASONS.get(e.errno, e.strerror or str(e))
  os.close(fd)
  os.unlink(name)
  return None


def output_problem(path: pathlib.Path, overwrite: bool = False,
                   flag: str = "--overwrite",
                   _probed: Optional[dict] = None) -> Optional[str]:
  """Why `path` cannot or must not be written (None when it can)."""
  path = pathlib.Path(path)
  folder = _existing_ancestor(path)
  if not os.path.isdir(folder):
    what = "a file, not a folder" if os.path.isfile(folder) else "not a folder"
    return f"cannot write {path}: {folder} is {what}"
  limit = _name_max(folder)
  for part in path.relative_to(folder).parts:
    size = len(os.fsencode(part))
    if size > limit:
      return (f"cannot write {path}: the name {part[:20]}... is {size} bytes, longer "
              f"than this file system allows ({limit})")
  try:
    info = os.lstat(path)
  except FileNotFoundError:
    info = None
  except OSError as e:
    if e.errno == errno.ENAMETOOLONG:
      return f"cannot write {path}: file name too long for this file system"
    return f"cannot write {path}: {e.strerror or e}"
  if not os.access(folder, os.W_OK | os.X_OK):
    return f"cannot write {path}: the folder {folder} is not writable"
  probed = {} if _probed is None else _probed
  if folder not in probed:
    probed[folder] = write_problem(folder)
  if probed[folder]:
    return f"cannot write {path}: cannot create files in {folder} ({probed[folder]})"
  if info is None:
    return None
  if stat.S_ISLNK(info.st_mode):
    if overwrite:
      return None
    return (f"{path} is a symbolic link (to {os.readlink(path)}); pass {flag} to "
            "replace the link itself (its target is left alone)")
  if stat.S_ISDIR(info.st_mode):
    return f"cannot write {path}: it is a folder"
  if not stat.S_ISREG(info.st_mode):
    return f"cannot write {path}: it exists and is not a regular file"
  if overwrite:
    return None
  return f"{path} already exists; pass {flag} to replace it"


def check_outputs(paths: Sequence[pathlib.Path], overwrite: bool = False,
                  flag: str = "--overwrite") -> None:
  """Raises OutputError (one line) if any output cannot or must not be written."""
  paths = [pathlib.Path(p) for p in paths]
  probed = {}   # one write check per folder
  problems = [p for p in (output_problem(path, overwrite, flag, probed) for path in paths)
              if p]
  existing = f"pass {flag} to replace it"
  if len(problems) > 1 and all(p.endswith(existing) for p in problems):
    shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    problems = [f"{len(problems)} outputs already exist ({shown}); pass {flag} to "
                f"replace them, or write elsewhere"]
  if problems:
    raise OutputError(problems[0])


def check_folder(folder: str | os.PathLike) -> pathlib.Path:
  """An output folder that exists or can be created (checked, not created)."""
  folder = pathlib.Path(folder)
  try:
    info = os.stat(folder)
  except FileNotFoundError:
    info = None
  except OSError as e:
    reason = ("the name is too long for this file system" if e.errno == errno.ENAMETOOLONG
              else (e.strerror or str(e)))
    raise OutputError(f"cannot write into {folder}: {reason}") from None
  if info is None:
    problem = output_problem(folder)
    if problem:
      raise OutputError(problem)
  elif not stat.S_ISDIR(info.st_mode):
    raise OutputError(f"cannot write into {folder}: it is a file, not a folder")
  elif not os.access(folder, os.W_OK | os.X_OK):
    raise OutputError(f"cannot write into {folder}: the folder is not writable")
  else:
    problem = write_problem(folder)
    if problem:
      raise OutputError(f"cannot write into {folder}: {problem}")
  return folder


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False,
                flag: str = "--overwrite") -> Iterator[pathlib.Path]:
  """Yields a temporary path in `path`'s folder; when the block ends without an error
  the temporary file becomes `path` in one step.

  Without `overwrite` an existing name (a file or a link, even one that appeared after
  `check_outputs`) is never replaced; with it the name itself is replaced (a link, not
  its target). Nothing is left behind when the block fails.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # The temporary name keeps the extension (writers pick the format from it).
  fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem[:40]}.",
                                  suffix=f".partial{path.suffix}", dir=path.parent)
  os.close(fd)
  tmp = pathlib.Path(tmp_name)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    if overwrite:
      os.replace(tmp, path)
      return
    try:
      os.link(tmp, path)  # fails if the name exists: never replaces anything
    except FileExistsError:
      raise OutputError(f"{path} already exists; pass {flag} to replace it") from None
    except OSError:  # no hard links on this file system
      if os.path.lexists(path):
        raise OutputError(f"{path} already exists; pass {flag} to replace it") from None
      os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> pathlib.Path:
  """`text` to `path` through `atomic_path`."""
  with atomic_path(path, overwrite) as tmp:
    tmp.write_text(text)
  return pathlib.Path(path)
