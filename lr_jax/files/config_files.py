"""Finding config files (`configs/*.py`) from any folder: the CLIs and notebooks use the
repository checkout that holds the imported package when a path is not found as given."""
from __future__ import annotations

import os
import pathlib

REPO_ENV_VAR = "LR_JAX_REPO"


def checkouts(repo_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Folders that may hold `configs/`, in the order they are searched: `repo_dir`,
  `$LR_JAX_REPO`, the checkout holding the imported `lr_jax` (a source tree or an
  editable install), the current folder."""
  candidates = []
  if repo_dir:
    candidates.append(pathlib.Path(repo_dir).expanduser())
  if os.environ.get(REPO_ENV_VAR):
    candidates.append(pathlib.Path(os.environ[REPO_ENV_VAR]).expanduser())
  candidates.append(pathlib.Path(__file__).resolve().parents[2])
  candidates.append(pathlib.Path.cwd())
  return candidates


def resolve(path: str) -> tuple[str, list[str]]:
  """(the path to load, the places tried) for a `--config` value `PATH[:ARG]`.

  A path that exists as given is kept; a relative one that does not is looked up in
  each checkout (so `configs/tiny.py` works from any folder)."""
  file, sep, arg = path.partition(":")
  tried = [file]
  if os.path.isfile(file) or os.path.isabs(file):
    return path, tried
  for repo in checkouts():
    candidate = repo / file
    tried.append(str(candidate))
    if candidate.is_file():
      return str(candidate) + sep + arg, tried
  return path, tried


def load_sibling(config_file: str | os.PathLike, name: str, arg: str | None = None):
  """`get_config(arg)` of `configs/<name>.py` beside `config_file` (a config file building on
  another one: config files are loaded by path, not imported as a package)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(config_file).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"lr_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def define_config_flag(default_name: str):
  """The commands' locked `--config` flag, defaulting to configs/<default_name>.py
  (found in the repository checkout from any folder)."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  return config_flags.DEFINE_config_file(
      "config", resolve(f"configs/{default_name}.py")[0],
      "Config file (configs/*.py; found in the repository checkout from any folder).",
      lock_config=True)
