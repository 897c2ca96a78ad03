"""bfloat16 matrix products on the CPU through oneDNN (an XLA FFI custom call).

XLA:CPU (jaxlib 0.10.2) turns a bfloat16 dot into a float32 one, so bfloat16 weights
buy no speed there; oneDNN runs the same product on the processor's bf16 instructions
(avx512_bf16, AMX). `bf16_dot` and `DotGeneral` use oneDNN where the extension is built
(`python -m lr_common.cpu_matmul.build`), the default backend is the CPU and oneDNN
finds bf16 instructions; otherwise they run XLA's dot and say why once in the log.

Modes: "auto" (oneDNN where it can run, else XLA), "onednn" (an error where it cannot),
"xla" (never oneDNN). Products accumulate in float32 either way. Derivatives are XLA
dots of the tangents, so the primal product is oneDNN's even under `jax.grad`.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import pathlib
from typing import Any

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp

from lr_common.errors import UserError

MODES = ("auto", "onednn", "xla")
TARGET = "lr_onednn_bf16_matmul"
BUILD_COMMAND = "python -m lr_common.cpu_matmul.build"

_OUT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))   # what the handler writes
_libraries: dict[pathlib.Path, ctypes.CDLL] = {}  # kept alive while registered


class CpuMatmulError(UserError, RuntimeError):
  """cpu_matmul="onednn" was asked for where oneDNN cannot run (or a bad mode)."""


@functools.cache
def _load(path: pathlib.Path) -> tuple[bool, str]:
  """Loads and registers the library at `path` once: (usable, what runs or why not)."""
  if not path.exists():
    return False, f"the oneDNN extension is not built (run {BUILD_COMMAND})"
  if _libraries:   # one registration per process: a later build (new name) waits for a restart
    return _load(next(iter(_libraries)))
  try:
    library = ctypes.CDLL(str(path))
  except OSError as e:
    return False, f"the oneDNN extension {path} does not load: {e}"
  if not library.lr_onednn_cpu_has_bf16():
    return False, "oneDNN finds no bf16 matrix instructions (avx512_bf16, AMX) on this CPU"
  _libraries[path] = library
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LrOnednnBf16Matmul),
                              platform="cpu")
  version = library.lr_onednn_version()
  return True, (f"oneDNN {version // 10000}.{version // 100 % 100}.{version % 100} "
                f"bf16 matmul ({path.name})")


def status() -> tuple[bool, str]:
  """Whether oneDNN runs the bf16 products here, and what runs or why not."""
  if jax.default_backend() != "cpu":
    return False, f"the default backend is {jax.default_backend()}, not the CPU"
  # Imported here so that `python -m lr_common.cpu_matmul.build` runs a fresh module.
  from lr_common.cpu_matmul import build  # pylint: disable=import-outside-toplevel
  return _load(build.library_path())


@functools.cache
def _say_once(reason: str) -> None:
  logging.warning("cpu_matmul: bfloat16 products run on XLA: %s.", reason)


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise CpuMatmulError(f"cpu_matmul must be one of {MODES}, got {mode!r}")


def uses_onednn(mode: str) -> bool:
  """Resolves a mode: True where oneDNN runs (an error for "onednn" where it cannot)."""
  check_mode(mode)
  if mode == "xla":
    return False
  usable, reason = status()
  if not usable and mode == "onednn":
    raise CpuMatmulError(f"cpu_matmul='onednn', but {reason}")
  if not usable and jax.default_backend() == "cpu":   # elsewhere XLA is expected
    _say_once(reason)
  return usable


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _onednn_matmul(x: jax.Array, w: jax.Array, out_dtype: Any) -> jax.Array:
  """x bf16 [M, K] @ w bf16 [K, N] -> [M, N] in out_dtype (float32 or bfloat16)."""
  result = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), out_dtype)
  return jax.ffi.ffi_call(TARGET, result, vmap_method="sequential")(x, w)


@_onednn_matmul.defjvp
def _onednn_matmul_jvp(out_dtype, primals, tangents):
  x, w = primals
  dx, dw = tangents
  product = lambda a, b: lax.dot(a, b, preferred_element_type=jnp.float32)
  tangent = (product(dx, w) + product(x, dw)).astype(out_dtype)
  return _onednn_matmul(x, w, out_dtype), tangent


def _matmul_2d(x: jax.Array, w: jax.Array, out_dtype: Any, onednn: bool) -> jax.Array:
  if onednn and x.shape[0] and x.shape[1] and w.shape[1]:   # oneDNN traps on empty sums
    return _onednn_matmul(x, w, jnp.dtype(out_dtype))
  return lax.dot(x, w, preferred_element_type=out_dtype)


def bf16_dot(x: jax.Array, w: jax.Array, out_dtype: Any = jnp.float32,
             mode: str = "auto") -> jax.Array:
  """x [..., K] @ w [K, N] -> [..., N]: both rounded to bfloat16, summed in float32."""
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"bf16_dot needs x [..., K] and w [K, N], got {x.shape} and {w.shape}")
  onednn = uses_onednn(mode) and jnp.dtype(out_dtype) in _OUT_DTYPES
  x2 = x.astype(jnp.bfloat16).reshape(math.prod(x.shape[:-1]), x.shape[-1])
  y = _matmul_2d(x2, w.astype(jnp.bfloat16), out_dtype, onednn)
  return y.reshape(x.shape[:-1] + w.shape[1:])


def dot_general_for(dtype: Any, mode: str) -> "DotGeneral | None":
  """What a layer computing in `dtype` passes as `dot_general`: oneDNN's product for
  bfloat16 unless `mode` is "xla"; None (lax's own) otherwise."""
  if mode == "xla" or jnp.dtype(dtype) != jnp.bfloat16:
    return None
  return DotGeneral(mode)


@dataclasses.dataclass(frozen=True)
class DotGeneral:
  """`lax.dot_general` with the bfloat16 products on oneDNN: for
  `nn.Dense(dot_general=DotGeneral("auto"))` and `nn.DenseGeneral`.

  oneDNN takes the products of two bfloat16 operands without batch dimensions that
  contract trailing lhs axes with leading rhs axes (every Dense layer's); anything else
  (float32 operands included) is `lax.dot_general` unchanged. Hashable and compared by
  value, so it can sit in a Flax module's fields.
  """
  mode: str = "auto"

  def __post_init__(self):
    check_mode(self.mode)

  def __call__(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
               precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    lhs_axes = tuple(a % lhs.ndim for a in lhs_contract)
    rhs_axes = tuple(a % rhs.ndim for a in rhs_contract)
    fits = (lhs.dtype == jnp.bfloat16 and rhs.dtype == jnp.bfloat16
            and jnp.dtype(preferred_element_type or jnp.bfloat16) in _OUT_DTYPES
            and not lhs_batch and not rhs_batch and n > 0
            and lhs_axes == tuple(range(lhs.ndim - n, lhs.ndim))
            and rhs_axes == tuple(range(n)))
    if not fits or not uses_onednn(self.mode):
      return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)
    rows, inner = lhs.shape[:lhs.ndim - n], lhs.shape[lhs.ndim - n:]
    cols = rhs.shape[n:]
    out_dtype = preferred_element_type or jnp.bfloat16
    x2 = lhs.reshape(math.prod(rows), math.prod(inner))
    w2 = rhs.reshape(math.prod(inner), math.prod(cols))
    return _matmul_2d(x2, w2, out_dtype, True).reshape(rows + cols)
