"""Timing, FLOP and memory readings shared by the benchmarks of maskgit and lr_jax."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np


def peak_memory_bytes() -> tuple[int, str]:
  """Peak device memory where the backend reports it, else process max RSS."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak"
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss_kib) * 1024, "process max RSS"


def compiled_flops(compiled: Any) -> float | None:
  """XLA's FLOP estimate of a compiled function (loop bodies counted once), if any."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def round_robin(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
  """Median seconds of each call, the calls taking turns so that load hits all alike."""
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
  """Wall-clock seconds of `repeats` calls, each waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def bench_boxes(num_boxes: int, side: int, seed: int) -> np.ndarray:
  """(1, K, 4) token boxes of varied sizes inside the grid."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(max(1, side // 8), max(2, side // 2) + 1, (num_boxes, 2))
  corners = [rng.integers(0, side - s + 1) for s in sizes.reshape(-1)]
  corners = np.asarray(corners).reshape(num_boxes, 2)
  return np.concatenate([corners, sizes], axis=1)[None].astype(np.int32)
