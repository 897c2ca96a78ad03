"""Helpers for the Colab notebooks in colabs/ (also usable from any Jupyter kernel).

Configs: the notebooks clone the project's git repository and `pip install` the clone,
so the repository's `configs/*.py` files are on disk; `load_config` loads one of them
by path (no absl flags). It looks in, in order: the `repo_dir` argument, `$LR_JAX_REPO`,
the checkout that holds the imported `lr_jax` package (a source tree or an editable
install), and the current folder. Nothing is duplicated in code: without a checkout it
raises a `ConfigNotFoundError` that says how to get one.

Tiny mode (`setup(tiny=True)`) uses `configs/tiny.py`: small random models, no network.

Install: `install` (standard library only; the notebooks' install cell holds a copy) clones
REPO_URL, or the GitHub repository Colab opened the notebook from, and pip-installs it with
the JAX extra of the machine's accelerator (`detect_runtime`); `check_accelerator` then
raises when JAX does not use that GPU or TPU.
"""
from __future__ import annotations

import importlib.util
import io
import os
import pathlib
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from lr_common.errors import UserError
from lr_jax.files import config_files
from lr_jax import editors
from lr_jax.encoders import hf_files
from lr_jax.files import manifest as manifest_lib
from lr_jax import samples

OFFICIAL_CONFIG = editors.DEFAULT_CONFIG
TINY_CONFIG = editors.configs(editors.DEFAULT)[1]


class ConfigNotFoundError(UserError, FileNotFoundError):
  """No configs/<name>.py was found in any of the places searched."""


def in_colab() -> bool:
  """True inside a Google Colab runtime."""
  try:
    return importlib.util.find_spec("google.colab") is not None
  except (ImportError, ValueError):
    return False


def find_config_file(name: str, repo_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Path of `configs/<name>.py` in the first repository checkout that has it."""
  if not name or "/" in name or name.endswith(".py"):
    raise ValueError(f"config name must be a bare name such as 'tiny', got {name!r}")
  searched = []
  for repo in config_files.checkouts(repo_dir):
    path = repo / "configs" / f"{name}.py"
    searched.append(str(path))
    if path.is_file():
      return path
  raise ConfigNotFoundError(
      f"configs/{name}.py not found; looked at:\n  " + "\n  ".join(searched)
      + f"\nClone the lr_jax repository (the notebooks' install cell does) and pass its "
        f"folder as repo_dir, or set ${config_files.REPO_ENV_VAR} to it.")


def load_config(name: str, repo_dir: str | os.PathLike | None = None,
                arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the repository's `configs/<name>.py`, loaded by path."""
  path = find_config_file(name, repo_dir)
  spec = importlib.util.spec_from_file_location(f"lr_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config()")
  return module.get_config(arg)


def describe_devices() -> str:
  """One line naming JAX's backend and its devices."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return f"JAX {jax.__version__}, backend {jax.default_backend()}: {len(devices)} x {', '.join(kinds)}"


# -- Install (standard library only) -------------------------------------------------
# The notebooks' install cell runs before lr_jax is installed, so it cannot import this
# module: tools/make_notebooks.py copies the functions in BOOTSTRAP_FUNCTIONS into that
# cell (without their docstrings), and tests/test_notebooks.py checks that the copies are
# these functions. They use only the standard library, import inside their bodies and
# use no module-level names.

PLACEHOLDER_REPO_URL = "https://github.com/OWNER/lr_jax"
BOOTSTRAP_FUNCTIONS = ("github_repo", "detect_runtime", "install")
JAX_EXTRA_FOR_RUNTIME = {"gpu": "cuda", "tpu": "tpu", "cpu": ""}  # pyproject extras
JAX_PIP_FOR_RUNTIME = {"gpu": "jax[cuda12]", "tpu": "jax[tpu]"}  # what those extras pull in


def github_repo(source: str) -> tuple[str, str | None] | None:
  """The GitHub repository named in `source`: (clone URL, branch or None), or None.

  `source` is a URL, or any text that holds one (URL-encoded too, as in the session record
  of Colab's Jupyter server): a repository (`https://github.com/OWNER/REPO`, `.git`,
  `.../tree/BRANCH`), a file on GitHub (`.../blob/BRANCH/PATH`) or a notebook Colab opened
  from GitHub (`https://colab.research.google.com/github/OWNER/REPO/blob/BRANCH/colabs/
  edit.ipynb`). A branch with slashes is read whole from a `.../colabs/NAME.ipynb` path (the
  notebooks' place). The placeholder owner `OWNER`, Drive, gist and non-GitHub URLs: None.
  """
  import re
  import urllib.parse
  text = urllib.parse.unquote(urllib.parse.unquote(source))
  pattern = (r"(?<![\w.-])(?:(?:www\.)?github\.com|github(?=/[\w.-]+/[\w.-]+/blob/))"
             r"/([\w-]+)/([\w.-]+)((?:/[^\s\"'<>?#&\\]*)?)")
  for match in re.finditer(pattern, text):
    owner, repo, rest = match.groups()
    repo = repo[:-4] if repo.endswith(".git") else repo
    if owner == "OWNER" or not repo:
      continue
    kind, *tail = rest.strip("/").split("/")
    branch = None
    if kind == "tree" and tail:
      branch = "/".join(tail)
    elif kind == "blob" and tail:
      cut = len(tail) - 2 if len(tail) > 2 and tail[-2] == "colabs" else 1
      branch = "/".join(tail[:cut])
    return f"https://github.com/{owner}/{repo}", branch or None
  return None


def detect_runtime(environ: dict | None = None, dev: str = "/dev") -> str:
  """The accelerator this machine has, told without JAX: "gpu", "tpu" or "cpu".

  GPU: `nvidia-smi` on the PATH, or Colab's COLAB_GPU set and not "0". TPU: COLAB_TPU_ADDR,
  TPU_NAME or TPU_ACCELERATOR_TYPE set, TPU device files (`/dev/accel*`, `/dev/vfio/<n>`)
  or the libtpu package installed. `environ` (default os.environ) and `dev` are for tests.
  """
  import glob
  import importlib.util
  import os
  import shutil
  env = os.environ if environ is None else environ
  if (shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
      or env.get("COLAB_GPU", "") not in ("", "0")):
    return "gpu"
  if (any(env.get(name) for name in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE"))
      or glob.glob(os.path.join(dev, "accel*")) or glob.glob(os.path.join(dev, "vfio", "[0-9]*"))
      or importlib.util.find_spec("libtpu") is not None):
    return "tpu"
  return "cpu"


def install(repo_url: str, jax_extra: str = "auto", repo_dir: str = "lr_jax_repo", *,
            opened_from: str | None = None, runtime: str | None = None, run=None,
            placeholder: str = "https://github.com/OWNER/lr_jax") -> str:
  """The notebooks' install cell: clones the lr_jax repository into `repo_dir` (kept when it
  is a clone already) and pip-installs it; returns the pip target.

  Repository: `repo_url` (its default branch), unless it is still the `placeholder`; then
  the GitHub repository and branch Colab opened the notebook from (`github_repo` of the
  session record of Colab's Jupyter server, $COLAB_JUPYTER_IP:$KMP_TARGET_PORT/api/sessions,
  or of `opened_from`; Colab does not document that record, so any change in it ends here
  too). Neither: a ValueError of one line that says to set REPO_URL in the Settings cell.
  `jax_extra` "auto": "cuda" on a GPU, "tpu" on a TPU, "" on the CPU (`runtime`, default
  `detect_runtime()`). pip keeps installed packages that already satisfy the requirements,
  so a runtime's JAX that is new enough (with its plugin) stays; when JAX must be upgraded,
  the extra upgrades its GPU/TPU plugin with it. `run` (default subprocess.run) is for tests.
  """
  import os
  import re
  import subprocess
  import sys
  import urllib.request
  source = "REPO_URL"
  branch = None
  if repo_url.strip() in ("", placeholder):
    if opened_from is None:
      opened_from = ""
      if os.environ.get("COLAB_JUPYTER_IP"):  # Colab: its Jupyter server knows the notebook
        address = (f"http://{os.environ['COLAB_JUPYTER_IP']}:"
                   f"{os.environ.get('KMP_TARGET_PORT', '9000')}/api/sessions")
        try:
          with urllib.request.urlopen(address, timeout=5) as answer:
            opened_from = answer.read().decode("utf-8", "replace")
        except (OSError, ValueError):
          pass
    found = github_repo(opened_from)
    if found is None:
      raise ValueError(
          f"REPO_URL is still the placeholder {placeholder} and this notebook was not opened "
          f"from a GitHub repository: set REPO_URL in the Settings cell to the lr_jax git "
          f"repository (for example https://github.com/NAME/lr_jax).")
    (repo_url, branch), source = found, "the GitHub URL Colab opened this notebook from"
  if jax_extra == "auto":
    runtime = runtime or detect_runtime()
    jax_extra = {"gpu": "cuda", "tpu": "tpu"}.get(runtime, "")
    print(f"runtime: {runtime}, so JAX_EXTRA {jax_extra!r}")
  print(f"repository: {repo_url}" + (f", branch {branch}" if branch else "") + f" (from {source})")
  commands = []
  if os.path.isdir(os.path.join(repo_dir, ".git")):
    print(f"{repo_dir} is a clone already: installing it as it is")
  elif branch and re.fullmatch(r"[0-9a-f]{40}", branch):  # a commit (a permalink)
    commands += [["git", "clone", "-q", repo_url, repo_dir],
                 ["git", "-C", repo_dir, "checkout", "-q", branch]]
  else:
    commands.append(["git", "clone", "-q", "--depth", "1", *(["--branch", branch] if branch
                                                            else []), repo_url, repo_dir])
  target = os.path.abspath(repo_dir) + (f"[{jax_extra}]" if jax_extra else "")
  commands.append([sys.executable, "-m", "pip", "install", "-q", target])
  for command in commands:
    shown = ["pip", *command[3:]] if command[0] == sys.executable else command
    print("$", " ".join(shown))
    done = (run or subprocess.run)(command, capture_output=True, text=True)
    print((done.stdout or "") + (done.stderr or ""), end="")
    if done.returncode:
      raise RuntimeError(f"{' '.join(shown[:2])} failed (its message is above): check REPO_URL "
                         f"in the Settings cell (now {repo_url}"
                         + (f", branch {branch}" if branch else "") + ").")
  return target


class AcceleratorUnusedError(UserError, RuntimeError):
  """The machine has a GPU or TPU, but JAX runs on another backend (the CPU)."""


def check_accelerator(runtime: str | None = None, backend: str | None = None,
                      environ: dict | None = None) -> str:
  """JAX's default backend, checked against the machine's accelerator (`detect_runtime`).

  A GPU or TPU that JAX does not use (a JAX without the matching plugin falls back to the
  CPU with only a log line) raises an `AcceleratorUnusedError` that names the fix. When
  $JAX_PLATFORMS is set, the choice is the user's: it prints a note instead.
  """
  env = os.environ if environ is None else environ
  runtime = detect_runtime(env) if runtime is None else runtime
  backend = jax.default_backend() if backend is None else backend
  if runtime not in JAX_PIP_FOR_RUNTIME or backend == runtime:
    return backend
  if env.get("JAX_PLATFORMS"):
    print(f"note: this machine has a {runtime.upper()}, but JAX_PLATFORMS="
          f"{env['JAX_PLATFORMS']!r} runs JAX on the {backend.upper()}")
    return backend
  raise AcceleratorUnusedError(
      f"this runtime has a {runtime.upper()}, but JAX {jax.__version__} runs on the "
      f"{backend.upper()} (its {runtime.upper()} plugin is missing or does not match): run "
      f"!pip install -U \"{JAX_PIP_FOR_RUNTIME[runtime]}\" in a cell, then Runtime → Restart "
      f"session and run the notebook from the top.")


def setup(tiny: bool, repo_dir: str | os.PathLike | None = None,
          config_name: str | None = None, editor: str = "maskgit") -> ml_collections.ConfigDict:
  """The notebook's config: the editor's tiny config (`configs/tiny.py` for MaskGIT,
  `configs/amused_tiny.py` for aMUSEd: the editor module's `CONFIGS`) when `tiny`, else
  `configs/<config_name>.py` (default: the editor's paper config).

  Prints the devices and what the config will load.
  """
  if editor not in editors.available():
    raise ValueError(f"editor must be one of {editors.available()}, got {editor!r}")
  official, tiny_name = editors.configs(editor)
  name = tiny_name if tiny else (config_name or official)
  config = load_config(name, repo_dir)
  print(describe_devices())
  if config.models == "tiny":
    print(f"config {name}: tiny random models (offline, edits are noise)")
  else:
    print(f"config {name}: editor {config.editor.name}, DINO {config.dino.repo}, "
          f"CLIP {config.clip.repo}")
  return config


def download_weights(config: ml_collections.ConfigDict) -> dict[str, pathlib.Path]:
  """Downloads (once, with progress bars) every pretrained file `config` needs.

  Returns name -> local path: the editor's files (MaskGIT: "maskgit_tokenizer",
  "maskgit_transformer"; aMUSEd: "amused", the repo folder), then "dino" and "clip"
  (folders). A tiny config needs nothing: {}.
  """
  if config.models == "tiny":
    print("tiny config: no weights to download")
    return {}
  paths = dict(editors.of(config).weight_files(config))
  paths["dino"] = hf_files.resolve_hf_repo(config.dino.repo, hf_files.MODEL_FILES)
  paths["clip"] = hf_files.resolve_hf_repo(config.clip.repo, hf_files.MODEL_FILES,
                                           hf_files.CLIP_TOKENIZER_FILES)
  for kind, path in paths.items():
    print(f"{kind}: {path}")
  return paths


def sample_examples(directory: str | os.PathLike) -> list[manifest_lib.Example]:
  """The sample cat and its manifest in `directory` (`samples.sample_examples`: written
  once)."""
  return samples.sample_examples(directory)


def write_training_set(directory: str | os.PathLike,
                       entries: Sequence[tuple[str, str, str]] = samples.TRAINING_SET) -> pathlib.Path:
  """Writes scikit-image pictures and a manifest of (image, prompt, source_prompt);
  returns the manifest's path (`samples.write_samples` with these entries)."""
  return samples.write_samples(directory, entries)


def example_for(image: str | os.PathLike, prompt: str,
                source_prompt: str | None = None) -> list[manifest_lib.Example]:
  """Examples editing `image` (a file, or each image of a folder) into `prompt`,
  checked like a manifest row."""
  return manifest_lib.examples_from_path(image, prompt, source_prompt)


def upload_image(directory: str | os.PathLike = "uploads",
                 fallback: str | os.PathLike | None = None, ask: bool = True) -> pathlib.Path:
  """In Colab (and with `ask`): asks for a file (google.colab.files.upload) and saves
  it to `directory`. Otherwise returns `fallback`, an image path the user sets."""
  if ask and in_colab():
    from google.colab import files  # pylint: disable=g-import-not-at-top
    uploaded = files.upload()
    if not uploaded:
      raise ValueError("no file was uploaded")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name, content = next(iter(uploaded.items()))
    path = directory / pathlib.Path(name).name
    path.write_bytes(content)
    if len(uploaded) > 1:
      print(f"{len(uploaded)} files uploaded; using {path.name}")
    return path
  if not fallback:
    raise ValueError("no upload (not in Colab, or ask=False): set IMAGE_PATH to an image file")
  path = pathlib.Path(fallback).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"image file {path} does not exist")
  return path


def _display_image(*, filename: str | None = None, data: bytes | None = None,
                   width: int | None = None) -> bool:
  """Shows a picture with IPython when a kernel is running; False otherwise."""
  try:
    from IPython import get_ipython  # pylint: disable=g-import-not-at-top
    from IPython.display import Image, display  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  if get_ipython() is None:
    return False
  display(Image(filename=filename, data=data, width=width))
  return True


def show(item: str | os.PathLike | np.ndarray | Iterable[Any], width: int | None = None,
         title: str = "") -> None:
  """Shows a PNG/JPEG file, an (H, W, 3) array (floats in [0, 1] or uint8), or a list
  of them, inline (outside a notebook kernel it prints what it would show)."""
  if isinstance(item, (list, tuple)):
    for x in item:
      show(x, width=width, title=title)
    return
  if title:
    print(title)
  if isinstance(item, (str, os.PathLike)):
    path = pathlib.Path(item)
    if not path.is_file():
      raise FileNotFoundError(f"no picture at {path}")
    if not _display_image(filename=str(path), width=width):
      print(f"[picture] {path}")
    return
  pixels = np.asarray(item)
  if pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"expected a picture path or an (H, W, 3) array, got shape {pixels.shape}")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  if pixels.dtype != np.uint8:
    pixels = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
  Image.fromarray(pixels).save(buffer, format="PNG")
  if not _display_image(data=buffer.getvalue(), width=width):
    print(f"[picture] array {pixels.shape}")


def summary(outcome) -> str:
  """One line about an `inference.EditOutcome`: prompt, conditioning, best candidate, score."""
  r = outcome.record
  best = r["best_candidate"]
  how = f", {r['class']['method']}" if "class" in r else ""
  return (f"{pathlib.Path(r['image']).name}: {r['prompt']!r} -> {r['conditioning']}{how}, "
          f"best candidate {best}, S={r['scores']['S'][best]:.4f}")


def show_outcomes(outcomes: Sequence[Any], width: int | None = 900) -> None:
  """Prints each edit's summary and shows its sheet (or, unsaved, its result)."""
  for outcome in outcomes:
    print(summary(outcome))
    sheet = outcome.files.get("sheet")
    show(sheet if sheet else outcome.result, width=width)


def max_param_difference(a: Any, b: Any) -> float:
  """Largest absolute difference between two parameter trees of the same structure."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  if tree_a != tree_b:
    raise ValueError(f"parameter trees differ:\n{tree_a}\nvs\n{tree_b}")
  return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(leaves_a, leaves_b)), default=0.0)

