"""Running the real commands as subprocesses, offline, and checking their errors."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def offline_env(tmp: pathlib.Path) -> dict:
  """The environment of the CLI runs: CPU, a shared XLA cache, no network at all."""
  return dict(
      os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=str(tmp / "xla_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
      LR_JAX_SAMPLES_DIR=str(tmp / "samples"),
      # Nothing may touch the network: offline hub, and every proxied request fails fast.
      HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf_home"),
      MASKGIT_CACHE_DIR=str(tmp / "maskgit_cache"),
      HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
      https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
      NO_PROXY="", no_proxy="")


def run(env, module, *args, timeout=300, cwd=REPO, **env_overrides):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                        env=dict(env, **env_overrides), capture_output=True, text=True,
                        timeout=timeout)


def assert_clean_error(proc, *needles):
  """Exit 1, exactly one `error:` line, no traceback; returns the error text."""
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  starts = [i for i, line in enumerate(proc.stderr.splitlines()) if line.startswith("error:")]
  assert len(starts) == 1, proc.stderr[-3000:]
  text = "\n".join(proc.stderr.splitlines()[starts[0]:])
  for needle in needles:
    assert needle in text, (needle, text)
  return text


def snapshot(folder: pathlib.Path) -> dict:
  """{relative path: bytes} of every file under `folder` (to show nothing changed)."""
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob("*")) if p.is_file()}
