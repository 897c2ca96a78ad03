r"""Benchmark of batched MaskGIT box editing with random weights.

  python -m maskgit.bench --config imagenet256 --ks 1,4,8,28 \
      --dtype float32,bfloat16 --repeats 10 [--json out.json]

For each dtype and K: milliseconds per edited image when the K boxes of one
image are edited in one call, versus K separate batch-1 calls (ratio), the
first-call (compile) time, peak memory, and for bfloat16 the agreement with
float32 for the same keys (fraction of identical tokens, max pixel difference).
On a CPU keep it small, e.g. --ks 1,4 --repeats 2 (or --config tiny).
With --breakdown it times the parts of one call instead (see maskgit.breakdown).
"""

import json
import statistics
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from maskgit import bench_setup, breakdown, checkpoints, configs, editing

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "imagenet256", "MaskGIT config name.")
flags.DEFINE_string("ks", "1,4,8,28", "Comma-separated numbers of boxes per call.")
flags.DEFINE_string("dtype", "float32,bfloat16", "Comma-separated compute dtypes.")
flags.DEFINE_integer("repeats", 10, "Timed calls per measurement (median reported).")
flags.DEFINE_enum("attention", "auto", ["auto", "xla", "cudnn"],
                  "Attention kernel; auto: cudnn for bfloat16 on GPU, else XLA.")
flags.DEFINE_boolean("separate", True, "Also time K separate batch-1 calls.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_integer("seed", 0, "Seed of the random weights, image and keys.")
flags.DEFINE_boolean("unroll", False, "Unroll the decoding loop.")
flags.DEFINE_boolean("breakdown", False,
                     "Instead, time each part of one call (encoder, one transformer pass, "
                     "decoding loop, pixel decoder) for each K and dtype.")


def run_benchmark(config_name: str, ks: Sequence[int], dtypes: Sequence[str],
                  repeats: int, attention: str = "auto", separate: bool = True,
                  seed: int = 0, unroll: bool = False) -> list[dict[str, Any]]:
  """Runs the measurements; returns one row per (dtype, K)."""
  config = configs.get_config(config_name)
  tok_params, tr_params = checkpoints.init_params(config, jax.random.PRNGKey(seed))
  size, side = config.image_size, config.tokens_per_side
  image = jax.random.uniform(jax.random.PRNGKey(seed + 1), (1, size, size, 3))
  labels = jnp.array([1], jnp.int32)
  key = jax.random.PRNGKey(seed + 2)
  rows, reference = [], {}
  for dtype in dtypes:
    # Cast once here rather than inside every timed call (same numbers).
    tr_dtype = jax.block_until_ready(editing.cast_params(tr_params, editing.DTYPES[dtype]))
    implementation = bench_setup.attention_for(attention, dtype)
    edit = editing.EditConfig(dtype=dtype, attention=implementation, unroll=unroll)
    editor = editing.make_editor(config, edit)
    for k in ks:
      boxes = bench_setup.bench_boxes(k, side, seed + k)
      keys = editing.box_keys(key, 1, k)
      call = lambda: editor(tok_params, tr_dtype, image, boxes, labels, keys)
      start = time.perf_counter()
      try:
        first = jax.block_until_ready(call())
      except Exception as e:  # pylint: disable=broad-except
        if implementation is None:
          raise
        print(f"warning: {implementation} attention failed ({type(e).__name__}: "
              f"{str(e)[:200]}); falling back to XLA attention", file=sys.stderr)
        implementation = None
        edit = editing.EditConfig(dtype=dtype, attention=None, unroll=unroll)
        editor = editing.make_editor(config, edit)
        start = time.perf_counter()
        first = jax.block_until_ready(call())
      compile_s = time.perf_counter() - start
      batched = statistics.median(bench_setup.timed(call, repeats))
      row = dict(dtype=dtype, k=k, attention=implementation or "xla",
                 first_call_s=compile_s, batched_ms_per_image=1e3 * batched / k,
                 batched_ms_per_call=1e3 * batched)
      if separate and k > 1:
        singles = [(boxes[:, i:i + 1], keys[:, i:i + 1]) for i in range(k)]
        single = lambda b, kk: editor(tok_params, tr_dtype, image, b, labels, kk)
        jax.block_until_ready(single(*singles[0]))  # compile batch-1
        loop = lambda: [single(b, kk) for b, kk in singles]
        separate_s = statistics.median(bench_setup.timed(loop, repeats))
        row.update(separate_ms_per_image=1e3 * separate_s / k,
                   speedup_vs_separate=separate_s / batched)
      tokens = np.asarray(first["tokens"])
      pixels = np.asarray(first["images"])
      if dtype == "float32":
        reference[k] = (tokens, pixels)
      elif k in reference:
        ref_tokens, ref_pixels = reference[k]
        masked = np.asarray(first["token_mask"]).reshape(tokens.shape)
        row.update(
            identical_tokens=float(np.mean(tokens == ref_tokens)),
            identical_edited_tokens=float(np.mean((tokens == ref_tokens)[masked])),
            max_pixel_diff=float(np.abs(pixels - ref_pixels).max()))
      peak, kind = bench_setup.peak_memory_bytes()
      row.update(peak_memory_mib=peak / 2**20, memory_kind=kind)
      rows.append(row)
      print(format_row(row), flush=True)
  return rows


HEADER = (f"{'dtype':>9} {'K':>3} {'attn':>5} {'ms/img':>9} {'sep ms/img':>10} "
          f"{'speedup':>7} {'1st call s':>10} {'peak MiB':>9} {'tok same':>8} "
          f"{'edit same':>9} {'max |dpx|':>9}")


def format_row(row: dict[str, Any]) -> str:
  fmt = lambda key, spec: format(row[key], spec) if key in row else "-"
  return (f"{row['dtype']:>9} {row['k']:>3} {row['attention']:>5} "
          f"{fmt('batched_ms_per_image', '9.2f'):>9} "
          f"{fmt('separate_ms_per_image', '10.2f'):>10} "
          f"{fmt('speedup_vs_separate', '7.2f'):>7} {fmt('first_call_s', '10.1f'):>10} "
          f"{fmt('peak_memory_mib', '9.0f'):>9} {fmt('identical_tokens', '8.4f'):>8} "
          f"{fmt('identical_edited_tokens', '9.4f'):>9} {fmt('max_pixel_diff', '9.4f'):>9}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    ks = [int(k) for k in FLAGS.ks.split(",") if k]
    dtypes = [d for d in FLAGS.dtype.split(",") if d]
  except ValueError:
    print(f"error: --ks must be comma-separated integers, got {FLAGS.ks!r}", file=sys.stderr)
    sys.exit(1)
  bad = [d for d in dtypes if d not in editing.DTYPES]
  if bad or not ks or min(ks) < 1 or FLAGS.repeats < 1:
    print(f"error: need --ks >= 1, --repeats >= 1 and --dtype in {tuple(editing.DTYPES)}",
          file=sys.stderr)
    sys.exit(1)
  device = jax.local_devices()[0]
  print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}; "
        f"config {FLAGS.config}; repeats {FLAGS.repeats}", flush=True)
  if FLAGS.breakdown:
    for dtype in dtypes:
      for k in ks:
        print(f"== breakdown: {dtype}, K={k}, unroll {FLAGS.unroll}", flush=True)
        print(breakdown.format_rows(breakdown.run_breakdown(
            FLAGS.config, k, dtype, FLAGS.repeats, FLAGS.attention, FLAGS.unroll,
            FLAGS.seed)), flush=True)
    return
  print(HEADER, flush=True)
  rows = run_benchmark(FLAGS.config, ks, dtypes, FLAGS.repeats, FLAGS.attention,
                       FLAGS.separate, FLAGS.seed, FLAGS.unroll)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(dict(device=f"{device.platform} {device.device_kind}",
                     jax=jax.__version__, config=FLAGS.config, repeats=FLAGS.repeats,
                     rows=rows), f, indent=1)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  app.run(main)
