"""Timing, FLOP and memory readings shared by the benchmarks of maskgit and lr_jax."""
from __future__ import annotations

import resource
import time
from typing import Any, Callable

import jax


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


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
  """Wall-clock seconds of `repeats` calls, each waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times
