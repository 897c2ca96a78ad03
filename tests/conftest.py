"""Shared pytest setup: CPU only, no network, paths to the fixtures."""
import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One Gradio upload folder per test process: a page server that closes deletes the files
# it made, and the same photo uploaded in another process has the same path there.
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="lr_jax_test_gradio_"))

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


@pytest.fixture(scope="session")
def amused_dir() -> pathlib.Path:
  """The aMUSEd parity fixtures (written by tools/amused_fixtures_*.py)."""
  return FIXTURES / "amused"


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict:
  """The offline environment of every CLI subprocess; one XLA cache for the session, so
  a program compiled by one test module's runs is reused by the next module's."""
  from tests import cli_helpers  # pylint: disable=g-import-not-at-top
  return cli_helpers.offline_env(tmp_path_factory.mktemp("cli_env"))


def pytest_sessionfinish(session, exitstatus):
  """Closes the app tests' server before pytest's summary (its goodbye line would
  otherwise come last)."""
  del session, exitstatus
  import sys  # pylint: disable=import-outside-toplevel
  helpers = sys.modules.get("tests.app_helpers")
  if helpers is not None and helpers.served.cache_info().currsize:
    helpers.served().page.close()
