"""`dtype="auto"`: bfloat16 exactly where oneDNN runs the bf16 products, else float32."""
import logging

import pytest

from configs import amused_tiny
from configs import stable_diffusion_tiny
from configs import tiny
from lr_common import auto_dtype
from lr_common import cpu_matmul
from lr_jax import run_settings
from tests.tiny_setup import tiny_config


@pytest.fixture(autouse=True)
def _fresh_log():
  auto_dtype._say.cache_clear()   # pylint: disable=protected-access
  yield
  auto_dtype._say.cache_clear()   # pylint: disable=protected-access


def _probe_never_called():
  raise AssertionError("a concrete dtype needs no probe")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_concrete_dtype_stays(dtype):
  assert auto_dtype.resolve(dtype, probe=_probe_never_called) == dtype


def test_auto_is_bfloat16_where_onednn_runs_the_products(caplog):
  with caplog.at_level(logging.INFO):
    assert auto_dtype.resolve("auto", probe=lambda: (True, "oneDNN 2.6.3 bf16 matmul")) \
        == "bfloat16"
  assert "dtype auto: bfloat16" in caplog.text and "oneDNN 2.6.3" in caplog.text


def test_auto_on_a_cpu_without_the_fast_path_is_float32_with_one_warning(caplog):
  reason = "the oneDNN extension is not built (run python -m lr_common.cpu_matmul.build)"
  with caplog.at_level(logging.INFO):
    for _ in range(3):
      assert auto_dtype.resolve("auto", probe=lambda: (False, reason)) == "float32"
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "not built" in warnings[0].getMessage()


def test_auto_on_an_accelerator_is_float32_without_a_warning(caplog):
  with caplog.at_level(logging.INFO):
    chosen = auto_dtype.resolve(
        "auto", probe=lambda: (False, "the default backend is gpu, not the CPU"))
  assert chosen == "float32"
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert "dtype auto: float32" in caplog.text


@pytest.mark.parametrize("fast", [True, False])
def test_the_maskgit_editor_resolves_auto_when_parsed(fast, monkeypatch):
  monkeypatch.setattr(cpu_matmul, "status", lambda: (fast, "probe of the test"))
  run = run_settings.parse(tiny_config(**{"editor.dtype": "auto"}))
  assert run.editor.dtype == ("bfloat16" if fast else "float32")
  assert run.editor.record()["editor_dtype"] == run.editor.dtype
  assert run.config.editor.dtype == "auto"   # config.json keeps what was asked for


def test_auto_on_this_machine_follows_the_onednn_status():
  run = run_settings.parse(tiny_config(**{"editor.dtype": "auto"}))
  assert run.editor.dtype == ("bfloat16" if cpu_matmul.status()[0] else "float32")


def test_without_a_fast_path_auto_is_float32_whatever_the_cpu(caplog):
  with caplog.at_level(logging.INFO):
    assert auto_dtype.resolve("auto", "SD", probe=_probe_never_called,
                              fast_path=False) == "float32"
  assert "no oneDNN path" in caplog.text
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("name", ["amused", "stable_diffusion"])
def test_editors_without_the_onednn_path_resolve_auto_to_float32(name, monkeypatch):
  from lr_jax import editors
  monkeypatch.setattr(cpu_matmul, "status", lambda: (True, "probe of the test"))
  c = tiny_config()
  editors.use(c, name)
  assert c.editor.dtype == "auto"   # every editor's default
  assert editors.named(name).make(c).dtype == "float32"


def test_tiny_configs_pin_float32():
  from lr_jax import defaults
  assert defaults.base_config().editor.dtype == "auto"
  for module in (tiny, amused_tiny, stable_diffusion_tiny):
    assert module.get_config().editor.dtype == "float32", module.__name__
