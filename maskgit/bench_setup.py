"""Inputs, kernel choice, timing and memory readings shared by the MaskGIT benchmarks."""

import resource
import time
from typing import Callable

import jax
import numpy as np


def bench_boxes(num_boxes: int, side: int, seed: int) -> np.ndarray:
  """(1, K, 4) token boxes of varied sizes inside the grid."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(max(1, side // 8), max(2, side // 2) + 1, (num_boxes, 2))
  corners = [rng.integers(0, side - s + 1) for s in sizes.reshape(-1)]
  corners = np.asarray(corners).reshape(num_boxes, 2)
  return np.concatenate([corners, sizes], axis=1)[None].astype(np.int32)


def attention_for(choice: str, dtype: str) -> str | None:
  """`jax.nn.dot_product_attention` implementation for "auto", "xla" or "cudnn"."""
  if choice == "xla":
    return None
  if choice == "cudnn":
    return "cudnn"
  on_gpu = jax.default_backend() == "gpu"
  return "cudnn" if on_gpu and dtype == "bfloat16" else None


def peak_memory_bytes() -> tuple[int, str]:
  """Peak device memory where the backend reports it, else process max RSS."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak"
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss_kib) * 1024, "process max RSS"


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
  """Wall-clock seconds of `repeats` calls, each waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times
