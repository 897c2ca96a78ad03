"""Training checkpoints (orbax `CheckpointManager`), the workdir's config guard, and
loading a trained RGN (`load_rgn_params`) for inference."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lr_common import folder_lock
from lr_common import seeds
from lr_common import json_files
from lr_common import output_files
from lr_common.errors import UserError
from lr_jax import defaults
from lr_jax import editors
from lr_jax import run_settings
from lr_jax.method import settings as settings_lib
from lr_jax.method import sharding
from lr_jax.method import step as step_lib


Config = ml_collections.ConfigDict | run_settings.Run


def resumable_keys(run: run_settings.Run) -> tuple[str, ...]:
  """Settings that may change between a run and its resumption without changing what
  the run computes (derived from `settings` and the editor module)."""
  return settings_lib.resumable_keys() + tuple(run.editor_module.RESUMABLE_KEYS)


def rgn_keys(run: run_settings.Run) -> tuple[str, ...]:
  """Settings that give a trained RGN's inputs and outputs their meaning (the box
  sizes, the editor's box grid, the feature widths); num_anchors may change."""
  return (("models", "editor.name") + settings_lib.rgn_keys()
          + tuple(run.editor_module.RGN_KEYS))


class WorkdirError(UserError, RuntimeError):
  """The workdir holds a checkpoint made with another config or other data."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def _within(flat: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
  return {k: v for k, v in flat.items()
          if any(k == p or k.startswith(p + ".") for p in prefixes)}


def _without(flat: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
  inside = _within(flat, prefixes)
  return {k: v for k, v in flat.items() if k not in inside}


def _as_flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return _flatten(json.loads(config.to_json_best_effort()))


# Settings added to lr_jax whose default is not what runs made before them did: a
# saved config without the key is filled with the old behaviour instead.
LEGACY_VALUES = {"region.canvas": "squeeze"}   # runs before the canvas setting squeezed


def _saved_flat(config_path: pathlib.Path) -> dict[str, Any]:
  """The saved config in today's layout (the old per-editor sections mapped onto
  `editor.*`: `editors.upgrade_saved`), with settings added to lr_jax after the run was
  made filled in with what the run did: their defaults, or `LEGACY_VALUES`."""
  saved = editors.upgrade_saved(_flatten(json_files.read_json(
      config_path, dict, "the config a training run was made with",
      "restore it, or point at another training workdir")))
  base = defaults.base_config()
  name = saved.get("editor.name", editors.DEFAULT)
  if name != editors.DEFAULT:
    editors.use(base, name)
  for key, value in _as_flat(base).items():
    saved.setdefault(key, LEGACY_VALUES.get(key, value))
  return saved


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
  """Whether `<workdir>/checkpoints` holds at least one saved step."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _config_diffs(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  return [f"  {k}: saved={saved.get(k)!r} now={current.get(k)!r}" for k in keys]


def _data_diff(saved: list[dict[str, Any]], current: list[dict[str, Any]]) -> str | None:
  if len(saved) != len(current):
    return f"{len(saved)} examples saved, {len(current)} now"
  for i, (old, new) in enumerate(zip(saved, current)):
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
      return (f"example {i} differs in {', '.join(changed)}: saved "
              f"{ {k: old.get(k) for k in changed} } now { {k: new.get(k) for k in changed} }")
  return None


def check_workdir(workdir: str | pathlib.Path, run: run_settings.Run,
                  data: list[dict[str, Any]] | None = None) -> pathlib.Path:
  """Creates the workdir, or checks that its run can be resumed with this config and data.

  Once the workdir holds a checkpoint, every differing setting (and a change in the
  training examples, `data`: one JSON-able dict per example) raises WorkdirError, so
  a run never resumes from (or overwrites) another experiment's checkpoint. Before
  the first checkpoint there is nothing to protect: the saved files are replaced,
  so a run that failed early (a typo in a path) can be rerun corrected.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_path, data_path = workdir / "config.json", workdir / "data.json"
  resumable = resumable_keys(run)
  current = _without(_as_flat(run.config), resumable)
  if config_path.exists() and has_checkpoint(workdir):
    saved = _without(_saved_flat(config_path), resumable)
    diffs = _config_diffs(saved, current)
    if diffs:
      raise WorkdirError(
          f"{workdir} holds a run made with another config; differing settings:\n"
          + "\n".join(diffs) + "\nUse a new --workdir, or rerun with the saved settings.")
    if data is not None and data_path.exists():
      saved_data = json_files.read_json(
          data_path, list, "the examples the run was trained on",
          "restore it, or use a new --workdir")
      if not all(isinstance(d, dict) for d in saved_data):
        raise WorkdirError(f"{data_path} should hold one object per example; restore it, "
                           "or use a new --workdir")
      diff = _data_diff(saved_data, data)
      if diff:
        raise WorkdirError(
            f"{workdir} holds a run trained on other data ({diff}). Resuming would "
            f"continue its batch order over different images. Use a new --workdir, "
            f"or restore the data the run was started with.")
  elif jax.process_index() == 0:   # one writer on a shared filesystem
    output_files.write_text(config_path, run.config.to_json_best_effort(indent=2, sort_keys=True),
                            overwrite=True)
    if data is not None:
      output_files.write_text(data_path, json.dumps(data, indent=1), overwrite=True)
  return workdir


def check_compatible(workdir: str | pathlib.Path, run: run_settings.Run,
                     prefixes: tuple[str, ...]) -> None:
  """Raises WorkdirError if the settings under `prefixes` differ from the workdir's run,
  or if the workdir does not say which settings its run had (no config.json)."""
  config_path = pathlib.Path(workdir) / "config.json"
  if not config_path.exists():
    raise WorkdirError(
        f"{workdir} has no config.json, so the settings its RGN was trained with are "
        f"unknown; point --rgn_checkpoint at a complete training workdir.")
  diffs = _config_diffs(_within(_saved_flat(config_path), prefixes),
                        _within(_as_flat(run.config), prefixes))
  if diffs:
    raise WorkdirError(
        f"The RGN in {workdir} was trained with other region settings, so its scores "
        f"would mean other boxes:\n" + "\n".join(diffs)
        + "\nEdit with the saved settings (e.g. --config.region.sizes=...).")


def make_manager(workdir: str | pathlib.Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """An orbax manager writing `<workdir>/checkpoints/<step>` (synchronously: a step is
  on disk when `save` returns, so a killed run loses at most the steps since)."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` (jax.Arrays, also global multi-process ones: orbax writes each
  replicated array once; every process must call this)."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()


def _set_aside(directory: pathlib.Path) -> pathlib.Path:
  """Renames a broken step folder so that nothing reads or overwrites it (nothing is
  deleted: it can still be inspected)."""
  aside = directory.with_name(f"broken_{directory.name}_{int(time.time())}")
  os.replace(directory, aside)
  return aside


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, int] | None:
  """Restores the newest intact checkpoint into the structure (and, for jax.Arrays, the
  shardings) of `like`, or None if there is none.

  A checkpoint that cannot be read (a disk filled up, a file damaged) is set aside as
  `checkpoints/broken_<step>_<time>` with a warning, and the next older one is tried;
  when every one is broken, WorkdirError.
  """
  broken = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(like))
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
      directory = pathlib.Path(manager.directory) / str(step)
      reason = _one_line(e)
      aside = _set_aside(directory) if jax.process_index() == 0 else directory
      logging.warning("The checkpoint of step %d cannot be read (%s); set aside as %s.",
                      step, reason, aside)
      broken.append(f"step {step}: {reason}")
      manager.reload()
      continue
    if broken:
      logging.warning("Resuming from step %d, the newest intact checkpoint.", step)
    return state, step
  if broken:
    raise WorkdirError(f"No checkpoint in {manager.directory} can be read ({'; '.join(broken)});"
                       f" they were set aside as broken_<step>_<time>. Use a new --workdir, "
                       f"or move them back once repaired.")
  return None


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def check_finite(params: Any, where: str) -> None:
  """Raises WorkdirError when a parameter is NaN or infinite."""
  bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(params)
         if not np.all(np.isfinite(np.asarray(x)))]
  if bad:
    raise WorkdirError(f"{where} holds NaN or infinite RGN parameters ({', '.join(bad[:3])}"
                       f"{', ...' if len(bad) > 3 else ''}); it cannot be used.")


# ---------------------------------------------------------------- one trainer per workdir

LOCK_NAME = "train.lock"


@contextlib.contextmanager
def training_lock(workdir: pathlib.Path) -> Iterator[None]:
  """Holds `acquire_lock` for the body (on process 0: one writer per workdir)."""
  lock = acquire_lock(workdir) if jax.process_index() == 0 else None
  try:
    yield
  finally:
    if lock is not None:
      release_lock(lock)


def acquire_lock(workdir: pathlib.Path) -> pathlib.Path:
  """Marks `workdir` as trained by this process (`train.lock`: pid, host, start time;
  `lr_common.folder_lock`). A lock held by a live process, or by one on another host,
  is a WorkdirError; a lock left by a run on this host that has ended (killed) is taken
  over with a warning."""
  return folder_lock.acquire(workdir, LOCK_NAME, doing="trained", flag="--workdir",
                             error=WorkdirError)


def release_lock(path: pathlib.Path) -> None:
  """Removes this process's lock (another process's lock is left alone)."""
  folder_lock.release(path)


def resolve_rgn_checkpoint(path: str | pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(workdir, step or None for the newest) of a training workdir or one of its
  `checkpoints/<step>` folders."""
  path = pathlib.Path(path)
  if path.name.isdigit() and path.parent.name == "checkpoints":
    if not path.is_dir():
      kept = sorted(p.name for p in path.parent.iterdir() if p.name.isdigit()) \
          if path.parent.is_dir() else []
      raise FileNotFoundError(f"No checkpoint {path}; kept steps: {', '.join(kept) or 'none'}")
    return path.parent.parent, int(path.name)
  if (path / "checkpoints").is_dir():
    return path, None
  raise FileNotFoundError(
      f"No lr_jax checkpoint at {path}: pass a training --workdir (holding "
      f"checkpoints/) or one of its checkpoints/<step> folders.")


def load_rgn_params(path: str | pathlib.Path, models: Any, config: Config) -> Any:
  """RGN parameters (numpy) from a training workdir (its newest checkpoint) or from
  one of its `checkpoints/<step>` folders, refused under other region settings."""
  run = run_settings.parse(config)
  workdir, step = resolve_rgn_checkpoint(path)
  check_compatible(workdir, run, rgn_keys(run))
  method = run.method
  # Shapes only: nothing to compute or compile before restoring.
  like = jax.eval_shape(lambda: step_lib.init_train_state(models, method, jax.random.PRNGKey(0)))
  manager = make_manager(workdir)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir} holds no checkpoint yet")
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(like))
    except json.JSONDecodeError as e:
      raise WorkdirError(
          f"The checkpoint {workdir}/checkpoints/{step} is damaged ({_one_line(e)}); pass "
          f"another checkpoints/<step> folder of that workdir.") from None
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
      raise WorkdirError(
          f"The checkpoint {workdir}/checkpoints/{step} cannot be restored for this config "
          f"(damaged, or another RGN: widths or DINO size differ?): {_one_line(e)}") from None
  finally:
    manager.close()
  # Host arrays: restored ones carry the training mesh's sharding, and a jitted
  # step fed those first and its own outputs next would compile twice.
  params = sharding.to_host(state.params)
  check_finite(params, f"{workdir}/checkpoints/{step}")
  return params


def rgn_params(path: str | pathlib.Path | None, models: Any, config: Config) -> Any:
  """The RGN parameters an edit starts from: a trained RGN's (`load_rgn_params`), or
  without `path` a fresh RGN's, drawn from the config's seed (what refinement starts from
  and the strategies that use no RGN carry)."""
  run = run_settings.parse(config)
  if path:
    return load_rgn_params(path, models, run)
  return step_lib.init_train_state(models, run.method, seeds.prng_key(run.seed)).params
