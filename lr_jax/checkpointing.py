"""Training checkpoints (orbax `CheckpointManager`) and the workdir's config guard."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from lr_common.errors import UserError

# Settings that may change between a run and its resumption without changing
# what the run computes.
RESUMABLE_KEYS = ("train.max_steps", "train.log_every", "train.checkpoint_every",
                  "train.max_to_keep", "infer", "maskgit.cache_dir")


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


def _drop_resumable(flat: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in flat.items()
          if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def _comparable(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return _drop_resumable(_flatten(json.loads(config.to_json_best_effort())))


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


def check_workdir(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
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
  current = _comparable(config)
  if config_path.exists() and has_checkpoint(workdir):
    saved = _drop_resumable(_flatten(json.loads(config_path.read_text())))
    diffs = _config_diffs(saved, current)
    if diffs:
      raise WorkdirError(
          f"{workdir} holds a run made with another config; differing settings:\n"
          + "\n".join(diffs) + "\nUse a new --workdir, or rerun with the saved settings.")
    if data is not None and data_path.exists():
      diff = _data_diff(json.loads(data_path.read_text()), data)
      if diff:
        raise WorkdirError(
            f"{workdir} holds a run trained on other data ({diff}). Resuming would "
            f"continue its batch order over different images. Use a new --workdir, "
            f"or restore the data the run was started with.")
  elif jax.process_index() == 0:   # one writer on a shared filesystem
    config_path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    if data is not None:
      data_path.write_text(json.dumps(data, indent=1))
  return workdir


def check_compatible(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                     prefixes: tuple[str, ...]) -> None:
  """Raises WorkdirError if the settings under `prefixes` differ from the workdir's run."""
  config_path = pathlib.Path(workdir) / "config.json"
  if not config_path.exists():
    return
  within = lambda flat: {k: v for k, v in flat.items()
                         if any(k == p or k.startswith(p + ".") for p in prefixes)}
  diffs = _config_diffs(within(_flatten(json.loads(config_path.read_text()))),
                        within(_comparable(config)))
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


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, int] | None:
  """Restores the newest checkpoint into the structure (and, for jax.Arrays, the
  shardings) of `like`, or None if there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  state = manager.restore(step, args=ocp.args.StandardRestore(like))
  return state, step
