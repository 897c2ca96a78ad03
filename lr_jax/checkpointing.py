"""Training checkpoints (orbax `CheckpointManager`) and the workdir's config guard."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

# Settings that may change between a run and its resumption without changing
# what the run computes.
RESUMABLE_KEYS = ("train.max_steps", "train.log_every", "train.checkpoint_every",
                  "train.max_to_keep", "infer", "maskgit.cache_dir")


class WorkdirError(RuntimeError):
  """The workdir holds a checkpoint made with another config."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def _comparable(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = _flatten(json.loads(config.to_json_best_effort()))
  return {k: v for k, v in flat.items()
          if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def check_workdir(workdir: str | pathlib.Path,
                  config: ml_collections.ConfigDict) -> pathlib.Path:
  """Creates the workdir, or checks that its saved config matches this one.

  Raises WorkdirError listing every differing setting, so that a run never resumes
  from (or overwrites) another experiment's checkpoint.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  saved_path = workdir / "config.json"
  current = _comparable(config)
  if saved_path.exists():
    saved = _flatten(json.loads(saved_path.read_text()))
    saved = {k: v for k, v in saved.items()
             if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}
    diffs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diffs:
      lines = [f"  {k}: saved={saved.get(k)!r} now={current.get(k)!r}" for k in diffs]
      raise WorkdirError(
          f"{workdir} holds a run made with another config; differing settings:\n"
          + "\n".join(lines)
          + "\nUse a new --workdir, or rerun with the saved settings.")
  elif jax.process_index() == 0:   # one writer on a shared filesystem
    saved_path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  return workdir


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
