"""`dtype="auto"`: bfloat16 only where oneDNN runs the products and bf16 agrees with float32."""
import logging

import pytest

from configs import amused_tiny
from configs import stable_diffusion_tiny
from configs import tiny
from lr_common import auto_dtype
from lr_common import cpu_matmul
from lr_jax import editors
from lr_jax import run_settings
from tests.tiny_setup import tiny_config

AGREES = 0.995   # above auto_dtype.MIN_AGREEMENT


@pytest.fixture(autouse=True)
def _fresh_log():
  auto_dtype._say.cache_clear()   # pylint: disable=protected-access
  yield
  auto_dtype._say.cache_clear()   # pylint: disable=protected-access


def _probe_never_called():
  raise AssertionError("no probe wanted here")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_concrete_dtype_stays(dtype):
  assert auto_dtype.resolve(dtype, "editor", 0.5, probe=_probe_never_called) == dtype


def test_auto_is_bfloat16_where_onednn_runs_and_bf16_agrees(caplog):
  chosen = auto_dtype.resolve("auto", "MaskGIT", AGREES,
                              probe=lambda: (True, "oneDNN 2.6.3 bf16 matmul"))
  assert chosen == "bfloat16"
  assert "MaskGIT dtype auto: bfloat16 (oneDNN 2.6.3 bf16 matmul)" in caplog.text


def test_auto_without_the_onednn_build_is_float32_with_one_warning(caplog):
  reason = "the oneDNN extension is not built (run python -m lr_common.cpu_matmul.build)"
  for _ in range(3):
    assert auto_dtype.resolve("auto", "MaskGIT", AGREES, probe=lambda: (False, reason)) \
        == "float32"
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "not built" in warnings[0].getMessage()


def test_too_little_agreement_keeps_float32_however_fast(caplog):
  assert auto_dtype.resolve("auto", "aMUSEd", 0.89, probe=_probe_never_called) == "float32"
  assert "keep 89.0% of float32's tokens, under the 99% wanted" in caplog.text


def test_without_an_onednn_path_auto_is_float32(caplog):
  assert auto_dtype.resolve("auto", "SD", None, probe=_probe_never_called) == "float32"
  assert "no oneDNN path" in caplog.text


@pytest.mark.parametrize("fast", [True, False])
def test_parsing_resolves_auto_with_the_editors_measured_agreement(fast, monkeypatch):
  monkeypatch.setattr(cpu_matmul, "status", lambda: (fast, "probe of the test"))
  maskgit = editors.named("maskgit")
  for agreement, want in ((AGREES, "bfloat16" if fast else "float32"), (0.5, "float32")):
    monkeypatch.setattr(maskgit, "BF16_AGREEMENT", agreement)
    run = run_settings.parse(tiny_config(**{"editor.dtype": "auto"}))
    assert run.editor.dtype == want
    assert run.editor.record()["editor_dtype"] == want
    assert run.config.editor.dtype == "auto"   # config.json keeps what was asked for


@pytest.mark.parametrize("name", ["maskgit", "amused", "stable_diffusion"])
def test_every_editor_defaults_to_auto_and_states_its_agreement(name, monkeypatch):
  monkeypatch.setattr(cpu_matmul, "status", lambda: (True, "probe of the test"))
  c = tiny_config()
  editors.use(c, name)
  assert c.editor.dtype == "auto"
  measured = getattr(editors.named(name), "BF16_AGREEMENT", None)
  want = "bfloat16" if measured and measured >= auto_dtype.MIN_AGREEMENT else "float32"
  assert editors.named(name).make(c).dtype == want


def test_tiny_configs_pin_float32():
  for module in (tiny, amused_tiny, stable_diffusion_tiny):
    assert module.get_config().editor.dtype == "float32", module.__name__


def test_a_float32_run_resumes_under_auto(tmp_path):
  """Runs made before "auto" saved float32; the paper configs now ask for "auto"."""
  from lr_jax import checkpointing
  checkpointing.check_workdir(tmp_path, run_settings.parse(tiny_config()))   # float32
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  checkpointing.check_workdir(tmp_path, run_settings.parse(tiny_config(**{"editor.dtype": "auto"})))
  with pytest.raises(checkpointing.WorkdirError, match="editor.num_iter"):
    checkpointing.check_workdir(tmp_path, run_settings.parse(tiny_config(**{"editor.num_iter": 5})))


def test_a_dtype_of_none_of_the_choices_is_a_settings_error():
  from lr_common.errors import SettingsError
  with pytest.raises(SettingsError, match="'float32', 'bfloat16', 'auto'"):
    auto_dtype.resolve("float16", "MaskGIT", 0.5, probe=_probe_never_called)
