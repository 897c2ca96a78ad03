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
import sys
from typing import Sequence

from absl import app
from absl import flags
import jax

from maskgit import bench_lib, breakdown, editing

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
  print(bench_lib.HEADER, flush=True)
  rows = bench_lib.run_benchmark(FLAGS.config, ks, dtypes, FLAGS.repeats, FLAGS.attention,
                       FLAGS.separate, FLAGS.seed, FLAGS.unroll)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(dict(device=f"{device.platform} {device.device_kind}",
                     jax=jax.__version__, config=FLAGS.config, repeats=FLAGS.repeats,
                     rows=rows), f, indent=1)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  app.run(main)
