"""Helpers for the Colab notebooks in colabs/ (also usable from any Jupyter kernel).

Configs: the notebooks clone the project's git repository and `pip install` the clone,
so the repository's `configs/*.py` files are on disk; `load_config` loads one of them
by path (no absl flags). It looks in, in order: the `repo_dir` argument, `$LR_JAX_REPO`,
the checkout that holds the imported `lr_jax` package (a source tree or an editable
install), and the current folder. Nothing is duplicated in code: without a checkout it
raises a `ConfigNotFoundError` that says how to get one.

Tiny mode (`setup(tiny=True)`) uses `configs/tiny.py`: small random models, no network.
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
from lr_jax import editors
from lr_jax import hf_weights
from lr_jax import manifest as manifest_lib
from lr_jax import samples

REPO_ENV_VAR = "LR_JAX_REPO"
OFFICIAL_CONFIG = editors.DEFAULT_CONFIG
TINY_CONFIG = "tiny"
TRAINING_SET = samples.TRAINING_SET


class ConfigNotFoundError(UserError, FileNotFoundError):
  """No configs/<name>.py was found in any of the places searched."""


def in_colab() -> bool:
  """True inside a Google Colab runtime."""
  try:
    return importlib.util.find_spec("google.colab") is not None
  except (ImportError, ValueError):
    return False


def _candidate_repos(repo_dir: str | os.PathLike | None) -> list[pathlib.Path]:
  candidates = []
  if repo_dir:
    candidates.append(pathlib.Path(repo_dir).expanduser())
  if os.environ.get(REPO_ENV_VAR):
    candidates.append(pathlib.Path(os.environ[REPO_ENV_VAR]).expanduser())
  candidates.append(pathlib.Path(__file__).resolve().parents[1])
  candidates.append(pathlib.Path.cwd())
  return candidates


def find_config_file(name: str, repo_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Path of `configs/<name>.py` in the first repository checkout that has it."""
  if not name or "/" in name or name.endswith(".py"):
    raise ValueError(f"config name must be a bare name such as 'tiny', got {name!r}")
  searched = []
  for repo in _candidate_repos(repo_dir):
    path = repo / "configs" / f"{name}.py"
    searched.append(str(path))
    if path.is_file():
      return path
  raise ConfigNotFoundError(
      f"configs/{name}.py not found; looked at:\n  " + "\n  ".join(searched)
      + f"\nClone the lr_jax repository (the notebooks' install cell does) and pass its "
        f"folder as repo_dir, or set ${REPO_ENV_VAR} to it.")


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


def setup(tiny: bool, repo_dir: str | os.PathLike | None = None,
          config_name: str = OFFICIAL_CONFIG) -> ml_collections.ConfigDict:
  """The notebook's config: `configs/tiny.py` when `tiny`, else `configs/<config_name>.py`.

  Prints the devices and what the config will load.
  """
  name = TINY_CONFIG if tiny else config_name
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
  "maskgit_transformer"), then "dino" and "clip" (folders). A tiny config needs
  nothing: {}.
  """
  if config.models == "tiny":
    print("tiny config: no weights to download")
    return {}
  paths = dict(editors.of(config).weight_files(config))
  paths["dino"] = hf_weights.resolve_hf_repo(config.dino.repo, hf_weights.MODEL_FILES)
  paths["clip"] = hf_weights.resolve_hf_repo(config.clip.repo, hf_weights.MODEL_FILES,
                                             hf_weights.CLIP_TOKENIZER_FILES)
  for kind, path in paths.items():
    print(f"{kind}: {path}")
  return paths


def sample_examples(directory: str | os.PathLike) -> list[manifest_lib.Example]:
  """Writes the sample cat and its manifest (lr_jax.samples) and reads it back."""
  return manifest_lib.read_manifest(samples.write_samples(directory))


def write_training_set(directory: str | os.PathLike,
                       entries: Sequence[tuple[str, str, str]] = TRAINING_SET) -> pathlib.Path:
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
  """One line about an `inference.EditOutcome`: prompt, conditioning, best anchor, score."""
  r = outcome.record
  best = r["best_anchor"]
  how = f", {r['class']['method']}" if "class" in r else ""
  return (f"{pathlib.Path(r['image']).name}: {r['prompt']!r} -> {r['conditioning']}{how}, "
          f"best anchor {best}, S={r['scores']['S'][best]:.4f}")


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

