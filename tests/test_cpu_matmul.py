"""lr_common.cpu_matmul: bfloat16 products on oneDNN, and the XLA fallback.

The fallback is always tested; the oneDNN tests are skipped (with the reason) where
the extension is not built (`python -m lr_common.cpu_matmul.build`) or cannot run.
"""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_common import cpu_matmul
from lr_common.cpu_matmul import build, matmul
from maskgit import checkpoints, configs, editing
from maskgit.transformer import Transformer

ONEDNN, WHY = cpu_matmul.status()
needs_onednn = pytest.mark.skipif(not ONEDNN, reason=f"oneDNN path unavailable: {WHY}")


def _operands(rows=(3, 7), inner=96, cols=40, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(rows + (inner,)).astype(np.float32)
  w = (rng.standard_normal((inner, cols)) / np.sqrt(inner)).astype(np.float32)
  return x, w


def _rounded(a):
  return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)


def _check_bf16_close(got, x, w):
  """Close to numpy's float32 product within bfloat16 rounding of the inputs, and
  (much tighter) equal to the float32 product of the rounded inputs."""
  got = np.asarray(got, np.float32)
  np.testing.assert_allclose(got, x @ w, rtol=2e-2, atol=3e-2)
  np.testing.assert_allclose(got, _rounded(x) @ _rounded(w), rtol=1e-4, atol=1e-4)


def test_xla_mode_matches_numpy_and_lowers_no_custom_call():
  x, w = _operands()
  fn = jax.jit(lambda a, b: cpu_matmul.bf16_dot(a, b, mode="xla"))
  out = fn(x, w)
  assert out.shape == (3, 7, 40) and out.dtype == jnp.float32
  _check_bf16_close(out, x, w)
  assert matmul.TARGET not in fn.lower(x, w).as_text()


def test_auto_falls_back_when_the_extension_is_absent(tmp_path, monkeypatch):
  monkeypatch.setenv("LR_JAX_CPU_MATMUL_DIR", str(tmp_path))
  usable, why = cpu_matmul.status()
  assert not usable and "python -m lr_common.cpu_matmul.build" in why
  x, w = _operands(seed=1)
  fn = jax.jit(lambda a, b: cpu_matmul.bf16_dot(a, b, mode="auto"))
  _check_bf16_close(fn(x, w), x, w)
  assert matmul.TARGET not in fn.lower(x, w).as_text()
  with pytest.raises(cpu_matmul.CpuMatmulError, match="not built"):
    cpu_matmul.bf16_dot(x, w, mode="onednn")


@needs_onednn
def test_a_second_build_in_another_folder_keeps_the_first_registration(tmp_path, monkeypatch):
  monkeypatch.setenv("LR_JAX_CPU_MATMUL_DIR", str(tmp_path))
  build.library_path().write_bytes(b"")   # a library under another name, never loaded
  assert cpu_matmul.status() == (ONEDNN, WHY)


@needs_onednn
@pytest.mark.parametrize("ceiling, usable", [
    ("AVX2_VNNI", False), ("AVX512_CORE_VNNI", False), ("AVX512_CORE_BF16", True),
    ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_bf16_check_is_at_least_avx512_core_bf16(ceiling, usable):
  """oneDNN's ISA capped by DNNL_MAX_CPU_ISA: below avx512_core_bf16 nothing, at it or
  above (AMX; capped to what this CPU has) yes."""
  probe = "import ctypes, sys; print(ctypes.CDLL(sys.argv[1]).lr_onednn_cpu_has_bf16())"
  done = subprocess.run([sys.executable, "-c", probe, str(build.library_path())],
                        env={**os.environ, "DNNL_MAX_CPU_ISA": ceiling},
                        capture_output=True, text=True, check=True)
  assert done.stdout.strip() == str(int(usable))


def test_bad_mode_and_shapes_are_refused():
  with pytest.raises(cpu_matmul.CpuMatmulError, match="cpu_matmul must be one of"):
    cpu_matmul.DotGeneral("mkl")
  with pytest.raises(ValueError, match=r"x \[..., K\] and w \[K, N\]"):
    cpu_matmul.bf16_dot(jnp.ones((2, 3)), jnp.ones((4, 5)), mode="xla")


def test_build_without_onednn_is_one_error_line(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("LR_JAX_CPU_MATMUL_DIR", str(tmp_path))
  monkeypatch.setenv("DNNL_ROOT", str(tmp_path / "no_such_onednn"))
  monkeypatch.setattr("sys.argv", ["build"])
  with pytest.raises(SystemExit) as exit_info:
    build.main()
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: DNNL_ROOT=")
  assert not list(tmp_path.glob("*.so"))


def test_dot_general_xla_mode_is_lax_dot_general():
  x, _ = _operands(seed=2)
  x = jnp.asarray(x, jnp.bfloat16)
  plain = nn.Dense(24, dtype=jnp.bfloat16)
  routed = nn.Dense(24, dtype=jnp.bfloat16, dot_general=cpu_matmul.DotGeneral("xla"))
  params = plain.init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(np.asarray(routed.apply(params, x), np.float32),
                                np.asarray(plain.apply(params, x), np.float32))
  assert hash(cpu_matmul.DotGeneral("xla")) == hash(cpu_matmul.DotGeneral("xla"))


@needs_onednn
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_onednn_matches_numpy(out_dtype):
  x, w = _operands(seed=3)
  fn = jax.jit(lambda a, b: cpu_matmul.bf16_dot(a, b, out_dtype, mode="onednn"))
  out = fn(x, w)
  assert out.dtype == out_dtype and matmul.TARGET in fn.lower(x, w).as_text()
  if out_dtype == jnp.float32:
    _check_bf16_close(out, x, w)
  else:  # one more bfloat16 rounding, of the result
    np.testing.assert_allclose(np.asarray(out, np.float32), x @ w, rtol=3e-2, atol=4e-2)


@needs_onednn
def test_onednn_in_dense_and_dense_general_layers():
  x, _ = _operands(seed=4)
  x = jnp.asarray(x, jnp.bfloat16)
  on = cpu_matmul.DotGeneral("onednn")
  for plain, routed in [
      (nn.Dense(24, dtype=jnp.bfloat16), nn.Dense(24, dtype=jnp.bfloat16, dot_general=on)),
      (nn.DenseGeneral((4, 6), dtype=jnp.bfloat16),
       nn.DenseGeneral((4, 6), dtype=jnp.bfloat16, dot_general=on))]:
    params = plain.init(jax.random.PRNGKey(0), x)
    fn = jax.jit(lambda p, a, m=routed: m.apply(p, a))
    assert matmul.TARGET in fn.lower(params, x).as_text()
    got = np.asarray(fn(params, x), np.float32)
    want = np.asarray(plain.apply(params, x), np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


@needs_onednn
def test_onednn_leaves_batched_and_float32_products_to_xla():
  on = cpu_matmul.DotGeneral("onednn")
  a, b = jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((2, 4, 5), jnp.bfloat16)
  batched = jax.jit(lambda u, v: on(u, v, (((2,), (1,)), ((0,), (0,)))))
  assert batched(a, b).shape == (2, 3, 5)
  assert matmul.TARGET not in batched.lower(a, b).as_text()
  f32 = jax.jit(lambda u, v: on(u, v, (((1,), (0,)), ((), ()))))
  assert matmul.TARGET not in f32.lower(jnp.ones((3, 4)), jnp.ones((4, 2))).as_text()


@needs_onednn
def test_onednn_gradient_and_vmap():
  x, w = _operands(rows=(5,), inner=32, cols=8, seed=5)
  loss = lambda fn: lambda a, b: (fn(a, b) ** 2).sum()
  ours = jax.grad(loss(lambda a, b: cpu_matmul.bf16_dot(a, b, mode="onednn")), (0, 1))
  theirs = jax.grad(loss(lambda a, b: cpu_matmul.bf16_dot(a, b, mode="xla")), (0, 1))
  for got, want in zip(ours(x, w), theirs(x, w)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-2, atol=2e-2)
  stacked = np.stack([x, 2 * x])
  mapped = jax.vmap(lambda a: cpu_matmul.bf16_dot(a, w, mode="onednn"))(stacked)
  _check_bf16_close(mapped, stacked, w)


# The MaskGIT transformer's setting (tiny sizes, random weights).

def _tiny_transformer():
  config = configs.get_config("tiny")
  _, params = checkpoints.init_params(config, jax.random.PRNGKey(0))
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, config.transformer.sequence_length),
                           0, config.codebook_size)
  return config, editing.cast_params(params, jnp.bfloat16), ids


def _logits(config, params, ids, dtype, mode):
  model = Transformer(config.transformer, dtype=dtype, cpu_matmul=mode)
  fn = jax.jit(lambda p, i: model.apply({"params": p}, i))
  return np.asarray(fn(params, ids)), fn.lower(params, ids).as_text()


def test_transformer_auto_without_extension_is_xla(tmp_path, monkeypatch):
  monkeypatch.setenv("LR_JAX_CPU_MATMUL_DIR", str(tmp_path))
  config, params, ids = _tiny_transformer()
  auto, text = _logits(config, params, ids, jnp.bfloat16, "auto")
  xla, _ = _logits(config, params, ids, jnp.bfloat16, "xla")
  np.testing.assert_array_equal(auto, xla)
  assert matmul.TARGET not in text
  with pytest.raises(ValueError, match="cpu_matmul must be one of"):
    editing.EditConfig(dtype="bfloat16", cpu_matmul="fast")


@needs_onednn
def test_transformer_products_on_onednn_in_bfloat16_only():
  config, params, ids = _tiny_transformer()
  ours, text = _logits(config, params, ids, jnp.bfloat16, "onednn")
  xla, _ = _logits(config, params, ids, jnp.bfloat16, "xla")
  # Every Dense layer (6 per transformer layer, 1 in the head) and the logits.
  assert text.count(matmul.TARGET) == 6 * config.transformer.num_layers + 2
  assert ours.dtype == np.float32 and np.isfinite(ours).all()
  np.testing.assert_allclose(ours, xla, rtol=5e-2, atol=5e-2 * np.abs(xla).max())
  _, f32_text = _logits(config, params, ids, jnp.float32, "onednn")
  assert matmul.TARGET not in f32_text


@needs_onednn
def test_empty_sums_and_other_output_dtypes_stay_on_xla():
  """oneDNN traps on a product over zero terms and writes bfloat16 or float32 only."""
  empty = matmul.bf16_dot(jnp.ones((3, 0)), jnp.ones((0, 4)), mode="onednn")
  np.testing.assert_array_equal(empty, np.zeros((3, 4), np.float32))
  half = matmul.bf16_dot(jnp.ones((3, 5)), jnp.ones((5, 4)), jnp.float16, mode="onednn")
  assert half.dtype == jnp.float16
  np.testing.assert_array_equal(half, np.full((3, 4), 5, np.float16))
