"""The training loop: data, sharding, jitted steps, metrics, checkpoints, resumption."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np
import tqdm

from lr_common.errors import UserError
from lr_jax import checkpointing
from lr_jax import dataset as data_lib
from lr_jax import sharding
from lr_jax import sheets
from lr_jax import step as step_lib
from lr_jax.models import Models, build_models

# Settings that give the RGN's inputs and outputs their meaning: a trained RGN is
# only loaded under the same ones (num_anchors may change: it scores each anchor alone).
RGN_SETTINGS = ("models", "maskgit.name", "region.sizes", "region.roi_size",
                "region.sampling_ratio", "rgn")


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the images."""


@dataclasses.dataclass
class TrainResult:
  state: step_lib.TrainState
  metrics: list[dict[str, Any]]
  prepared: data_lib.Prepared
  workdir: pathlib.Path


def _host_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in sharding.to_host(metrics).items():
    v = np.asarray(v)
    out[k] = v.tolist() if v.ndim else float(v)
  return out


def _read_metrics(path: pathlib.Path, upto_step: int) -> list[dict[str, Any]]:
  """Metrics already logged, without steps past `upto_step` (a killed run may have
  logged steps whose checkpoint was never written)."""
  if not path.exists():
    return []
  return [r for r in sheets.read_metrics(path) if r.get("step", upto_step + 1) <= upto_step]


def _write_atomically(path: pathlib.Path, text: str) -> None:
  partial = path.with_name(path.name + ".partial")
  partial.write_text(text)
  os.replace(partial, path)


def train(config, workdir: str | pathlib.Path, *, models: Models | None = None,
          frozen: Any = None, examples=None, progress: bool = True,
          devices: list[Any] | None = None) -> TrainResult:
  """Trains the RGN per `config`, resuming from the newest checkpoint in `workdir`."""
  examples = data_lib.examples_from_config(config) if examples is None else examples
  loaded = data_lib.load_images(examples)   # bad images fail before any model loads
  workdir = checkpointing.check_workdir(workdir, config, data_lib.fingerprint(examples))
  if models is None:
    models, frozen = build_models(config)
  prepared = data_lib.prepare(models, frozen, examples, loaded=loaded,
                              min_class_similarity=config.data.min_class_similarity)
  n, bs = len(prepared), config.train.batch_size
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(bs, mesh)

  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  state = sharding.put_replicated(step_lib.init_train_state(models, config, init_rng), mesh)
  frozen = sharding.put_replicated(frozen, mesh)
  manager = checkpointing.make_manager(workdir, config.train.max_to_keep)
  restored = checkpointing.restore_latest(manager, state)   # same shardings as `state`
  start = 0
  if restored is not None:
    state, start = restored
    logging.info("Resuming from the checkpoint of step %d in %s", start, workdir)

  total = config.train.epochs * data_lib.steps_per_epoch(n, bs)
  stop = total if config.train.max_steps < 0 else min(total, config.train.max_steps)
  train_step = step_lib.make_train_step(models, config)

  main_process = jax.process_index() == 0   # writes the files, shows the bar
  metrics_path = workdir / "metrics.jsonl"
  history = _read_metrics(metrics_path, start)
  if main_process:
    _write_atomically(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
  bar = tqdm.tqdm(total=stop, initial=start, desc="train", disable=not (progress and main_process),
                  unit="step", dynamic_ncols=True)
  log = metrics_path.open("a") if main_process else None
  try:
    for step in range(start, stop):
      idx = data_lib.batch_indices(config.seed, step, n, bs)
      batch = sharding.put_batch(prepared.batch(idx), mesh)
      state, metrics = train_step(state, frozen, batch, train_rng)
      row = {"step": step + 1, "epoch": step // data_lib.steps_per_epoch(n, bs),
             **_host_metrics(metrics)}
      per_image = row.pop("per_image_loss")
      # A NaN gradient with a finite loss would poison the parameters (and the
      # checkpoint about to be written) one step before the loss shows it.
      if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
        bad = [str(prepared.examples[i].image_path)
               for i, l in zip(idx, per_image) if not math.isfinite(l)] or [
                   str(prepared.examples[i].image_path) for i in idx]
        what = ("Loss" if not math.isfinite(row["loss"]) else "Gradient norm")
        value = row["loss"] if what == "Loss" else row["grad_norm"]
        raise NonFiniteLossError(
            f"{what} is {value} at step {step + 1}; images: {', '.join(bad)}. "
            f"The last good checkpoint is in {workdir / 'checkpoints'}.")
      history.append(row)
      if log is not None and ((step + 1) % config.train.log_every == 0 or step + 1 == stop):
        log.write(json.dumps(row) + "\n")
        log.flush()
      bar.set_postfix(loss=f"{row['loss']:.4f}")
      bar.update(1)
      if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == stop:
        checkpointing.save(manager, step + 1, state)
  finally:
    bar.close()
    if log is not None:
      log.close()
    manager.close()
  if history and main_process:
    sheets.loss_curve(workdir / "loss_curve.png", history)
  return TrainResult(sharding.to_host(state), history, prepared, workdir)


def load_rgn_params(path: str | pathlib.Path, models: Models, config) -> Any:
  """RGN parameters (numpy) from a training workdir (its newest checkpoint) or from
  one of its `checkpoints/<step>` folders."""
  path = pathlib.Path(path)
  if path.name.isdigit() and path.parent.name == "checkpoints":
    if not path.is_dir():
      kept = sorted(p.name for p in path.parent.iterdir() if p.name.isdigit()) \
          if path.parent.is_dir() else []
      raise FileNotFoundError(f"No checkpoint {path}; kept steps: {', '.join(kept) or 'none'}")
    workdir, step = path.parent.parent, int(path.name)
  elif (path / "checkpoints").is_dir():
    workdir, step = path, None
  else:
    raise FileNotFoundError(
        f"No lr_jax checkpoint at {path}: pass a training --workdir (holding "
        f"checkpoints/) or one of its checkpoints/<step> folders.")
  checkpointing.check_compatible(workdir, config, RGN_SETTINGS)
  # Shapes only: nothing to compute or compile before restoring.
  like = jax.eval_shape(lambda: step_lib.init_train_state(models, config, jax.random.PRNGKey(0)))
  manager = checkpointing.make_manager(workdir)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir} holds no checkpoint yet")
    try:
      state = manager.restore(step, args=checkpointing.ocp.args.StandardRestore(like))
    except (ValueError, KeyError, TypeError) as e:
      raise checkpointing.WorkdirError(
          f"The checkpoint {workdir}/checkpoints/{step} does not fit this config's RGN "
          f"(anchors, sizes, widths or DINO size differ?): {e}") from e
  finally:
    manager.close()
  # Host arrays: restored ones carry the training mesh's sharding, and a jitted
  # step fed those first and its own outputs next would compile twice.
  return sharding.to_host(state.params)
