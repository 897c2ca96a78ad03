"""Finding and reading Hugging Face checkpoint files (no model code here).

`resolve_hf_repo` turns a hub repo id or a local directory into a directory that
holds the wanted files. The main branch of facebook/dino-vitb16 holds only
`pytorch_model.bin` (and a TF file); its `model.safetensors` lives in the hub's
"Adding `safetensors` variant of this model" pull request (refs/pr/7, opened by
SFconvertbot), and the hub listings suggest the same for
openai/clip-vit-base-patch16 (PR number unknown here). So the resolver tries the
main branch, then the revisions in SAFETENSORS_REVISIONS, then (online) that
pull request. With HF_HUB_OFFLINE=1, or when the hub does not answer one quick
probe, only the local cache is searched, so an offline run fails in seconds.
Failures name the download, an `hf download` command with a folder of its own per model
(and a one-time pytorch_model.bin -> model.safetensors conversion, the only step that
needs torch). Readers of JSON, safetensors and CLIP tokenizer files turn a broken file
(an HTML error page saved under the name, a truncated download) into a WeightsError that
names it.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import shlex
import socket
import urllib.parse
from typing import Any, NamedTuple, Sequence

import numpy as np

from lr_common.errors import UserError

MODEL_FILES = ("config.json", "model.safetensors")
WEIGHTS_FILE = "model.safetensors"
# Hub repos whose main branch lacks model.safetensors -> a revision that has it
# (facebook/dino-vitb16: SFconvertbot pull request #7, commit a77533c).
SAFETENSORS_REVISIONS = {"facebook/dino-vitb16": "refs/pr/7"}
SAFETENSORS_BOT = "SFconvertbot"
CONVERT_BIN_COMMAND = (
    "python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('DIR/pytorch_model.bin', map_location='cpu', weights_only=True); "
    "save_file({k: v.contiguous() for k, v in sd.items()}, 'DIR/model.safetensors')\"")


class WeightsError(UserError, ValueError):
  """A checkpoint could not be found, read, or mapped onto the Flax model."""


# A folder made by `python -m lr_jax.weights download --to DIR` (or by the `hf download`
# lines of the hints): one subfolder per model, named by `local_folder`. Set, every loader
# looks there first.
WEIGHTS_ENV = "LR_JAX_WEIGHTS"


def weights_root() -> pathlib.Path | None:
  """The folder $LR_JAX_WEIGHTS names, or None when it is unset."""
  value = os.environ.get(WEIGHTS_ENV, "").strip()
  return pathlib.Path(value).expanduser() if value else None


def carried_folder(name: str) -> pathlib.Path | None:
  """$LR_JAX_WEIGHTS/<name> (`name`: a repo id or a folder name) when it exists, else None."""
  root = weights_root()
  if root is None:
    return None
  folder = root / local_folder(name)
  return folder if folder.is_dir() else None


def local_folder(repo_id: str) -> str:
  """The folder a download command fills: the repo's name, so each model gets its own."""
  return repo_id.rstrip("/").split("/")[-1] or "model"


def download_command(repo_id: str, files: Sequence[str], revision: str | None = None,
                     local_dir: str | os.PathLike | None = None) -> str:
  """`hf download REPO FILES... [--revision REV] --local-dir DIR`, quoted for a POSIX shell.

  The `hf` CLI of huggingface_hub >= 1.0 (`huggingface-cli` is gone): names are files, a
  name ending in "/" is a whole folder; DIR defaults to `local_folder(repo_id)`.
  """
  words = ["hf", "download", repo_id, *files]
  if revision:
    words += ["--revision", revision]
  words += ["--local-dir", str(local_dir if local_dir is not None else local_folder(repo_id))]
  return " ".join(shlex.quote(w) for w in words)


def wrap_words(units: Sequence[str], width: int = 96, indent: str = "  ") -> str:
  """Shell units (already quoted; a flag and its value may be one unit) joined into lines
  under `width` characters, continued with a backslash: paste-ready in a terminal."""
  lines, line = [], indent
  for unit in units:
    if line.strip() and len(line) + len(unit) + 3 > width:
      lines.append(line + " \\")
      line = indent + "  "
    line += ("" if not line.strip() else " ") + unit
  return "\n".join(lines + [line])


def short_download_command(repo_id: str, files: Sequence[str], revision: str | None,
                           local_dir: str | os.PathLike) -> str:
  """`download_command` in lines under 100 characters (`wrap_words`)."""
  units = ["hf download " + shlex.quote(repo_id), *map(shlex.quote, files)]
  units += [f"--revision {shlex.quote(revision)}"] if revision else []
  return wrap_words(units + [f"--local-dir {shlex.quote(str(local_dir))}"])


def download_hint(repo_id: str, filenames: Sequence[str], revision: str | None = None,
                  local_dir: str | os.PathLike | None = None) -> str:
  """How to fetch the files elsewhere: the command, then what to pass here."""
  folder = local_dir if local_dir is not None else local_folder(repo_id)
  return (f"On a machine with network access run (or, for every model of a config at once, "
          f"python -m lr_jax.weights download --config FILE [--to DIR])\n"
          f"  {download_command(repo_id, filenames, revision, folder)}\n"
          f"and pass the folder {shlex.quote(str(folder))} (copied to this machine) instead of "
          f"the repo id.")


def _conversion_hint() -> str:
  return ("If a repo offers only pytorch_model.bin (the main branch of facebook/dino-vitb16 does, and "
          "apparently that of openai/clip-vit-base-patch16; their model.safetensors is in the hub "
          "pull request 'Adding `safetensors` variant of this model', refs/pr/N, see the repo's "
          "Community tab), download that revision (--revision refs/pr/N), or convert once on a "
          "machine with torch (lr_jax itself never needs torch):\n"
          f"  {CONVERT_BIN_COMMAND}")


def _offline_reason() -> str | None:
  """Why the hub cannot be asked (HF_HUB_OFFLINE, or the endpoint unreachable), else None."""
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
  if constants.HF_HUB_OFFLINE or offline_env:
    return "HF_HUB_OFFLINE is set"
  return _unreachable_reason(constants.ENDPOINT)


@functools.lru_cache(maxsize=None)
def _unreachable_reason(endpoint: str, timeout_s: float = 3.) -> str | None:
  """One quick TCP probe of the hub endpoint per process; None when it answers.

  Without it, huggingface_hub retries every file of every revision for about
  25 s before it looks in the cache, and an offline run takes minutes to fail.
  """
  url = urllib.parse.urlsplit(endpoint)
  host = url.hostname or endpoint
  port = url.port or (80 if url.scheme == "http" else 443)
  try:
    socket.create_connection((host, port), timeout=timeout_s).close()
  except OSError as err:
    return f"{host}:{port} is unreachable ({err.strerror or err})"
  return None


def _bot_revisions(repo_id: str) -> list[str]:
  """refs/pr/N of the repo's SFconvertbot pull requests (needs the network), newest first."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  if _offline_reason() is not None:
    return []
  try:
    found = huggingface_hub.HfApi().get_repo_discussions(
        repo_id, author=SAFETENSORS_BOT, discussion_type="pull_request")
    return [f"refs/pr/{d.num}" for d in found]
  except Exception:  # offline, rate limit, no such repo: nothing to add
    return []


def _hub_candidates(repo_id: str, filenames: Sequence[str], revision: str | None):
  """Yields revisions to try: the given one, else main, the known one, the bot's PRs."""
  if revision is not None:
    yield revision
    return
  yield None
  known = SAFETENSORS_REVISIONS.get(repo_id)
  if WEIGHTS_FILE in filenames:
    if known is not None:
      yield known
    for ref in _bot_revisions(repo_id):
      if ref != known:
        yield ref


def resolve_hf_repo(repo_id_or_dir: str | os.PathLike, filenames: Sequence[str],
                    optional_filenames: Sequence[str] = (),
                    revision: str | None = None,
                    default_repo: str | None = None,
                    local_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns a directory holding `filenames` (and whichever optional files exist).

  A local directory is used as is; anything else is taken as a hub repo id and
  fetched with `huggingface_hub.hf_hub_download`; with HF_HUB_OFFLINE=1, or when
  the hub endpoint does not answer a quick probe, only the local cache is
  searched. Without an explicit `revision`, a repo whose
  main branch lacks model.safetensors is tried at SAFETENSORS_REVISIONS[repo]
  and at its SFconvertbot pull requests. Failures raise WeightsError with
  instructions; where the repo is unknown (a local directory) they name the download
  of `default_repo`. A repo id with a folder of its own under $LR_JAX_WEIGHTS is read
  from there. With `local_dir`, hub files are downloaded into that folder (not the cache).
  """
  path = pathlib.Path(repo_id_or_dir).expanduser()
  hint_repo = default_repo or "<repo id>"
  carried = None if path.is_dir() or local_dir is not None else carried_folder(str(path))
  if carried is not None:
    path, hint_repo = carried, str(repo_id_or_dir)
  hint_revision = revision or SAFETENSORS_REVISIONS.get(hint_repo)
  all_files = list(filenames) + list(optional_filenames)
  if path.is_dir():
    missing = [f for f in filenames if not (path / f).is_file()]
    if missing:
      hint = download_hint(hint_repo, all_files, hint_revision, local_dir=path)
      if WEIGHTS_FILE in missing:
        hint += "\n" + _conversion_hint().replace("DIR", str(path))
      raise WeightsError(f"directory {path} lacks {missing}. " + hint)
    return path
  repo_id = str(repo_id_or_dir)
  if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
    raise WeightsError(f"{repo_id!r} is neither an existing directory nor a hub repo id. "
                       + download_hint(hint_repo, all_files, hint_revision))
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  offline = _offline_reason()
  failures = []
  into = {} if local_dir is None else {"local_dir": str(local_dir)}
  download = functools.partial(huggingface_hub.hf_hub_download,
                               local_files_only=offline is not None, **into)
  for candidate in _hub_candidates(repo_id, filenames, revision):
    try:
      local = [pathlib.Path(download(repo_id, f, revision=candidate)) for f in filenames]
    except Exception as err:  # offline, unknown repo or file, network error
      reason = "" if offline else f": {type(err).__name__}: {str(err)[:200]}"
      failures.append(f"{candidate or 'main'}{reason}")
      continue
    for name in optional_filenames:
      try:
        download(repo_id, name, revision=candidate)
      except Exception:  # optional file: absent or unreachable
        pass
    return local[0].parent
  hint_revision = revision or SAFETENSORS_REVISIONS.get(repo_id)
  raise WeightsError(
      f"could not get {list(filenames)} of Hugging Face repo '{repo_id}' "
      + (f"(hub not asked: {offline}; revisions not in the local cache: "
         if offline else "(tried ") + f"{'; '.join(failures)}). "
      + download_hint(repo_id, all_files, hint_revision)
      + "\n" + _conversion_hint().replace("DIR", local_folder(repo_id)))


class _BadHeader(ValueError):
  pass


def _safetensors_layout(path: pathlib.Path) -> tuple[dict[str, Any], int, int]:
  """(header, data bytes the header describes, data bytes present) of a safetensors file;
  raises _BadHeader saying what is wrong with the header."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise _BadHeader("shorter than a safetensors header")
      size = int.from_bytes(head, "little")
      if size > 100_000_000:
        raise _BadHeader("implausible header length")
      header = json.loads(f.read(size))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
              default=0)
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
    raise _BadHeader(f"header cannot be parsed: {err}") from None
  return header, end, path.stat().st_size - 8 - size


def safetensors_problem(path: str | os.PathLike) -> str | None:
  """Why a safetensors file is unusable (truncated, not safetensors), or None when its
  header parses and its data is as long as the header says. Reads the header only."""
  try:
    _, end, actual = _safetensors_layout(pathlib.Path(path))
  except _BadHeader as err:
    return f"not a safetensors file ({err})"
  return None if actual >= end else f"truncated ({actual} of {end} data bytes)"


def _diagnose_safetensors(path: pathlib.Path) -> str:
  """Why a safetensors file failed to load: a bad header, truncation, or something else."""
  try:
    header, end, actual = _safetensors_layout(path)
  except _BadHeader as err:
    return f"{err}: it is corrupt, truncated or not a safetensors file"
  if actual < end:
    return (f"it is truncated ({actual} data bytes, the header describes {end}): "
            f"download it again")
  dtypes = sorted({str(v.get("dtype")) for k, v in header.items() if k != "__metadata__"})
  return (f"the header is intact (tensor dtypes {dtypes}); this installation of safetensors "
          f"cannot read one of these dtypes: upgrade safetensors / ml_dtypes")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file as numpy arrays; unreadable -> WeightsError.

  bfloat16 / float16 tensors are kept as stored (numpy bfloat16 via ml_dtypes);
  `convert_state` casts every used tensor to float32.
  """
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return load_file(str(path))
  except Exception as err:
    raise WeightsError(f"could not read safetensors file {path} ({type(err).__name__}: {err}); "
                       f"{_diagnose_safetensors(pathlib.Path(path))}.") from err


def read_json(path: pathlib.Path) -> dict[str, Any]:
  """A JSON object (config.json and the like); unreadable, not JSON, or not an object
  (an HTML error page saved under the name, a list) -> WeightsError naming the file."""
  try:
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise WeightsError(f"could not read JSON file {path}: {err}") from err
  if not isinstance(data, dict):
    raise WeightsError(f"{path} holds a JSON {type(data).__name__}, not the object expected")
  return data


# A CLIP BPE tokenizer folder: tokenizer.json, or vocab.json + merges.txt; the rest is optional.
CLIP_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                        "special_tokens_map.json")


def has_clip_tokenizer(folder: pathlib.Path) -> bool:
  """Whether `folder` holds tokenizer.json, or vocab.json and merges.txt."""
  return (folder / "tokenizer.json").is_file() or (
      (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


def _check_merges(path: pathlib.Path) -> None:
  """merges.txt: an optional "#version" line, then one "left right" pair per line."""
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as err:
    raise WeightsError(f"could not read tokenizer merges {path}: {err}") from err
  for number, line in enumerate(lines, 1):
    if line.strip() and not line.startswith("#version") and len(line.split()) != 2:
      raise WeightsError(f"{path} is not a BPE merges file (line {number}: {line[:60]!r})")


def read_clip_tokenizer(folder: str | os.PathLike) -> Any:
  """transformers' CLIPTokenizerFast from a tokenizer folder, its files checked first: a
  missing pair, a JSON file that is not a JSON object or merges.txt that is not BPE merges
  (an HTML page saved under the name) is a WeightsError naming the file."""
  folder = pathlib.Path(folder)
  if not has_clip_tokenizer(folder):
    raise WeightsError(f"no tokenizer files in {folder}: it needs tokenizer.json, or vocab.json "
                       f"and merges.txt")
  for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    if (folder / name).is_file():
      read_json(folder / name)
  if (folder / "merges.txt").is_file():
    _check_merges(folder / "merges.txt")
  from transformers import CLIPTokenizerFast  # pylint: disable=import-outside-toplevel
  try:
    return CLIPTokenizerFast.from_pretrained(str(folder))
  except Exception as err:  # a file that parses but does not describe a tokenizer
    raise WeightsError(f"could not load the CLIP tokenizer in {folder}: "
                       f"{type(err).__name__}: {str(err)[:300]}") from err


class ModelFiles(NamedTuple):
  """What a transformers model folder holds, read once: its config, its weights, and its
  CLIP tokenizer where it has one."""
  directory: pathlib.Path
  config: dict[str, Any]
  tensors: dict[str, np.ndarray]
  source: str                 # the weights file, for error messages
  tokenizer: Any = None       # CLIPTokenizerFast, or None (no tokenizer files)
  tokenizer_hint: str = ""    # without tokenizer files: how to fetch them


def read_model_files(repo_id_or_dir: str | os.PathLike, *, revision: str | None = None,
                     default_repo: str | None = None, with_tokenizer: bool = False) -> ModelFiles:
  """Finds a model folder (`resolve_hf_repo`) and reads config.json, model.safetensors and,
  with `with_tokenizer`, the CLIP tokenizer files if present: one call for all the I/O
  of a model, so loaders only convert."""
  optional = CLIP_TOKENIZER_FILES if with_tokenizer else ()
  directory = resolve_hf_repo(repo_id_or_dir, MODEL_FILES, optional, revision,
                              default_repo=default_repo)
  config = read_json(directory / "config.json")
  weights = directory / WEIGHTS_FILE
  tokenizer, hint = None, ""
  if with_tokenizer and has_clip_tokenizer(directory):
    tokenizer = read_clip_tokenizer(directory)
  elif with_tokenizer:
    hint = download_hint(default_repo or str(repo_id_or_dir), CLIP_TOKENIZER_FILES,
                         local_dir=directory)
  return ModelFiles(directory, config, read_safetensors(weights), str(weights), tokenizer,
                    hint)
