"""The file layout of diffusers pipeline repos: one folder per component.

A pipeline repo (aMUSEd, Stable Diffusion, ...) keeps each component in a subfolder:
diffusers models as `config.json` + `diffusion_pytorch_model[.VARIANT].safetensors`,
transformers models as `config.json` + `model[.VARIANT].safetensors`, a scheduler as
`scheduler_config.json` alone, and a CLIP BPE tokenizer as `tokenizer.json` or
`vocab.json` + `merges.txt` (plus optional files). `PipelineLayout` describes one family
of repos; it finds the files of a repo id (looked up like `hf_files.resolve_hf_repo`: the
local cache only when HF_HUB_OFFLINE is set or the hub does not answer one quick probe) or
of a local directory, lists every missing file at once with a paste-ready
`hf download` command, and reads one component's config and tensors. Model code is not
here: the generator packages convert what this reads.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lr_jax.encoders import hf_files
from lr_jax.encoders.hf_files import (CLIP_TOKENIZER_FILES, WeightsError, download_command,
                                      short_download_command,
                                      local_folder, read_clip_tokenizer, read_json,
                                      read_safetensors)

VARIANTS = (None, "fp16")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"  # the weights stem of diffusers models
TRANSFORMERS_WEIGHTS = "model"  # ... and of transformers models
TOKENIZER_MISSING = "{0}/tokenizer.json (or {0}/vocab.json + {0}/merges.txt)"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_variant(variant: str | None) -> None:
  """None (the float32 files) or "fp16" (`*.fp16.safetensors`); else WeightsError."""
  if variant not in VARIANTS:
    raise WeightsError(f"unknown weights variant {variant!r}; choose None (float32) or 'fp16'")


@dataclasses.dataclass(frozen=True)
class PipelineLayout:
  """The component folders of one family of diffusers pipeline repos.

  `weights_stems` maps each folder with weights to its file stem, `config_files` each
  folder holding only a config (a scheduler) to that file, and `tokenizers` names the CLIP
  tokenizer folders. `repos` are the family's hub repo ids; the first one is named in the
  hints when only a local directory is known. `name` is the family's name in messages.
  """
  name: str
  repos: tuple[str, ...]
  subfolders: tuple[str, ...]
  weights_stems: Mapping[str, str]
  config_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  tokenizers: tuple[str, ...] = ("tokenizer",)

  def __post_init__(self):
    known = set(self.weights_stems) | set(self.config_files) | set(self.tokenizers)
    if set(self.subfolders) - known:
      raise ValueError(f"subfolders {sorted(set(self.subfolders) - known)} have no file list")

  # -- file names ---------------------------------------------------------------------------

  def weights_filename(self, subfolder: str, variant: str | None = None) -> str:
    """`diffusion_pytorch_model[.fp16].safetensors`, `model[.fp16].safetensors`, ..."""
    check_variant(variant)
    if subfolder not in self.weights_stems:
      raise WeightsError(f"subfolder {subfolder!r} holds no weights (ones that do: "
                         f"{', '.join(self.weights_stems)})")
    return f"{self.weights_stems[subfolder]}{'.' + variant if variant else ''}.safetensors"

  def subfolder_files(self, subfolder: str, variant: str | None = None) -> list[str]:
    """The files of a subfolder, relative to the pipeline directory (a tokenizer: every
    candidate, of which tokenizer.json or vocab.json + merges.txt must exist)."""
    if subfolder in self.tokenizers:
      return [f"{subfolder}/{name}" for name in CLIP_TOKENIZER_FILES]
    if subfolder in self.config_files:
      return [f"{subfolder}/{self.config_files[subfolder]}"]
    if subfolder not in self.weights_stems:
      raise WeightsError(f"unknown {self.name} subfolder {subfolder!r} "
                         f"(known: {', '.join(self.subfolders)})")
    return [f"{subfolder}/config.json", f"{subfolder}/{self.weights_filename(subfolder, variant)}"]

  def missing_files(self, subfolders: Sequence[str], variant: str | None,
                    present: Callable[[str], bool]) -> list[str]:
    """What `subfolders` lack, asking `present(relative path)` once per file."""
    missing = []
    for subfolder in subfolders:
      files = self.subfolder_files(subfolder, variant)
      if subfolder not in self.tokenizers:
        missing += [f for f in files if not present(f)]
        continue
      found = {f.split("/", 1)[1] for f in files if present(f)}
      if "tokenizer.json" not in found and not {"vocab.json", "merges.txt"} <= found:
        missing.append(TOKENIZER_MISSING.format(subfolder))
    return missing

  # -- the download hint --------------------------------------------------------------------

  def download_command(self, repo_id: str, variant: str | None = None,
                       subfolders: Sequence[str] | None = None,
                       local_dir: str | os.PathLike | None = None) -> str:
    """`hf download REPO FILES... --local-dir DIR` fetching `subfolders` (tokenizers whole)."""
    files = []
    for subfolder in self.subfolders if subfolders is None else subfolders:
      files += ([f"{subfolder}/"] if subfolder in self.tokenizers
                else self.subfolder_files(subfolder, variant))
    return download_command(repo_id, files, local_dir=local_dir)

  def hint(self, repo_id: str | None, variant: str | None, subfolders: Sequence[str],
           local_dir: str | os.PathLike | None = None) -> str:
    """How to get the files: the command for `repo_id` (None: each of `repos`), into
    `local_dir` (default: a folder named after the repo)."""
    repos = [repo_id] if repo_id else list(self.repos)
    commands = "\n".join(f"  {self.download_command(r, variant, subfolders, local_dir)}"
                         for r in repos)
    which = "" if len(repos) == 1 else f" (one of the {self.name} repos)"
    if local_dir is not None or len(repos) == 1:
      folder = "the folder " + shlex.quote(str(local_dir if local_dir is not None
                                              else local_folder(repos[0])))
    else:
      folder = "its --local-dir folder"
    return (f"On a machine with network access run{which}\n{commands}\nand pass {folder} "
            f"(copied to this machine) instead of the repo id.")

  def download_lines(self, repo_id: str, variant: str | None, root: str) -> list[str]:
    """Paste-ready lines (each under 100 characters) fetching the whole pipeline into
    `root/<repo name>`; none for a local folder."""
    if pathlib.Path(repo_id).expanduser().is_dir():
      return []
    files = [f for s in self.subfolders
             for f in ([f"{s}/"] if s in self.tokenizers else self.subfolder_files(s, variant))]
    return [short_download_command(repo_id, files, None, f"{root}/{local_folder(repo_id)}")]

  def fetch_to(self, repo_id: str, variant: str | None, root: pathlib.Path) -> pathlib.Path:
    """Downloads the pipeline into `root/<repo name>` (the folder `LR_JAX_WEIGHTS` finds)
    and returns it checked (`resolve`); a local folder is returned as it is."""
    if pathlib.Path(repo_id).expanduser().is_dir():
      return self.resolve(repo_id, variant)
    import huggingface_hub  # pylint: disable=import-outside-toplevel
    folder = root / local_folder(repo_id)
    for subfolder in self.subfolders:
      optional = subfolder in self.tokenizers   # its candidates: some need not exist
      for file in self.subfolder_files(subfolder, variant):
        try:
          huggingface_hub.hf_hub_download(repo_id, file, local_dir=str(folder))
        except Exception as err:  # pylint: disable=broad-except  (the hub raises many kinds)
          if not optional:
            raise WeightsError(f"could not download {file} of {repo_id}: "
                               f"{type(err).__name__}: {str(err)[:200]}") from err
    return self.resolve(folder, variant)

  # -- finding the files --------------------------------------------------------------------

  def resolve(self, repo_or_dir: str | os.PathLike, variant: str | None = None,
              cache_dir: str | os.PathLike | None = None,
              subfolders: Sequence[str] | None = None) -> pathlib.Path:
    """The pipeline directory holding `subfolders` (default: all) for a hub repo id or a
    local directory; `variant` "fp16" picks the `*.fp16.safetensors` weights. Raises one
    WeightsError naming every missing file and the download command."""
    subfolders = self.subfolders if subfolders is None else tuple(subfolders)
    check_variant(variant)
    for subfolder in subfolders:
      self.subfolder_files(subfolder, variant)  # unknown names fail here, before any lookup
    path = pathlib.Path(repo_or_dir).expanduser()
    if not path.is_dir() and hf_files.carried_folder(str(path)) is not None:
      path = hf_files.carried_folder(str(path))   # $LR_JAX_WEIGHTS/<repo name>
    if path.is_dir():
      missing = self.missing_files(subfolders, variant, lambda f: (path / f).is_file())
      if missing:
        raise WeightsError(f"directory {path} lacks {missing} of the {self.name} layout. "
                           + self.hint(None, variant, subfolders, local_dir=path))
      return path
    repo_id = str(repo_or_dir)
    if not _REPO_ID.fullmatch(repo_id):
      raise WeightsError(f"{repo_id!r} is neither an existing directory nor a hub repo id "
                         f"(such as {self.repos[0]}). " + self.hint(None, variant, subfolders))
    return self._from_hub(repo_id, variant, cache_dir, subfolders)

  def _from_hub(self, repo_id: str, variant: str | None, cache_dir: str | os.PathLike | None,
                subfolders: Sequence[str]) -> pathlib.Path:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
    offline = hf_files._offline_reason()  # pylint: disable=protected-access
    roots, errors = [], []

    def present(name: str) -> bool:
      try:
        local = pathlib.Path(huggingface_hub.hf_hub_download(
            repo_id, name, cache_dir=cache_dir, local_files_only=offline is not None))
      except Exception as err:  # offline, unknown repo or file, network error
        errors.append(f"{name}: {type(err).__name__}: {str(err)[:160]}")
        return False
      roots.append(local.parents[len(pathlib.PurePosixPath(name).parts) - 1])
      return True

    missing = self.missing_files(subfolders, variant, present)
    if missing:
      where = (f"hub not asked: {offline}; not in the local cache" if offline else
               "download failed: " + "; ".join(errors)[:800])
      raise WeightsError(f"could not get {missing} of Hugging Face repo '{repo_id}' ({where}). "
                         + self.hint(repo_id, variant, subfolders))
    return roots[0]

  # -- reading ------------------------------------------------------------------------------

  def read_component(self, directory: str | os.PathLike, subfolder: str,
                     variant: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the config as a dict, every tensor of the weights file) of one component folder;
    a config-only folder (a scheduler) gives no tensors."""
    folder = pathlib.Path(directory) / subfolder
    if subfolder in self.config_files:
      config = folder / self.config_files[subfolder]
      if not config.is_file():
        raise WeightsError(f"missing {config}. " + self.hint(None, variant, [subfolder],
                                                              pathlib.Path(directory)))
      return read_json(config), {}
    weights = folder / self.weights_filename(subfolder, variant)
    missing = [str(p) for p in (folder / "config.json", weights) if not p.is_file()]
    if missing:
      raise WeightsError(f"missing {missing}. "
                         + self.hint(None, variant, [subfolder], pathlib.Path(directory)))
    return read_json(folder / "config.json"), read_safetensors(weights)

  def load_tokenizer(self, repo_or_dir: str | os.PathLike,
                     cache_dir: str | os.PathLike | None = None,
                     subfolder: str = "tokenizer") -> Any:
    """transformers' CLIPTokenizerFast from a tokenizer folder of a repo id or local
    directory; its files are checked (`hf_files.read_clip_tokenizer`)."""
    if subfolder not in self.tokenizers:
      raise WeightsError(f"{subfolder!r} is not a {self.name} tokenizer folder "
                         f"(those are: {', '.join(self.tokenizers)})")
    directory = self.resolve(repo_or_dir, cache_dir=cache_dir, subfolders=(subfolder,))
    return read_clip_tokenizer(directory / subfolder)
