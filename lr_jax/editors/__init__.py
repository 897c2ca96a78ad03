"""Generators the region method can edit with, picked by `config.editor.name`.

A config has ONE editor section: `config.editor` holds `name` and that editor's own
settings (big_vision's model name + model settings); `use(config, name)` swaps it
whole, so nothing of another editor stays behind. `named(name)` imports
`lr_jax.editors.<name>` (or, for a dotted name, that module: a generator of your own);
every module follows the contract in `base.py`, which `tests/test_editors.py` checks
for each module here.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from absl import logging
import ml_collections

from lr_common.errors import SettingsError

DEFAULT = "maskgit"
DEFAULT_CONFIG = "maskgit_imagenet256"   # configs/<this>.py: the default editor's paper setup
_CONTRACT = ("CONFIGS", "RGN_KEYS", "RESUMABLE_KEYS", "default_config", "make", "build",
             "weight_files", "download_lines")


def available() -> list[str]:
  """The editor modules shipped in this package (`base` is the contract; modules whose
  name starts with "_" are helpers the editors share)."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if m.name != "base" and not m.name.startswith("_"))


def named(name: str) -> ModuleType:
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


def configs(name: str) -> tuple[str, str]:
  """(paper config, tiny config): the names of editor `name`'s files in configs/."""
  return tuple(named(name).CONFIGS)


def section(name: str) -> ml_collections.ConfigDict:
  """The `editor` section of editor `name`: its name and its default settings."""
  values = named(name).default_config()
  if "name" in values:
    raise SettingsError(f"editor {name}: default_config() must not define 'name'")
  return ml_collections.ConfigDict({"name": name, **values.to_dict()})


def use(config: ml_collections.ConfigDict, name: str = DEFAULT) -> None:
  """Makes `name` the config's editor, with its default settings (the section is
  replaced whole)."""
  config.editor = section(name)


def of(config) -> ModuleType:
  """The editor module a config names (its section must be that editor's: see `fit`)."""
  if "editor" not in config or "name" not in config.editor:
    raise SettingsError("the config has no editor section (config.editor.name)")
  return named(config.editor.name)


def fit(config: ml_collections.ConfigDict) -> None:
  """Makes the editor section match `editor.name` after a command-line switch
  (`--config.editor.name=amused` on a MaskGIT config): the other editor's settings are
  dropped (named in a warning) and the new editor's defaults added. Settings both
  share keep their values. Call on an unlocked config, before it is parsed."""
  expected = section(config.editor.name)
  present = set(config.editor.keys())
  foreign = sorted(present - set(expected.keys()))
  missing = sorted(set(expected.keys()) - present)
  if not foreign and not missing:
    return
  if foreign:
    logging.warning("editor %s: dropping settings of another editor: %s",
                    config.editor.name, ", ".join(f"editor.{k}" for k in foreign))
  values = {k: config.editor[k] for k in expected.keys() if k in present}
  with config.unlocked() if hasattr(config, "unlocked") else _nothing():
    config.editor = ml_collections.ConfigDict({**expected.to_dict(), **values})


class _nothing:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def upgrade_saved(flat: dict[str, Any]) -> dict[str, Any]:
  """A flattened config saved before the single editor section (`maskgit.*` + `edit.*`,
  `amused.*` + `amused_edit.*`) in today's layout: the saved editor's old sections
  become `editor.*` keys (renamed where its `LEGACY_SECTIONS` says), the other
  editors' leftovers are dropped. Today's layout passes unchanged."""
  name = flat.get("editor.name", DEFAULT)
  legacy = {m: getattr(named(m), "LEGACY_SECTIONS", {}) for m in available()}
  if not any(k.split(".", 1)[0] in sections for sections in legacy.values() for k in flat):
    return dict(flat)
  own = legacy.get(name, {})
  old_sections = {s for sections in legacy.values() for s in sections}
  upgraded = {}
  for key, value in flat.items():
    head, _, rest = key.partition(".")
    if head in own:
      upgraded[f"editor.{own[head].get(rest, rest)}"] = value
    elif head not in old_sections:
      upgraded[key] = value
  upgraded["editor.name"] = name
  return upgraded
