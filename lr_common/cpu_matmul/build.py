r"""Builds the oneDNN bfloat16 matmul extension: `python -m lr_common.cpu_matmul.build`.

Needs g++ and oneDNN's headers and library, e.g. on Debian/Ubuntu:

  apt-get install g++ libdnnl-dev && python -m lr_common.cpu_matmul.build

(or `DNNL_ROOT=/opt/onednn` for a oneDNN installed elsewhere, with include/ and lib/).
The library goes to the cache folder (`LR_JAX_CPU_MATMUL_DIR`, else
~/.cache/lr_jax/cpu_matmul) under a name made from the source and the jaxlib version,
so a rebuilt jaxlib or an edited source never loads a stale build.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jaxlib

from lr_common.errors import UserError

SOURCE = pathlib.Path(__file__).with_name("onednn_matmul.cc")


class BuildError(UserError, RuntimeError):
  """The extension could not be compiled (no compiler, no oneDNN, a compile error)."""


def cache_dir() -> pathlib.Path:
  """Where built libraries are kept."""
  env = os.environ.get("LR_JAX_CPU_MATMUL_DIR")
  if env:
    return pathlib.Path(env)
  return pathlib.Path.home() / ".cache" / "lr_jax" / "cpu_matmul"


@functools.cache
def _source_digest() -> str:
  """Of the source and this jaxlib: read once a process (tracing asks per Dense layer)."""
  digest = hashlib.sha256(SOURCE.read_bytes())
  digest.update(jaxlib.__version__.encode())
  return digest.hexdigest()[:12]


def library_path() -> pathlib.Path:
  """The path the library for this source and this jaxlib has (built or not)."""
  return cache_dir() / f"lr_onednn_matmul_{_source_digest()}.so"


def _onednn_flags() -> list[str]:
  """Compiler flags that find oneDNN: DNNL_ROOT, this Python's prefix, else the system."""
  roots = [os.environ.get("DNNL_ROOT", ""), sys.prefix]
  for root in filter(None, roots):
    root_path = pathlib.Path(root)
    if (root_path / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
      lib = root_path / "lib"
      return [f"-I{root_path / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-ldnnl"]
  if os.environ.get("DNNL_ROOT"):
    raise BuildError(f"DNNL_ROOT={os.environ['DNNL_ROOT']} has no "
                     "include/oneapi/dnnl/dnnl.hpp")
  return ["-ldnnl"]


def build(force: bool = False) -> pathlib.Path:
  """Compiles the extension unless it is already built; returns the library's path."""
  target = library_path()
  if target.exists() and not force:
    return target
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise BuildError(f"no C++ compiler {compiler!r} (install g++ or set CXX)")
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    partial = pathlib.Path(tmp) / target.name
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC",
               "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", str(partial),
               *_onednn_flags()]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      detail = done.stderr.strip().splitlines()
      hint = ""
      if any("dnnl" in line for line in detail):
        hint = " (is oneDNN installed? e.g. apt-get install libdnnl-dev, or set DNNL_ROOT)"
      raise BuildError(f"compiling {SOURCE.name} failed{hint}: "
                       f"{' | '.join(detail[-3:]) or done.returncode}")
    os.replace(partial, target)  # atomic: a concurrent loader never sees half a file
  return target


def main() -> None:
  try:
    path = build(force="--force" in sys.argv[1:])
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(path)


if __name__ == "__main__":
  main()
