r"""Benchmark of the training step and of inference, with random weights.

  python -m lr_jax.bench --config configs/tiny.py
  python -m lr_jax.bench --config configs/maskgit_imagenet256.py --what edit --repeats 2
  python -m lr_jax.bench --config configs/maskgit_imagenet256.py --what search --devices 8

Prints, per jitted function: first-call compile time, seconds per call, per image and
per edited image, edits per second, XLA's cost-analysis FLOPs and the FLOP/s they
imply, and peak memory. Full-size configs use their real model sizes with random
weights (nothing is downloaded). Note: XLA's cost analysis counts a loop body once,
so the decoding loop's FLOPs are under-counted by about its trip count.

`--devices N` times inference (edit, search) on 1 and on N of this host's devices (the
candidates split over them, `sharding.CandidateSplit`) with the same batch, and prints
edited images per second, the scaling efficiency (speed-up / N), the candidates one
device edits at once (`--config.infer.max_edits_per_device` caps them) with XLA's
temporary memory for them (the compiled program's `memory_analysis()`, per device),
and how far the N-device results are from the 1-device ones. With N devices XLA's
FLOPs and memory are those of one device's program.
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
from lr_jax.method import sharding
from lr_jax.method import step as step_lib
from lr_jax.models import build_random_models

_CONFIG = config_flags.DEFINE_config_file(
    "config", config_files.resolve("configs/tiny.py")[0], "Config file.")
_WHAT = flags.DEFINE_list("what", ["train", "edit"],
                          "What to time: train, edit (K boxes), search (K x M boxes).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the first.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
_DEVICES = flags.DEFINE_integer(
    "devices", 1, "Inference also on this many of this host's devices, candidates split "
    "over them (on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N).")


def _time(fn, args, repeats: int) -> tuple[dict[str, float], object]:
  """Timings and memory of a jitted function, and its outputs."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  outputs = jax.block_until_ready(compiled(*args))         # warm-up
  times = benchmarking.timed(lambda: compiled(*args), repeats)
  memory = compiled.memory_analysis()
  return {"compile_s": compile_s, "s_per_call": float(np.median(times)),
          "xla_flops": benchmarking.compiled_flops(compiled) or float("nan"),
          "temp_gb": getattr(memory, "temp_size_in_bytes", float("nan")) / 2**30}, outputs


MAX_BATCH = 1024


def check_devices(devices: int) -> None:
  """--devices must name at least one and at most this host's devices."""
  have = jax.local_device_count()
  if devices < 1:
    raise errors.UsageError(f"--devices must be at least 1, got {devices}")
  if devices > have:
    hint = (" (on a CPU, simulate more with XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{devices} set before Python starts)" if jax.default_backend() == "cpu" else "")
    raise errors.UsageError(f"--devices {devices}: this host has {have} device"
                            f"{'s' if have > 1 else ''}{hint}")


def _differences(one, many) -> dict[str, float]:
  """Largest differences of the N-device edits and scores from the 1-device ones."""
  diff = lambda a, b: float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
  return {"max_pixel_diff": diff(one.edit.images, many.edit.images),
          "max_score_diff": diff(one.scores.score, many.scores.score),
          "same_boxes": bool(np.array_equal(one.boxes, many.boxes))}


def run(config, what=("train", "edit"), batch: int = 1, repeats: int = 5,
        devices: int = 1) -> list[dict]:
  """Times the jitted train step and/or inference; returns one row per function (and
  per device count: 1 and `devices` when more than 1)."""
  unknown = [w for w in what if w not in ("train", "edit", "search")]
  if unknown or not what:
    raise errors.UsageError(f"--what takes train, edit and/or search, not "
                            f"{','.join(unknown) or '(none)'}")
  if not 1 <= batch <= MAX_BATCH or repeats < 1:
    raise errors.UsageError(f"--batch must be in [1, {MAX_BATCH}] (images per call, all in "
                            f"memory) and --repeats >= 1, got {batch} and {repeats}")
  check_devices(devices)
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
  cap = parsed.infer.max_edits_per_device
  rows = []
  for name in what:
    counts = (1,) if name == "train" or devices == 1 else (1, devices)
    for count in counts:
      split = sharding.candidate_split(cap, jax.local_devices()[:count])
      edits = batch * (k * m if name in ("train", "search") else k)
      at_once = edits
      if name == "train":
        fn = step_lib.make_train_step(models, method, donate=False)
        stats, _ = _time(fn, (state, frozen, data, key), repeats)
      else:   # inference: the RGN's K boxes, or every one of the K x M proposals
        fn = step_lib.make_infer(models, method, "rgn" if name == "edit" else name, split)
        stats, out = _time(fn, (state.params, sharding.replicated_once(frozen, split), data,
                                key), repeats)
        if split is not None:
          lay = split.layout(batch, edits // batch)
          at_once = lay.per_chunk * batch // lay.image_shards
        if count == 1:   # the one-device result, fetched only to compare with more
          first = jax.device_get(out) if devices > 1 else None
        else:
          stats.update(_differences(first, jax.device_get(out)))
      stats.update(
          what=name, config=f"{parsed.editor.name} {size}px",
          device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
          devices=count, batch=batch, edits_per_call=edits, edits_at_once=at_once,
          s_per_image=stats["s_per_call"] / batch, s_per_edit=stats["s_per_call"] / edits,
          images_per_s=batch / stats["s_per_call"], edits_per_s=edits / stats["s_per_call"],
          xla_tflops_per_s=stats["xla_flops"] / stats["s_per_call"] / 1e12,
          peak_memory_gb=benchmarking.peak_memory_bytes()[0] / 2**30,
          edit_dtype=models.editor.dtype, image_size=size)
      if count > 1:
        speedup = stats["images_per_s"] / rows[-1]["images_per_s"]
        stats.update(speedup=speedup, scaling_efficiency=speedup / count)
      rows.append(stats)
  return rows


def format_table(rows: list[dict]) -> str:
  cols = [("what", "{}"), ("config", "{}"), ("device", "{}"), ("devices", "{}"),
          ("batch", "{}"), ("compile_s", "{:.1f}"), ("s_per_call", "{:.4f}"),
          ("s_per_image", "{:.4f}"), ("s_per_edit", "{:.4f}"), ("images_per_s", "{:.2f}"),
          ("edits_per_s", "{:.2f}"), ("edits_at_once", "{}"), ("temp_gb", "{:.3f}"),
          ("xla_flops", "{:.3g}"), ("xla_tflops_per_s", "{:.3f}"), ("peak_memory_gb", "{:.2f}")]
  lines = [" | ".join(c for c, _ in cols)]
  for r in rows:
    lines.append(" | ".join(f.format(r[c]) for c, f in cols))
  return "\n".join(lines)


def format_scaling(rows: list[dict]) -> str:
  """One line per multi-device row: speed-up, efficiency, agreement with one device;
  and, for CPU devices, that they share one machine's cores."""
  lines = []
  for r in rows:
    if r["devices"] > 1:
      lines.append(
          f"{r['what']} on {r['devices']} devices: {r['images_per_s']:.2f} edited images/s, "
          f"{r['speedup']:.2f}x one device's, scaling efficiency {r['scaling_efficiency']:.0%}; "
          f"candidates at once per device: {r['edits_at_once']}, XLA temporary memory "
          f"{r['temp_gb'] * 1024:.1f} MiB per device; results vs one device: max pixel "
          f"difference {r['max_pixel_diff']:.2g}, max score difference "
          f"{r['max_score_diff']:.2g}, same boxes: {r['same_boxes']}")
      if r["backend"] == "cpu":
        lines.append("note: these devices are CPU devices sharing this machine's cores "
                     "(XLA_FLAGS=--xla_force_host_platform_device_count): a correctness "
                     "check of the split, not a speed figure")
  return "\n".join(lines)


def main(argv):
  with errors.cli(argv):
    if _JSON.value:   # before the benchmark runs, not after
      output_files.check_outputs([_JSON.value], overwrite=True, flag="--json")
    rows = run(_CONFIG.value, _WHAT.value, _BATCH.value, _REPEATS.value, _DEVICES.value)
    print(format_table(rows))
    if _DEVICES.value > 1:
      print(format_scaling(rows))
    if _JSON.value:
      output_files.write_text(_JSON.value, json.dumps(rows, indent=2), overwrite=True)


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
