"""Every setting of a run, parsed and checked once at a command's entry.

`parse(config)` turns the ConfigDict (configs/*.py plus `--config.x.y` overrides) into a
frozen `Run`: the method's typed settings (`lr_jax.method.settings`), the training and
editing loops', the data's, which frozen models to load, and the editor (its static
part, from its module's `make`). Below the entry points functions take the parts they
need; the ConfigDict itself travels only to the editor module's `build` (its own
section) and into the workdir's `config.json`.
"""
from __future__ import annotations

import dataclasses
import json
from types import ModuleType
from typing import Any

import ml_collections

from lr_common.errors import SettingsError
from lr_jax import editors
from lr_jax.editors.base import Editor
from lr_jax.method import settings as settings_lib

MODEL_KINDS = ("official", "tiny")


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Where the training images come from (`config.data`)."""
  manifest: str = ""
  image_dir: str = ""
  prompt: str = ""
  samples: bool = False
  min_class_similarity: float = -1.0


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Which frozen encoders to load: real weights ("official") or tiny random ones."""
  kind: str = "official"
  dino_repo: str = "facebook/dino-vitb16"
  clip_repo: str = "openai/clip-vit-base-patch16"


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """The parsed config of one command."""
  method: settings_lib.Method
  train: settings_lib.TrainSettings
  infer: settings_lib.InferSettings
  data: DataSettings
  models: ModelSettings
  seed: int
  editor: Editor                       # static: sizes and settings, no weights
  editor_module: ModuleType            # its `build` loads the weights
  config: ml_collections.ConfigDict    # the source, for the editor's build and config.json

  def as_dict(self) -> dict[str, Any]:
    """The whole config as JSON values (what a workdir's config.json holds)."""
    return json.loads(self.config.to_json_best_effort())


def _data(config) -> DataSettings:
  values = dict(config.data.to_dict()) if "data" in config else {}
  names = {f.name for f in dataclasses.fields(DataSettings)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise SettingsError(f"config data has no field {unknown[0]!r}; fields: "
                        f"{', '.join(sorted(names))}")
  return DataSettings(**values)


def parse(config: ml_collections.ConfigDict | Run) -> Run:
  """Checks every setting (before anything is read or loaded) and returns them typed; a
  `Run` passes through."""
  if isinstance(config, Run):
    return config
  if config.models not in MODEL_KINDS:
    raise SettingsError(f"config models must be one of {MODEL_KINDS}, got {config.models!r}")
  seed = config.seed
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise SettingsError(f"config seed must be an integer, got {seed!r}")
  data = _data(config)
  models = ModelSettings(config.models, config.dino.repo, config.clip.repo)
  settings_lib.check_integers(config)   # any seed; every other integer within int32
  module = editors.of(config)
  editor = module.make(config)   # raises on a bad editor setting
  settings_lib.check(config)
  method = settings_lib.method(config)
  method.region.check_grid(editor.box_grid)
  return Run(method=method, train=settings_lib.train(config), infer=settings_lib.infer(config),
             data=data, models=models, seed=seed, editor=editor, editor_module=module,
             config=config)
