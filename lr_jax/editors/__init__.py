"""Generators the region method can edit with, picked by `config.editor.name`.

`get(name)` imports `lr_jax.editors.<name>` (or, for a dotted name, that module: a
generator of your own); every module follows the contract in `base.py`, which
`tests/test_editors.py` checks for each module here.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import ml_collections

from lr_jax.method.settings import SettingsError

DEFAULT = "maskgit"
DEFAULT_CONFIG = "maskgit_imagenet256"   # configs/<this>.py: the default editor's paper setup
_CONTRACT = ("CONFIG_SECTIONS", "RGN_KEYS", "RESUMABLE_KEYS", "default_config",
             "check_config", "make", "build", "weight_files")


def available() -> list[str]:
  """The editor modules shipped in this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def get(name: str) -> ModuleType:
  """The editor module `name` (a module of this package, or a dotted module path)."""
  path = name if "." in name else f"{__name__}.{name}"
  if "." not in name and name not in available():
    raise SettingsError(f"config editor.name: unknown editor {name!r}; editors: "
                        f"{', '.join(available())}")
  try:
    module = importlib.import_module(path)
  except ImportError as e:
    raise SettingsError(f"config editor.name: cannot import {path!r} ({e})") from None
  missing = [n for n in _CONTRACT if not hasattr(module, n)]
  if missing:
    raise SettingsError(f"editor module {path} lacks {', '.join(missing)} (see "
                        f"lr_jax/editors/base.py)")
  return module


def of(config) -> ModuleType:
  """The editor module a config names."""
  if "editor" not in config:
    raise SettingsError("the config has no editor section (config.editor.name)")
  return get(config.editor.name)


def add_defaults(config: ml_collections.ConfigDict, name: str = DEFAULT) -> None:
  """Adds `config.editor.name = name` and that editor's own default sections."""
  config.editor = ml_collections.ConfigDict({"name": name})
  for section, values in get(name).default_config().items():
    config[section] = values
