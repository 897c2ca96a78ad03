"""CPU side by side: diffusers' StableDiffusionInpaintPipeline (PyTorch) and lr_jax's `inpaint`.

Both run the same full-size random SD-1.5-inpainting weights (written once, in the hub layout,
to a temporary folder) at 512 px with guidance 7.5, DDIM (the repo's scheduler), float32, on
the same inputs and injected noises, and report milliseconds per edited image for N masks in
one call. Prompt states are given (random), so neither side times its text encoder.

PyTorch and JAX live in different environments here, so each half runs in its own process:
  python tools/sd_cpu_side_by_side.py [--ns 1,4] [--steps 4] [--size 512] [--keep DIR]
runs `--half torch` with --torch-python (default /work/fixture_env/bin/python: torch,
diffusers, transformers; it also writes the weights) and then `--half jax` with --jax-python
(default: this interpreter if it has jax, else `python`), and prints both numbers and their
ratio. The first call is excluded on both sides: PyTorch warms up with one 1-step call at the
smallest N, JAX compiles each N ahead of time (the compile time is printed on its own). The
JAX half also prints how far its images are from PyTorch's (same weights and noises).

This is a benchmark, not a test: on a shared 2-core machine one full-size guided UNet call
takes tens of seconds, so a run with N = 1 and 4 takes tens of minutes; the load average is
printed with every number.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "stable_diffusion"
# stable-diffusion-v1-5/stable-diffusion-inpainting's scheduler/scheduler_config.json.
SCHEDULER = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None}
GUIDANCE = 7.5
TEXT_LENGTH, TEXT_WIDTH, LATENT_CHANNELS, FACTOR = 77, 768, 4, 8
RESULT = "RESULT "


def load_average() -> float:
  return os.getloadavg()[0]


def make_inputs(count: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Images, box masks, prompt states and noises (NHWC), the same on both sides."""
  gen = np.random.default_rng([seed, count])
  latent = size // FACTOR
  masks = np.zeros((count, size, size), np.float32)
  for i in range(count):
    top, left = gen.integers(0, size // 2, 2)
    masks[i, top:top + size // 3, left:left + size // 3] = 1.0
  return dict(
      images=gen.uniform(size=(count, size, size, 3)).astype(np.float32), masks=masks,
      text=gen.normal(size=(count, TEXT_LENGTH, TEXT_WIDTH)).astype(np.float32),
      negative=gen.normal(size=(count, TEXT_LENGTH, TEXT_WIDTH)).astype(np.float32),
      init_noise=gen.normal(size=(count, latent, latent, LATENT_CHANNELS)).astype(np.float32),
      posterior_noise=gen.normal(size=(count, latent, latent, LATENT_CHANNELS)
                                 ).astype(np.float32))


def report(**values) -> None:
  print(RESULT + json.dumps(values), flush=True)


# ----------------------------------------------------------------------------
# The PyTorch half (torch, diffusers, transformers; no jax).
# ----------------------------------------------------------------------------

def torch_half(args) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from diffusers import (AutoencoderKL, DDIMScheduler,  # pylint: disable=import-outside-toplevel
                         StableDiffusionInpaintPipeline, UNet2DConditionModel)
  from diffusers.models.autoencoders import vae as vae_module  # pylint: disable=import-outside-toplevel

  folder = pathlib.Path(args.weights)
  full = lambda name: json.loads((FIXTURES / "full_size" / f"{name}.json").read_text())["config"]
  torch.manual_seed(0)
  start = time.perf_counter()
  unet = UNet2DConditionModel.from_config(full("unet_sd15_inpaint")).eval()
  vae = AutoencoderKL.from_config(full("vae_sd")).eval()
  text_config = {k: v for k, v in full("text_encoder_sd15").items()
                 if k not in ("architectures", "transformers_version", "model_type")}
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config)).eval()
  # The fixture's byte-level tokenizer stands in for CLIP's (prompt states are given).
  tokenizer = transformers.CLIPTokenizer.from_pretrained(str(FIXTURES / "text_quick_gelu" /
                                                             "tokenizer"))
  pipe = StableDiffusionInpaintPipeline(
      vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
      scheduler=DDIMScheduler.from_config(SCHEDULER), safety_checker=None,
      feature_extractor=None, requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  if not (folder / "model_index.json").is_file():
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: built and saved the "
        f"weights in {time.perf_counter() - start:.0f} s", flush=True)

  noise = {}
  def injected_sample(self, generator=None):
    return self.mean + self.std * noise["posterior"]
  vae_module.DiagonalGaussianDistribution.sample = injected_sample
  nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

  def call(inputs, steps):
    noise["posterior"] = nchw(inputs["posterior_noise"])
    with torch.no_grad():
      return pipe(image=inputs["images"], mask_image=inputs["masks"],
                  prompt_embeds=torch.from_numpy(inputs["text"]),
                  negative_prompt_embeds=torch.from_numpy(inputs["negative"]),
                  height=args.size, width=args.size, num_inference_steps=steps,
                  guidance_scale=GUIDANCE, latents=nchw(inputs["init_noise"]),
                  output_type="np").images

  start = time.perf_counter()
  call(make_inputs(min(args.ns), args.size), 1)
  print(f"torch warm-up (N={min(args.ns)}, 1 step): {time.perf_counter() - start:.1f} s",
        flush=True)
  for count in args.ns:
    inputs = make_inputs(count, args.size)
    load = load_average()
    start = time.perf_counter()
    images = call(inputs, args.steps)
    seconds = time.perf_counter() - start
    np.save(folder / f"torch_images_{count}.npy", np.asarray(images, np.float32))
    report(side="torch", n=count, seconds=seconds, ms_per_image=1e3 * seconds / count,
           load_before=load, load_after=load_average())


# ----------------------------------------------------------------------------
# The JAX half (lr_jax; no torch).
# ----------------------------------------------------------------------------

def jax_half(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(ROOT))
  from lr_jax.generators.stable_diffusion import hub, inpaint  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  models, scheduler, params, _ = hub.load_stable_diffusion(args.weights)
  assert models == hub.sd15_inpainting_models(), models
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}: loaded the weights in "
        f"{time.perf_counter() - start:.0f} s", flush=True)
  settings = inpaint.InpaintSettings(scheduler, num_steps=args.steps, guidance_scale=GUIDANCE,
                                     chunk_size=args.jax_chunk)
  jitted = jax.jit(inpaint.inpaint, static_argnames=("models", "settings"))
  for count in args.ns:
    inputs = make_inputs(count, args.size)
    arrays = (inputs["images"], inputs["masks"], inputs["text"], inputs["negative"], None)
    noises = dict(init_noise=inputs["init_noise"], posterior_noise=inputs["posterior_noise"])
    start = time.perf_counter()
    compiled = jitted.lower(params, models, settings, *arrays, **noises).compile()
    compile_seconds = time.perf_counter() - start
    load = load_average()
    start = time.perf_counter()
    images = np.asarray(jax.block_until_ready(compiled(params, *arrays, **noises)))
    seconds = time.perf_counter() - start
    reference = pathlib.Path(args.weights) / f"torch_images_{count}.npy"
    error = (float(np.max(np.abs(images - np.load(reference)))) if reference.is_file()
             else None)
    report(side="jax", n=count, seconds=seconds, ms_per_image=1e3 * seconds / count,
           chunk_size=args.jax_chunk, compile_seconds=compile_seconds, max_abs_vs_torch=error, load_before=load,
           load_after=load_average())


# ----------------------------------------------------------------------------
# Both halves.
# ----------------------------------------------------------------------------

def run_half(python: str, half: str, args, weights: pathlib.Path) -> list[dict]:
  command = [python, __file__, "--half", half, "--weights", str(weights), "--ns",
             ",".join(map(str, args.ns)), "--steps", str(args.steps), "--size", str(args.size),
             "--jax-chunk", str(args.jax_chunk)]
  print(f"== {half}: {' '.join(command)} (load {load_average():.1f})", flush=True)
  results = []
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        cwd=ROOT) as process:
    for line in process.stdout:
      if line.startswith(RESULT):
        results.append(json.loads(line[len(RESULT):]))
      if "Warning" not in line and "warnings.warn" not in line:
        print("   " + line.rstrip(), flush=True)
  if process.returncode:
    print(f"== {half} exited with status {process.returncode}", flush=True)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ns", default="1,4", type=lambda s: [int(n) for n in s.split(",")])
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--half", choices=("torch", "jax"), default=None)
  parser.add_argument("--weights", default=None, help="the weights folder (written if empty)")
  parser.add_argument("--keep", action="store_true", help="keep the weights folder")
  parser.add_argument("--jax-chunk", type=int, default=0,
                      help="InpaintSettings.chunk_size of the JAX half: XLA's CPU attention "
                           "holds each (batch, heads, 4096, 4096) score matrix, and N=4 "
                           "(UNet batch 8) needs more than 20 GB without chunks")
  parser.add_argument("--torch-python", default="/work/fixture_env/bin/python")
  parser.add_argument("--jax-python", default=(sys.executable if importlib.util.find_spec("jax")
                                               else "python"))
  args = parser.parse_args()
  if args.half == "torch":
    return torch_half(args)
  if args.half == "jax":
    return jax_half(args)
  weights = pathlib.Path(args.weights or tempfile.mkdtemp(prefix="sd_side_by_side_"))
  try:
    results = run_half(args.torch_python, "torch", args, weights)
    results += run_half(args.jax_python, "jax", args, weights)
  finally:
    if not args.keep:
      shutil.rmtree(weights, ignore_errors=True)
  by_side = {(r["side"], r["n"]): r for r in results}
  print(f"\nSD-1.5-inpainting, random weights, {args.size} px, {args.steps} DDIM steps, "
        f"guidance {GUIDANCE}, float32, CPU; ms per edited image (first call excluded)")
  for count in args.ns:
    torch_row, jax_row = by_side.get(("torch", count)), by_side.get(("jax", count))
    line = f"  N={count}: torch {torch_row['ms_per_image']:.0f}" if torch_row else \
        f"  N={count}: torch -"
    line += f", jax {jax_row['ms_per_image']:.0f}" if jax_row else ", jax -"
    if torch_row and jax_row:
      line += (f", torch / jax = {torch_row['ms_per_image'] / jax_row['ms_per_image']:.2f}; "
               f"jax compile {jax_row['compile_seconds']:.0f} s, chunk_size "
               f"{jax_row['chunk_size']}; max |jax - torch| {jax_row['max_abs_vs_torch']}")
    print(line)


if __name__ == "__main__":
  main()
