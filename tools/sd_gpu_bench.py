"""Times lr_jax's SD inpainting (`inpaint.inpaint`) at full size with random weights.

  python3 tools/sd_gpu_bench.py [--models sd15] [--ns 1,8,28] [--steps 50,25]
      [--dtype bfloat16] [--attention cudnn] [--chunk 0] [--repeats 2] [--json out.json]

Per (steps, N): one call inpaints N masks of 512 px images with guidance 7.5 and the model's
scheduler (SD-1.5-inpainting: DDIM, SD-2-inpainting: PNDM); prints the compile time
(ahead of time, excluded), the median wall time of `--repeats` calls, milliseconds per
edited image and the device's peak memory. Rows are printed, and appended to --json, as
they finish, so a time limit still leaves the finished ones. Weights are random (drawn with
numpy, nothing downloaded). `--tiny` uses `hub.tiny_models()` at 64 px (a CPU check).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lr_common import benchmarking  # pylint: disable=wrong-import-position
from lr_jax.generators.stable_diffusion import hub, inpaint, schedulers  # pylint: disable=wrong-import-position

MODELS = {"sd15": (hub.sd15_inpainting_models, schedulers.DDIM),
          "sd2": (hub.sd2_inpainting_models, schedulers.PNDM)}
GUIDANCE = 7.5
TEXT_LENGTH = 77


def inputs(count: int, size: int, width: int, seed: int = 0):
  gen = np.random.default_rng([seed, count])
  masks = np.zeros((count, size, size), np.float32)
  for i in range(count):
    top, left = gen.integers(0, size // 2, 2)
    masks[i, top:top + size // 3, left:left + size // 3] = 1.0
  images = gen.uniform(size=(count, size, size, 3)).astype(np.float32)
  text = gen.normal(size=(2, count, TEXT_LENGTH, width)).astype(np.float32)
  keys = jax.random.split(jax.random.key(seed), count)
  return images, masks, text[0], text[1], keys


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", choices=sorted(MODELS), default="sd15")
  parser.add_argument("--ns", default="1,8,28")
  parser.add_argument("--steps", default="50,25")
  parser.add_argument("--dtype", choices=sorted(inpaint.DTYPES), default="bfloat16")
  parser.add_argument("--attention", default="cudnn",
                      help="UNet attention backend: cudnn (GPU, bfloat16), xla or none")
  parser.add_argument("--chunk", type=int, default=0, help="InpaintSettings.chunk_size")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()

  preset, kind = MODELS[args.models]
  models = hub.tiny_models() if args.tiny else preset()
  size = hub.TINY_IMAGE_SIZE if args.tiny else 512
  attention = None if args.attention == "none" else args.attention
  if attention == "cudnn" and (jax.default_backend() != "gpu" or args.dtype == "float32"):
    attention = None
  start = time.perf_counter()
  params = jax.device_put(hub.random_params(models, jax.random.key(0)))
  print(f"{jax.devices()[0].device_kind}: {args.models}{' tiny' if args.tiny else ''} random "
        f"params in {time.perf_counter() - start:.0f} s; {args.dtype}, attention "
        f"{attention or 'default'}, chunk {args.chunk}", flush=True)
  jitted = jax.jit(inpaint.inpaint, static_argnames=("models", "settings"))
  rows = []
  for steps in (int(s) for s in args.steps.split(",")):
    settings = inpaint.InpaintSettings(
        schedulers.SchedulerConfig(kind=kind), num_steps=steps, guidance_scale=GUIDANCE,
        dtype=args.dtype, chunk_size=args.chunk, attention_backend=attention)
    for count in (int(n) for n in args.ns.split(",")):
      arrays = inputs(count, size, models.text.text.hidden_size)
      start = time.perf_counter()
      try:
        compiled = jitted.lower(params, models, settings, *arrays).compile()
      except Exception as err:  # pylint: disable=broad-except
        if settings.attention_backend is None:
          raise
        # e.g. cuDNN without a kernel for SD-1.5's 160-wide heads
        print(f"attention {settings.attention_backend} failed ({type(err).__name__}: "
              f"{str(err)[:200]}); using XLA's", flush=True)
        attention = None
        settings = dataclasses.replace(settings, attention_backend=None)
        compiled = jitted.lower(params, models, settings, *arrays).compile()
      compile_s = time.perf_counter() - start
      times = benchmarking.timed(lambda: compiled(params, *arrays), args.repeats)
      seconds = statistics.median(times)
      peak, kind_of_peak = benchmarking.peak_memory_bytes()
      row = dict(models=args.models, tiny=args.tiny, steps=steps, n=count, dtype=args.dtype,
                 attention=attention, chunk=args.chunk, compile_s=compile_s, seconds=seconds,
                 ms_per_image=1e3 * seconds / count, peak_bytes=peak, peak_kind=kind_of_peak)
      rows.append(row)
      print(f"steps {steps:3d} N {count:3d}: {1e3 * seconds / count:9.1f} ms/image "
            f"({seconds:.2f} s per call, compile {compile_s:.0f} s, {kind_of_peak} "
            f"{peak / 2**30:.1f} GiB)", flush=True)
      if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
