"""aMUSEd's `editor.cpu_matmul`: in bfloat16 the UVit2D's Dense layers and 1x1 convolutions
run on oneDNN (lr_common.cpu_matmul), float32 and "xla" never; the setting is checked at
parse time and may change when a training run resumes.

The oneDNN tests are skipped (with the reason) where the extension is not built
(`python -m lr_common.cpu_matmul.build`) or cannot run, as in tests/test_cpu_matmul.py.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import amused_tiny
from lr_common import cpu_matmul
from lr_common.cpu_matmul import matmul
from lr_common.errors import SettingsError
from lr_jax import checkpointing
from lr_jax import run_settings
from lr_jax.editors import amused
from lr_jax.encoders import hf_weights
from lr_jax.generators.amused import text as text_lib
from lr_jax.generators.amused import transformer as uvit
from lr_jax.generators.amused import vq as vq_lib

ONEDNN, WHY = cpu_matmul.status()
needs_onednn = pytest.mark.skipif(not ONEDNN, reason=f"oneDNN path unavailable: {WHY}")
CALL = f"custom_call @{matmul.TARGET}"


def _config(**edit):
  c = amused_tiny.get_config()
  for key, value in edit.items():
    c.editor[key] = value
  return c


def _abstract(tree, dtype):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), tree)


def _inputs(config: uvit.UVit2DConfig, batch=2, side=4, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.integers(0, config.vocab_size, (batch, side, side)), jnp.int32),
          jnp.asarray(rng.standard_normal((batch, 5, config.encoder_hidden_size)), jnp.float32),
          jnp.asarray(rng.standard_normal((batch, config.cond_embed_dim)), jnp.float32),
          jnp.asarray(rng.random((batch, config.num_micro_conds)) * 64, jnp.float32))


def _transformer_program(dtype, mode) -> str:
  """The lowered text of a tiny UVit2D call (shapes only: nothing runs)."""
  config = uvit.UVit2DConfig.tiny()
  model = uvit.UVit2D(config, dtype, mode)
  params = _abstract(uvit.abstract_params(config), dtype)
  return jax.jit(lambda p, *a: model.apply({"params": p}, *a)).lower(
      params, *_inputs(config)).as_text()


def _products(config: uvit.UVit2DConfig) -> int:
  """The model's Dense layers and 1x1 convolutions: one product each per call."""
  kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
      uvit.abstract_params(config)) if path[-1].key == "kernel"]
  return sum(k.ndim == 2 or k.shape[:2] == (1, 1) for k in kernels)


def test_xla_and_float32_never_call_onednn():
  assert CALL not in _transformer_program(jnp.bfloat16, "xla")
  assert CALL not in _transformer_program(jnp.float32, "onednn")


@needs_onednn
@pytest.mark.parametrize("mode", ["auto", "onednn"])
def test_every_dense_layer_and_pointwise_conv_reaches_onednn(mode):
  count = _transformer_program(jnp.bfloat16, mode).count(CALL)
  assert count == _products(uvit.UVit2DConfig.tiny()) > 40


@needs_onednn
def test_onednn_logits_close_to_xla_bfloat16():
  """One transformer layer and one res block of the tiny UVit2D, random weights."""
  config = dataclasses.replace(uvit.UVit2DConfig.tiny(), num_hidden_layers=1, num_res_blocks=1)
  params = hf_weights.random_params(uvit.abstract_params(config), jax.random.PRNGKey(0))
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
  args = _inputs(config, seed=1)
  logits = []
  for mode in ("xla", "onednn"):
    model = uvit.UVit2D(config, jnp.bfloat16, mode)
    logits.append(np.asarray(jax.jit(lambda p, *a, m=model: m.apply({"params": p}, *a))(
        params, *args)))
  xla, ours = logits
  scale = np.abs(xla).max()
  assert ours.dtype == np.float32 and scale > 0.05
  np.testing.assert_allclose(ours, xla, atol=0.02 * scale)
  assert (ours.argmax(-1) == xla.argmax(-1)).mean() > 0.9


def _editor_program(mode: str) -> str:
  """The lowered text of the tiny bfloat16 editor's `decode_boxes` with `mode`."""
  editor = amused.make(_config(dtype="bfloat16", cpu_matmul=mode))
  params = {"vq": vq_lib.abstract_params(editor.vq),
            "transformer": _abstract(uvit.abstract_params(editor.transformer), jnp.bfloat16),
            "text_encoder": _abstract(text_lib.abstract_params(editor.text), jnp.bfloat16)}
  size, length = editor.image_size, editor.max_text_length
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  boxes = jax.ShapeDtypeStruct((1, 2, 4), jnp.float32)
  cond = {k: jax.ShapeDtypeStruct((1, length), jnp.int32) for k in ("prompt_ids", "negative_ids")}
  return jax.jit(editor.decode_boxes).lower(params, images, boxes, cond,
                                            jax.random.PRNGKey(0)).as_text()


def test_editor_setting_is_static_and_reaches_the_transformer():
  xla = amused.make(_config(dtype="bfloat16", cpu_matmul="xla"))
  auto = amused.make(_config(dtype="bfloat16"))
  assert auto.settings.cpu_matmul == "auto" and xla.settings.cpu_matmul == "xla"
  assert hash(auto) != hash(xla) and auto != xla   # two compiled programs, not one
  if ONEDNN:   # "xla" is checked on the transformer itself above
    assert _editor_program("auto").count(CALL) == _products(auto.transformer)
  else:
    assert CALL not in _editor_program("auto")


@pytest.mark.parametrize("value", ["mkl", "", None])
def test_bad_setting_is_a_settings_error(value):
  with pytest.raises(SettingsError, match="editor.cpu_matmul must be one of"):
    amused.make(_config(cpu_matmul=value))


def test_old_workdirs_without_the_setting_resume(tmp_path):
  """A run saved before `editor.cpu_matmul` existed resumes with any value of it; the
  guard still refuses a setting that changes what is computed."""
  checkpointing.check_workdir(tmp_path, run_settings.parse(_config()))
  saved_path = tmp_path / "config.json"
  saved = json.loads(saved_path.read_text())
  del saved["editor"]["cpu_matmul"]
  saved_path.write_text(json.dumps(saved))
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)
  for mode in cpu_matmul.MODES:
    checkpointing.check_workdir(tmp_path, run_settings.parse(_config(cpu_matmul=mode)))
  # The dtype changes the numerics, not the run ("auto" may choose otherwise elsewhere).
  checkpointing.check_workdir(tmp_path, run_settings.parse(_config(dtype="bfloat16")))
  with pytest.raises(checkpointing.WorkdirError, match="editor.num_steps"):
    checkpointing.check_workdir(tmp_path, run_settings.parse(_config(num_steps=3)))
