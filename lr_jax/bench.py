r"""Benchmark of the training step and of inference, with random weights.

  python -m lr_jax.bench --config configs/tiny.py
  python -m lr_jax.bench --config configs/maskgit_imagenet256.py --what edit --repeats 2

Prints, per jitted function: first-call compile time, seconds per call, per image and
per edited image, edits per second, XLA's cost-analysis FLOPs and the FLOP/s they
imply, and peak memory. Full-size configs use their real model sizes with random
weights (nothing is downloaded). Note: XLA's cost analysis counts a loop body once,
so the decoding loop's FLOPs are under-counted by about its trip count.
"""
from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from lr_common import benchmarking
from lr_common import output_files
from lr_jax.files import config_files
from lr_jax import errors
from lr_jax import run_settings
from lr_jax.method import step as step_lib
from lr_jax.models import build_random_models

_CONFIG = config_flags.DEFINE_config_file(
    "config", config_files.resolve("configs/tiny.py")[0], "Config file.")
_WHAT = flags.DEFINE_list("what", ["train", "edit"],
                          "What to time: train, edit (K boxes), search (K x M boxes).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the first.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def _time(fn, args, repeats: int) -> dict[str, float]:
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))         # warm-up
  times = benchmarking.timed(lambda: compiled(*args), repeats)
  memory = compiled.memory_analysis()
  return {"compile_s": compile_s, "s_per_call": float(np.median(times)),
          "xla_flops": benchmarking.compiled_flops(compiled) or float("nan"),
          "temp_gb": getattr(memory, "temp_size_in_bytes", float("nan")) / 2**30}


MAX_BATCH = 1024


def run(config, what=("train", "edit"), batch: int = 1, repeats: int = 5) -> list[dict]:
  """Times the jitted train step and/or inference; returns one row per function."""
  unknown = [w for w in what if w not in ("train", "edit", "search")]
  if unknown or not what:
    raise errors.UsageError(f"--what takes train, edit and/or search, not "
                            f"{','.join(unknown) or '(none)'}")
  if not 1 <= batch <= MAX_BATCH or repeats < 1:
    raise errors.UsageError(f"--batch must be in [1, {MAX_BATCH}] (images per call, all in "
                            f"memory) and --repeats >= 1, got {batch} and {repeats}")
  parsed = run_settings.parse(config)
  built = build_random_models(parsed)
  models, frozen = built.models, built.frozen
  method = parsed.method
  rng = np.random.default_rng(0)
  size = models.editor.image_size
  p = models.clip.config.projection_dim
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  data = {"images": jnp.asarray(rng.random((batch, size, size, 3), np.float32)),
          "text_embed": jnp.asarray(unit(rng.normal(size=(batch, p))), jnp.float32),
          "src_text_embed": jnp.asarray(unit(rng.normal(size=(batch, p))), jnp.float32),
          "cond": jax.tree.map(jnp.asarray, models.editor.dummy_condition(batch))}
  key = jax.random.PRNGKey(0)
  state = step_lib.init_train_state(models, method, key)
  k, m = method.region.num_anchors, method.region.num_boxes
  rows = []
  for name in what:
    if name == "train":
      fn = step_lib.make_train_step(models, method, donate=False)
      stats = _time(fn, (state, frozen, data, key), repeats)
      edits = batch * k * m
    else:   # inference: the RGN's K boxes, or every one of the K x M proposals
      fn = step_lib.make_infer(models, method, "rgn" if name == "edit" else name)
      stats = _time(fn, (state.params, frozen, data, key), repeats)
      edits = batch * (k if name == "edit" else k * m)
    stats.update(
        what=name, config=f"{parsed.editor.name} {size}px", device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(), batch=batch, edits_per_call=edits,
        s_per_image=stats["s_per_call"] / batch, s_per_edit=stats["s_per_call"] / edits,
        edits_per_s=edits / stats["s_per_call"],
        xla_tflops_per_s=stats["xla_flops"] / stats["s_per_call"] / 1e12,
        peak_memory_gb=benchmarking.peak_memory_bytes()[0] / 2**30, edit_dtype=models.editor.dtype,
        image_size=size)
    rows.append(stats)
  return rows


def format_table(rows: list[dict]) -> str:
  cols = [("what", "{}"), ("config", "{}"), ("device", "{}"), ("batch", "{}"),
          ("compile_s", "{:.1f}"), ("s_per_call", "{:.4f}"), ("s_per_image", "{:.4f}"),
          ("s_per_edit", "{:.4f}"), ("edits_per_s", "{:.2f}"), ("xla_flops", "{:.3g}"),
          ("xla_tflops_per_s", "{:.3f}"), ("peak_memory_gb", "{:.2f}")]
  lines = [" | ".join(c for c, _ in cols)]
  for r in rows:
    lines.append(" | ".join(f.format(r[c]) for c, f in cols))
  return "\n".join(lines)


def main(argv):
  with errors.cli(argv):
    if _JSON.value:   # before the benchmark runs, not after
      output_files.check_outputs([_JSON.value], overwrite=True, flag="--json")
    rows = run(_CONFIG.value, _WHAT.value, _BATCH.value, _REPEATS.value)
    print(format_table(rows))
    if _JSON.value:
      output_files.write_text(_JSON.value, json.dumps(rows, indent=2), overwrite=True)


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
