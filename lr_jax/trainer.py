"""The training loop: data, sharding, jitted steps, metrics, checkpoints, resumption."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
from typing import Any

import jax
import numpy as np
import tqdm

from lr_common import output_files
from lr_common import seeds
from lr_common.errors import UserError
from lr_jax import checkpointing
from lr_jax import dataset as data_lib
from lr_jax.files import metrics_file
from lr_jax.method import sharding
from lr_jax.files import sheets
from lr_jax.method import step as step_lib
from lr_jax import run_settings
from lr_jax import models as models_lib


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the images."""


@dataclasses.dataclass
class TrainResult:
  state: step_lib.TrainState
  metrics: list[dict[str, Any]]
  prepared: data_lib.Prepared
  workdir: pathlib.Path
  first_step: int = 0      # the step this run started from (> 0: resumed)

  def summary(self) -> str:
    """One line on what this run did: trained, resumed, or nothing left to train."""
    steps = int(self.state.step)
    if steps == self.first_step:
      return (f"nothing to train: {self.workdir} already holds step {steps}, the last of "
              f"these settings (raise --config.train.epochs or --config.train.max_steps "
              f"to train more)")
    if self.first_step:
      return (f"trained {steps - self.first_step} steps (resumed at step {self.first_step}, "
              f"now {steps}); workdir {self.workdir}")
    return f"trained {steps} steps; workdir {self.workdir}"


def _host_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in sharding.to_host(metrics).items():
    v = np.asarray(v)
    out[k] = v.tolist() if v.ndim else float(v)
  return out


# What a run writes in its workdir besides `checkpoints/` (checked before any work).
WORKDIR_FILES = ("config.json", "data.json", "metrics.jsonl", "loss_curve.png",
                 checkpointing.LOCK_NAME)


def train(config: Any, workdir: str | pathlib.Path, *, built: models_lib.Built | None = None,
          examples=None, progress: bool = True,
          devices: list[Any] | None = None) -> TrainResult:
  """Trains the RGN per `config` (a ConfigDict or a parsed `run_settings.Run`), resuming
  from the newest checkpoint in `workdir`.

  Everything that can be checked is checked before any model is loaded: the settings,
  the images, the batch size against the devices, the workdir (writable, not in use by
  another run: `train.lock`, and holding no other experiment)."""
  run = run_settings.parse(config)   # bad settings fail before anything is read or loaded
  method, seed, loop = run.method, run.seed, run.train
  data = data_lib.read(run.data, examples)   # bad images fail before any model loads
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(loop.batch_size, mesh)
  workdir = output_files.check_folder(workdir)
  output_files.check_outputs([workdir / name for name in WORKDIR_FILES], overwrite=True)
  output_files.check_folder(workdir / "checkpoints")
  workdir.mkdir(parents=True, exist_ok=True)
  with checkpointing.training_lock(workdir):
    checkpointing.check_workdir(workdir, run, data.fingerprint)
    built = models_lib.build(run) if built is None else built
    models = built.models
    prepared = data_lib.prepare(built, data.examples, loaded=data.loaded,
                                canvas=method.region.canvas)
    n, bs, arrays = len(prepared), loop.batch_size, prepared.arrays

    init_rng, train_rng = jax.random.split(seeds.prng_key(seed))
    state = step_lib.init_train_state(models, method, init_rng)
    train_step = step_lib.make_train_step(models, method)
    state, frozen = sharding.put_replicated((state, built.frozen), mesh)
    manager = checkpointing.make_manager(workdir, loop.max_to_keep)
    restored = checkpointing.restore_latest(manager, state)   # same shardings as `state`
    start = 0
    if restored is not None:
      state, start = restored
      logging.info("Resuming from the checkpoint of step %d in %s", start, workdir)

    total = loop.epochs * data_lib.steps_per_epoch(n, bs)
    stop = total if loop.max_steps < 0 else min(total, loop.max_steps)

    main_process = jax.process_index() == 0   # writes the files, shows the bar
    metrics_path = workdir / "metrics.jsonl"
    history = metrics_file.read_upto(metrics_path, start)
    if main_process:
      metrics_file.rewrite(metrics_path, history)
    bar = tqdm.tqdm(total=stop, initial=start, desc="train", disable=not (progress and main_process),
                    unit="step", dynamic_ncols=True)
    log = metrics_path.open("a") if main_process else None
    try:
      for step in range(start, stop):
        idx = data_lib.batch_indices(seed, step, n, bs)
        batch = sharding.put_batch(jax.tree.map(lambda a: a[idx], arrays), mesh)
        state, metrics = train_step(state, frozen, batch, train_rng)
        row = {"step": step + 1, "epoch": step // data_lib.steps_per_epoch(n, bs),
               **_host_metrics(metrics)}
        per_image = row.pop("per_image_loss")
        # A NaN gradient with a finite loss would poison the parameters (and the
        # checkpoint about to be written) one step before the loss shows it; a parameter
        # that overflowed is caught before it is saved.
        if not all(math.isfinite(row[k]) for k in ("loss", "grad_norm", "param_norm")):
          bad = [str(prepared.examples[i].image_path)
                 for i, l in zip(idx, per_image) if not math.isfinite(l)] or [
                     str(prepared.examples[i].image_path) for i in idx]
          key = next(k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(row[k]))
          what = {"loss": "Loss", "grad_norm": "Gradient norm",
                  "param_norm": "The RGN parameter norm"}[key]
          value = row[key]
          raise NonFiniteLossError(
              f"{what} is {value} at step {step + 1}; images: {', '.join(bad)}. Nothing of "
              f"this step was saved; the last good checkpoint is in {workdir / 'checkpoints'}.")
        history.append(row)
        if log is not None and ((step + 1) % loop.log_every == 0 or step + 1 == stop):
          log.write(json.dumps(row) + "\n")
          log.flush()
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        bar.update(1)
        if (step + 1) % loop.checkpoint_every == 0 or step + 1 == stop:
          checkpointing.save(manager, step + 1, state)
    finally:
      bar.close()
      if log is not None:
        log.close()
      manager.close()
    if history and main_process:
      with output_files.atomic_path(workdir / "loss_curve.png", overwrite=True) as tmp:
        sheets.loss_curve(tmp, history)
    return TrainResult(sharding.to_host(state), history, prepared, workdir, start)
