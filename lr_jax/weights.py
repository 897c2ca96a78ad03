r"""Every pretrained file a config needs, in one command.

  python -m lr_jax.weights download --config configs/maskgit_imagenet256.py
  python -m lr_jax.weights download --config configs/maskgit_imagenet256.py --to weights

Without `--to` the files go to the caches the loaders read (the Hugging Face cache for
DINO, CLIP and aMUSEd, the MaskGIT cache), so the next run finds them. With `--to DIR`
(or $LR_JAX_WEIGHTS set) they go into DIR, one folder per model (DIR/dino-vitb16,
DIR/clip-vit-base-patch16, and the editor's: DIR/maskgit, DIR/amused-256,
DIR/stable-diffusion-inpainting, ...): copy DIR to a machine without
network and set LR_JAX_WEIGHTS=DIR there; every loader looks in it first. Each file is
checked after the download (JSON parses, safetensors complete, MaskGIT trees load).
"""
from __future__ import annotations

import os
import pathlib
import shlex
from typing import Callable

from lr_jax import run_settings
from lr_jax.encoders import hf_files
from lr_jax.encoders.hf_files import WeightsError

ENV = hf_files.WEIGHTS_ENV
DEFAULT_FOLDER = "weights"
COMMAND = "python -m lr_jax.weights download --config {config}"
CLIP_FILES = hf_files.MODEL_FILES + hf_files.CLIP_TOKENIZER_FILES


def config_argument(run: run_settings.Run) -> str:
  """The --config of this command line when there is one, else the editor's paper config."""
  try:
    from absl import flags  # pylint: disable=import-outside-toplevel
    name = flags.FLAGS["config"].config_filename if "config" in flags.FLAGS else None
  except Exception:  # pylint: disable=broad-except  (flags not parsed: a notebook)
    name = None
  if name:
    try:
      return os.path.relpath(name) if not os.path.relpath(name).startswith("..") else name
    except ValueError:
      return name
  return f"configs/{run.editor_module.CONFIGS[0]}.py"


def _hf_models(run: run_settings.Run) -> dict[str, tuple[str, tuple[str, ...]]]:
  """{"dino" / "clip": (repo, files)} of the hub models that are not local folders."""
  models = {"dino": (run.models.dino_repo, hf_files.MODEL_FILES),
            "clip": (run.models.clip_repo, CLIP_FILES)}
  return {k: v for k, v in models.items() if not pathlib.Path(v[0]).expanduser().is_dir()}


def manual_commands(run: run_settings.Run, root: str = DEFAULT_FOLDER,
                    keys: tuple[str, ...] | None = None) -> str:
  """Paste-ready lines (each under 100 characters) fetching each model (`keys`: those
  named, default all) into its own folder under `root`; the editor's come from its module
  (`download_lines`)."""
  lines = []
  for key, (repo, files) in _hf_models(run).items():
    if keys is None or key in keys:
      revision = hf_files.SAFETENSORS_REVISIONS.get(repo)
      lines.append(hf_files.short_download_command(
          repo, files, revision, f"{root}/{hf_files.local_folder(repo)}"))
  if keys is None or run.editor.name in keys:
    lines += run.editor_module.download_lines(run.config, root)
  return "\n".join(lines)


def fetch_help(run: run_settings.Run, keys: tuple[str, ...] | None = None) -> str:
  """How to get the weights: the one command first, its offline form, then by hand."""
  command = COMMAND.format(config=shlex.quote(config_argument(run)))
  by_hand = manual_commands(run, keys=keys)
  text = (f"Get every file this config needs (on a machine with network access):\n"
          f"  {command}\n"
          f"Without network here: fill a folder on a machine that has it, copy it here, point "
          f"lr_jax at it:\n"
          f"  {command} --to {DEFAULT_FOLDER}\n"
          f"  export {ENV}=$PWD/{DEFAULT_FOLDER}")
  if by_hand:
    text += f"\nOr by hand, each model into its own folder under {DEFAULT_FOLDER}/:\n{by_hand}"
  return text


# -- downloading ------------------------------------------------------------------------------


def verify_folder(folder: pathlib.Path) -> int:
  """Checks every JSON and safetensors file under `folder`; returns the bytes checked.
  A broken file is deleted (so a rerun fetches it again) and reported."""
  total = 0
  for path in sorted(folder.rglob("*")):
    if not path.is_file() or ".cache" in path.parts:
      continue
    problem = None
    if path.suffix == ".json":
      try:
        hf_files.read_json(path)
      except WeightsError as err:
        problem = str(err)
    elif path.suffix == ".safetensors":
      problem = hf_files.safetensors_problem(path)
    if problem:
      path.unlink()
      raise WeightsError(f"downloaded {path} is broken ({problem}); it was deleted: rerun the "
                         f"command")
    total += path.stat().st_size
  return total


def _fetch_hf(repo: str, files: tuple[str, ...], to: pathlib.Path | None) -> pathlib.Path:
  required = hf_files.MODEL_FILES
  optional = tuple(f for f in files if f not in required)
  local_dir = None if to is None else to / hf_files.local_folder(repo)
  return hf_files.resolve_hf_repo(repo, required, optional, local_dir=local_dir,
                                  default_repo=repo)


def _fetch_editor(run: run_settings.Run, to: pathlib.Path | None) -> list[pathlib.Path]:
  """The editor's files: its own `weight_files` (into its cache, or `to`/<its folder>)."""
  found = run.editor_module.weight_files(run.config, to)
  return [pathlib.Path(p) for p in found.values()]


def download(config, to: str | os.PathLike | None = None,
             log: Callable[[str], None] = print) -> dict[str, list[pathlib.Path]]:
  """Fetches and checks every pretrained file of `config` (a ConfigDict or parsed Run);
  `to` (default $LR_JAX_WEIGHTS, else the loaders' caches) gets one folder per model.
  Returns {model: [folders or files]}."""
  run = run_settings.parse(config)
  if run.models.kind != "official":
    log(f"config models={run.models.kind!r}: built at random, nothing to download")
    return {}
  target = to if to is not None else hf_files.weights_root()
  target = None if target is None else pathlib.Path(target).expanduser().resolve()
  offline = hf_files._offline_reason()  # pylint: disable=protected-access
  if offline is not None:
    raise WeightsError(f"cannot download: {offline}. Run this on a machine with network "
                       f"access (with --to DIR, then copy DIR here and set {ENV}=DIR).")
  if target is not None:
    target.mkdir(parents=True, exist_ok=True)
  steps = [(k, f"{k.upper()} {repo}", lambda r=repo, f=files: [_fetch_hf(r, f, target)])
           for k, (repo, files) in _hf_models(run).items()]
  steps.append((run.editor.name, f"editor {run.editor.name}",
                lambda: _fetch_editor(run, target)))
  done = {}
  for number, (key, what, fetch) in enumerate(steps, 1):
    log(f"[{number}/{len(steps)}] {what}")
    paths = fetch()
    size = sum(verify_folder(p) if p.is_dir() else p.stat().st_size for p in paths)
    log(f"      ok, {size / 1e6:.1f} MB checked: {', '.join(map(str, paths))}")
    done[key] = paths
  if target is not None:
    log(f"done: {target} holds every model. On the machine that runs lr_jax:\n"
        f"  export {ENV}={shlex.quote(str(target))}")
  else:
    log("done: the files are in the caches the loaders read")
  return done


def _main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from lr_jax import errors  # pylint: disable=import-outside-toplevel
  with errors.cli(argv[:1]):
    if argv[1:] != ["download"]:
      raise errors.UsageError(f"usage: python -m lr_jax.weights download --config FILE "
                              f"[--to DIR] (got {argv[1:]})")
    if flags.FLAGS.config is None:
      raise errors.UsageError("--config is required (configs/*.py)")
    download(flags.FLAGS.config, flags.FLAGS.to)


def main() -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from lr_jax import errors  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py) whose models "
                                  "to fetch.", lock_config=True)
  flags.DEFINE_string("to", None, f"A folder to fill, one subfolder per model, to carry to "
                      f"an offline machine (then set {ENV} to it there); default "
                      f"${ENV}, else the loaders' caches.")
  app.run(_main, flags_parser=errors.parse_flags)


if __name__ == "__main__":
  main()
