"""`dtype="auto"`: bfloat16 where it is faster and agrees with float32, else float32.

XLA:CPU runs bfloat16 products at float32 speed (it widens them first), so bf16 pays on
a CPU only where `lr_common.cpu_matmul` hands the products to oneDNN: the extension is
built (`python -m lr_common.cpu_matmul.build`) and the processor has bf16 instructions
(avx512_bf16 or AMX). Faster is not enough: a model's bf16 edits must also keep at least
`MIN_AGREEMENT` of float32's edited tokens on the same keys (each editor states its
measured share). "auto" is bfloat16 where both hold; everywhere else, GPUs and TPUs
included, it is float32, the dtype of every parity test. The choice and its reason are
logged once per process (a warning on a CPU, where the commands show warnings).
"""
from __future__ import annotations

import functools
from typing import Callable

from absl import logging
import jax

from lr_common import cpu_matmul
from lr_common.errors import SettingsError

AUTO = "auto"
CONCRETE = ("float32", "bfloat16")
CHOICES = CONCRETE + (AUTO,)
MIN_AGREEMENT = 0.99   # the share of float32's edited tokens bf16 edits must keep


@functools.cache
def _say(who: str, chosen: str, reason: str, visible: bool) -> None:
  (logging.warning if visible else logging.info)("%s dtype auto: %s (%s).", who, chosen, reason)


def resolve(dtype: str, who: str, agreement: float | None,
            probe: Callable[[], tuple[bool, str]] | None = None) -> str:
  """`dtype` itself, or what "auto" stands for here.

  `agreement`: the share of float32's edited tokens that this model's bfloat16 edits keep
  on the same keys (measured), None where its products have no oneDNN path. `probe`
  (default `cpu_matmul.status`): whether oneDNN runs the bf16 products, and what runs or
  why not.
  """
  if dtype not in CHOICES:
    raise SettingsError(f"config editor.dtype must be one of {CHOICES}, got {dtype!r}")
  if dtype != AUTO:
    return dtype
  if agreement is None:
    chosen, reason = "float32", ("its products have no oneDNN path, so bfloat16 would be no "
                                 "faster on a CPU")
  elif agreement < MIN_AGREEMENT:
    chosen, reason = "float32", (
        f"its bfloat16 edits keep {agreement:.1%} of float32's tokens, under the "
        f"{MIN_AGREEMENT:.0%} wanted; --config.editor.dtype=bfloat16 asks for it anyway")
  else:
    fast, reason = (probe or cpu_matmul.status)()
    chosen = "bfloat16" if fast else "float32"
  _say(who, chosen, reason, jax.default_backend() == "cpu")
  return chosen
