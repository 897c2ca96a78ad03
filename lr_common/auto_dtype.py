"""`dtype="auto"`: bfloat16 where this machine multiplies bf16 matrices fast, else float32.

XLA:CPU runs bfloat16 products at float32 speed (it widens them first), so bf16 pays
on a CPU only where `lr_common.cpu_matmul` hands the products to oneDNN: the extension
is built (`python -m lr_common.cpu_matmul.build`) and the processor has bf16
instructions (avx512_bf16 or AMX). There "auto" is bfloat16; everywhere else, GPUs and
TPUs included, it is float32, the dtype of every parity test. The choice and its reason
are logged once per process.
"""
from __future__ import annotations

import functools
from typing import Callable

from absl import logging

from lr_common import cpu_matmul

AUTO = "auto"
CONCRETE = ("float32", "bfloat16")
CHOICES = CONCRETE + (AUTO,)


@functools.cache
def _say(who: str, chosen: str, reason: str) -> None:
  if chosen == "bfloat16":
    logging.info("%s dtype auto: bfloat16, products on %s.", who, reason)
  elif "not the CPU" in reason:   # an accelerator, or no fast path: float32, as always
    logging.info("%s dtype auto: float32 (%s).", who, reason)
  else:   # a CPU that could be faster: say what is missing
    logging.warning("%s dtype auto: float32, because %s.", who, reason)


def resolve(dtype: str, who: str = "editor",
            probe: Callable[[], tuple[bool, str]] | None = None, fast_path: bool = True) -> str:
  """`dtype` itself, or for "auto" the dtype this machine runs fastest without giving
  up agreement (`probe`, default `cpu_matmul.status`: whether oneDNN runs the bf16
  products, and what runs or why not). `fast_path=False`: a model whose products do not
  go through `cpu_matmul` (bf16 would be slower on a CPU): always float32."""
  if dtype != AUTO:
    return dtype
  if not fast_path:
    _say(who, "float32", "its products have no oneDNN path, not the CPU's bf16 units")
    return "float32"
  fast, reason = (probe or cpu_matmul.status)()
  chosen = "bfloat16" if fast else "float32"
  _say(who, chosen, reason)
  return chosen
