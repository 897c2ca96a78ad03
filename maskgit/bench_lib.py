"""The MaskGIT editing benchmark (flag-free, importable): inputs, kernel choice, timing,
memory readings and the measurement loop behind `python -m maskgit.bench`."""

import statistics
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lr_common.benchmarking import bench_boxes, peak_memory_bytes, timed  # noqa: F401
from maskgit import checkpoints, configs, editing


def attention_for(choice: str, dtype: str) -> str | None:
  """`jax.nn.dot_product_attention` implementation for "auto", "xla" or "cudnn"."""
  if choice == "xla":
    return None
  if choice == "cudnn":
    return "cudnn"
  on_gpu = jax.default_backend() == "gpu"
  return "cudnn" if on_gpu and dtype == "bfloat16" else None


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
    implementation = attention_for(attention, dtype)
    edit = editing.EditConfig(dtype=dtype, attention=implementation, unroll=unroll)
    editor = editing.make_editor(config, edit)
    for k in ks:
      boxes = bench_boxes(k, side, seed + k)
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
      batched = statistics.median(timed(call, repeats))
      row = dict(dtype=dtype, k=k, attention=implementation or "xla",
                 first_call_s=compile_s, batched_ms_per_image=1e3 * batched / k,
                 batched_ms_per_call=1e3 * batched)
      if separate and k > 1:
        singles = [(boxes[:, i:i + 1], keys[:, i:i + 1]) for i in range(k)]
        single = lambda b, kk: editor(tok_params, tr_dtype, image, b, labels, kk)
        jax.block_until_ready(single(*singles[0]))  # compile batch-1
        loop = lambda: [single(b, kk) for b, kk in singles]
        separate_s = statistics.median(timed(loop, repeats))
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
      peak, kind = peak_memory_bytes()
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
