"""Writes the Stable Diffusion scheduler fixtures from diffusers' own schedulers.

Run by hand (the fixture environment has torch 2.13 CPU and diffusers 0.42.1):
  /work/fixture_env/bin/python tools/sd_fixtures_schedulers.py [--out tests/fixtures/stable_diffusion]

Every case builds a scheduler from a hub-style `scheduler_config.json` dict with
`from_config` (and, for a swap, builds the hub class first and then the target
class from its `.config`, as `pipe.scheduler = X.from_config(pipe.scheduler.config)`
does), calls `set_timesteps(n)` and then `step` once per timestep, as the inpaint
pipeline's loop does (from index `first_call` on when a strength below 1 skips
the first calls; DPM-Solver then gets `set_begin_index`). The model outputs are
not a model: call i gets `model_outputs[i]` from one bank of pre-drawn normals,
shared by all cases, and every run starts from the same `initial_sample`.

Writes
  schedulers.json: {case: {"config": hub dict, "kind": override class or null,
    "num_steps": n, "first_call": k}}
  schedulers.npz:
    model_outputs (MAX_CALLS, *SHAPE), initial_sample SHAPE: float32 inputs;
    <case>_timesteps (calls,) int64: the timesteps the model is called at;
    <case>_samples (calls, *SHAPE) float32: prev_sample after every step;
    <case>_init_noise_sigma () float32.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
import diffusers

SHAPE = (2, 4, 4, 4)
MAX_CALLS = 51

# The scheduler configs of the SD inpainting checkpoints, written as the hub does.
SD2_PNDM = {  # stabilityai/stable-diffusion-2-inpainting style
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SD_DDIM = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.20.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None}
# An old DDIM dict (runwayml/stable-diffusion-inpainting era): no timestep_spacing,
# no clip_sample (so clipping is on), no prediction_type, a PNDM-only key.
OLD_DDIM = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.6.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None}
SD_DPM = {
    "_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.20.0",
    "algorithm_type": "dpmsolver++", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "dynamic_thresholding_ratio": 0.995, "lower_order_final": True,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
    "solver_order": 2, "solver_type": "midpoint", "steps_offset": 1, "thresholding": False,
    "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}
BASES = {"pndm": SD2_PNDM, "ddim": SD_DDIM, "dpm": SD_DPM}


def cases() -> dict:
  """name -> (hub dict, override class name or None, num_steps, first_call)."""
  table = {}
  for kind, base in BASES.items():
    for prediction in ("epsilon", "v_prediction"):
      for steps in (50, 20):
        short = "eps" if prediction == "epsilon" else "v"
        table[f"{kind}_{short}_{steps}"] = (dict(base, prediction_type=prediction), None, steps, 0)
    table[f"{kind}_eps_4"] = (base, None, 4, 0)
    # The inpaint pipeline with strength 0.6 at 20 steps starts at call 20 - 12 = 8.
    table[f"{kind}_v_20_strength"] = (dict(base, prediction_type="v_prediction"), None, 20, 8)
  table["pndm_trailing_20"] = (dict(SD2_PNDM, timestep_spacing="trailing"), None, 20, 0)
  table["pndm_linspace_7"] = (dict(SD2_PNDM, timestep_spacing="linspace"), None, 7, 0)
  table["pndm_linear_20"] = (dict(SD2_PNDM, beta_schedule="linear", beta_start=0.0001,
                                  beta_end=0.02), None, 20, 0)
  table["ddim_old_clip_20"] = (OLD_DDIM, None, 20, 0)
  table["ddim_old_clip_v_20"] = (dict(OLD_DDIM, prediction_type="v_prediction"), None, 20, 0)
  table["ddim_trailing_20"] = (dict(SD_DDIM, timestep_spacing="trailing"), None, 20, 0)
  table["ddim_linspace_30"] = (dict(SD_DDIM, timestep_spacing="linspace"), None, 30, 0)
  table["ddim_alpha_one_linear_20"] = (dict(SD_DDIM, set_alpha_to_one=True,
                                            beta_schedule="linear"), None, 20, 0)
  table["dpm_trailing_20"] = (dict(SD_DPM, timestep_spacing="trailing"), None, 20, 0)
  table["dpm_linspace_25"] = (dict(SD_DPM, timestep_spacing="linspace"), None, 25, 0)
  table["dpm_heun_sigma_min_20"] = (dict(SD_DPM, solver_type="heun",
                                         final_sigmas_type="sigma_min"), None, 20, 0)
  table["dpm_lambda_clipped_20"] = (dict(SD_DPM, timestep_spacing="linspace",
                                         lambda_min_clipped=-2.5), None, 20, 0)
  table["dpm_sigma_min_10"] = (dict(SD_DPM, final_sigmas_type="sigma_min"), None, 10, 0)
  table["dpm_sigma_min_euler_final_20"] = (dict(SD_DPM, final_sigmas_type="sigma_min",
                                                euler_at_final=True), None, 20, 0)
  table["dpm_order1_10"] = (dict(SD_DPM, solver_order=1), None, 10, 0)
  table["ddim_leading_30"] = (SD_DDIM, None, 30, 0)
  table["pndm_v_leading_30"] = (dict(SD2_PNDM, prediction_type="v_prediction"), None, 30, 0)
  # DPM-Solver++ on the SD-2-inpainting repo: the PNDM dict has no
  # timestep_spacing, so the swapped scheduler uses DPM's own default (linspace).
  table["swap_pndm_to_dpm_25"] = (SD2_PNDM, "DPMSolverMultistepScheduler", 25, 0)
  table["swap_old_ddim_to_dpm_v_20"] = (dict(OLD_DDIM, prediction_type="v_prediction"),
                                        "DPMSolverMultistepScheduler", 20, 0)
  table["swap_pndm_to_ddim_20"] = (SD2_PNDM, "DDIMScheduler", 20, 0)
  return table


def build(config: dict, override: str | None):
  scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
  if override is not None:
    scheduler = getattr(diffusers, override).from_config(scheduler.config)
  return scheduler


def run(config, override, steps, first_call, bank, initial):
  scheduler = build(config, override)
  scheduler.set_timesteps(steps)
  timesteps = scheduler.timesteps[first_call:]
  if hasattr(scheduler, "set_begin_index"):
    scheduler.set_begin_index(first_call)
  sample = torch.from_numpy(initial)
  history = []
  for i, t in enumerate(timesteps):
    output = torch.from_numpy(bank[i])
    sample = scheduler.step(output, t, sample).prev_sample
    history.append(sample.numpy().copy())
  return (timesteps.numpy().astype(np.int64), np.stack(history).astype(np.float32),
          np.float32(scheduler.init_noise_sigma))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/fixtures/stable_diffusion")
  out = pathlib.Path(parser.parse_args().out)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(20240601)
  bank = rng.standard_normal((MAX_CALLS, *SHAPE)).astype(np.float32)
  initial = rng.standard_normal(SHAPE).astype(np.float32)
  arrays = {"model_outputs": bank, "initial_sample": initial}
  described = {}
  for name, (config, override, steps, first_call) in cases().items():
    timesteps, samples, sigma = run(config, override, steps, first_call, bank, initial)
    arrays[f"{name}_timesteps"] = timesteps
    arrays[f"{name}_samples"] = samples
    arrays[f"{name}_init_noise_sigma"] = sigma
    described[name] = {"config": config, "kind": override, "num_steps": steps,
                       "first_call": first_call}
    print(f"{name}: {len(timesteps)} calls, t = {timesteps[:4].tolist()}..., "
          f"final |x| max {np.abs(samples[-1]).max():.3f}")
  np.savez_compressed(out / "schedulers.npz", **arrays)
  (out / "schedulers.json").write_text(json.dumps(described, indent=1) + "\n")
  print("wrote", out / "schedulers.npz", (out / "schedulers.npz").stat().st_size, "bytes")


if __name__ == "__main__":
  main()
