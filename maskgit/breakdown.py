"""Where the time of one batched edit call goes, part by part.

Run through the benchmark: `python -m maskgit.bench --breakdown --ks 8 --dtype bfloat16`.

Each part of `editing.edit_images` is jitted and timed on its own, with random
weights, at the batch of one call with K boxes: the tokenizer's encoder (one
image), one transformer pass, the whole decoding loop, the pixel decoder, and
the full edit call. XLA's FLOP count of the loop-free parts gives the rate they
reach (the loop's FLOPs are its passes times one pass). The row "rest" is what
the full call spends outside the parts (masking, compositing, launches); a
negative value means the fused call is faster than its parts.
"""

import functools
import statistics
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from lr_common import benchmarking
from maskgit import bench_lib, checkpoints, configs, editing
from maskgit.transformer import Transformer


def _flops(jitted: Callable, *args) -> float | None:
  """XLA's FLOP estimate of one call of a jitted function (loop bodies counted once)."""
  return benchmarking.compiled_flops(jitted.lower(*args).compile())


def _median_seconds(fn: Callable, args: Sequence[Any], repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  return statistics.median(benchmarking.timed(lambda: fn(*args), repeats))


def run_breakdown(config_name: str, num_boxes: int, dtype: str, repeats: int,
                  attention: str = "auto", unroll: bool = False,
                  seed: int = 0) -> list[dict[str, Any]]:
  """One row per part: name, ms per call, share of the full call, FLOPs, TFLOP/s."""
  config = configs.get_config(config_name)
  tok_params, tr_params = checkpoints.init_params(config, jax.random.PRNGKey(seed))
  tr_cast = jax.block_until_ready(editing.cast_params(tr_params, editing.DTYPES[dtype]))
  implementation = bench_lib.attention_for(attention, dtype)
  edit = editing.EditConfig(dtype=dtype, attention=implementation, unroll=unroll)
  side, size = config.tokens_per_side, config.image_size

  image = jax.random.uniform(jax.random.PRNGKey(seed + 1), (1, size, size, 3))
  boxes = jnp.asarray(bench_lib.bench_boxes(num_boxes, side, seed + num_boxes))
  labels = jnp.array([[1] * num_boxes], jnp.int32)
  keys = editing.box_keys(jax.random.PRNGKey(seed + 2), 1, num_boxes)

  # The steps of editing.edit_images, each jitted alone.
  encode = jax.jit(functools.partial(editing.encode_ids, config=config))
  ids = encode(tok_params, image)
  token_mask = editing.box_token_mask(boxes, side, edit.grow_tokens)
  inputs = editing.masked_inputs(ids, token_mask, labels, config=config)[0]
  transformer = Transformer(config.transformer, dtype=editing.DTYPES[dtype],
                            attention_implementation=implementation)
  one_pass = jax.jit(lambda p, seq: transformer.apply({"params": p}, seq, deterministic=True))
  loop = jax.jit(functools.partial(editing.decode_tokens, config=config, edit=edit))
  tokens = loop(tr_cast, inputs, keys[0])
  decode_pixels = jax.jit(functools.partial(editing.decode_pixels, config=config, edit=edit))
  full = jax.jit(functools.partial(editing.edit_images, config=config, edit=edit))

  passes = edit.num_iter - edit.start_iter
  pass_flops = _flops(one_pass, tr_cast, inputs)
  # (name, function, arguments, FLOPs, part of the full call's sum)
  parts = [
      ("encode (1 image)", encode, (tok_params, image),
       _flops(encode, tok_params, image), True),
      ("  one transformer pass", one_pass, (tr_cast, inputs), pass_flops, False),
      (f"decoding loop ({passes} passes)", loop, (tr_cast, inputs, keys[0]),
       passes * pass_flops if pass_flops else None, True),
      ("pixel decoder", decode_pixels, (tok_params, tokens),
       _flops(decode_pixels, tok_params, tokens), True),
  ]
  full_args = (tok_params, tr_cast, image, boxes, labels, keys)
  full_s = _median_seconds(full, full_args, repeats)
  rows = []
  summed = 0.
  for name, fn, args, flops, additive in parts:
    seconds = _median_seconds(fn, args, repeats)
    summed += seconds if additive else 0.
    rows.append(dict(part=name, ms=1e3 * seconds, share=seconds / full_s, flops=flops,
                     tflops_per_s=flops / seconds / 1e12 if flops else None))
  rows.append(dict(part="rest", ms=1e3 * (full_s - summed), share=1. - summed / full_s,
                   flops=None, tflops_per_s=None))
  rows.append(dict(part=f"full edit call (K={num_boxes})", ms=1e3 * full_s, share=1.,
                   flops=None, tflops_per_s=None))
  return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
  """A plain-text table of `run_breakdown` rows."""
  lines = [f"{'part':<28} {'ms/call':>9} {'share':>6} {'GFLOP':>9} {'TFLOP/s':>8}"]
  for row in rows:
    gflop = f"{row['flops'] / 1e9:9.2f}" if row['flops'] else f"{'-':>9}"
    rate = f"{row['tflops_per_s']:8.2f}" if row["tflops_per_s"] else f"{'-':>8}"
    lines.append(f"{row['part']:<28} {row['ms']:9.2f} {100 * row['share']:5.1f}% "
                 f"{gflop} {rate}")
  return "\n".join(lines)
