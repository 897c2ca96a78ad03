"""Official MaskGIT checkpoints: download/cache, strict loading, random init.

The released checkpoints are raw Flax msgpack files holding ``{"params": {...}}``.
Downloads go to ``$MASKGIT_CACHE_DIR`` (default ``~/.cache/lr_jax/maskgit``) through a
temporary file that is renamed into place only when complete.
"""
from __future__ import annotations

import os
import pathlib
import shlex
import sys
import tempfile
import urllib.request
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lr_common.errors import UserError
from lr_common.random_params import draw_params
from maskgit.configs import MaskGITConfig
from maskgit.transformer import Transformer
from maskgit.vqgan import VQGAN

Params = Any

CACHE_ENV_VAR = "MASKGIT_CACHE_DIR"
_BASE_URL = "https://storage.googleapis.com/maskgit-public/checkpoints"
CHECKPOINT_URLS = {
    f"{kind}_imagenet{size}": f"{_BASE_URL}/{kind}_imagenet{size}_checkpoint"
    for kind in ("tokenizer", "maskgit") for size in (256, 512)
}
_CHUNK_BYTES = 1 << 20
_MAX_LISTED_KEYS = 40


class CheckpointError(UserError, ValueError):
  """A checkpoint cannot be found, downloaded, read, or does not fit the model."""


def default_cache_dir() -> pathlib.Path:
  """``$MASKGIT_CACHE_DIR`` if set, else ``~/.cache/lr_jax/maskgit``."""
  env = os.environ.get(CACHE_ENV_VAR)
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path("~/.cache/lr_jax/maskgit").expanduser()


class _InvalidDownload(Exception):
  """Downloaded bytes that are not the checkpoint (error page, cut-short body, wrong tree)."""


def _looks_like_text_page(content_type: str, head: bytes) -> bool:
  if content_type.split(";")[0].strip().lower().startswith("text/"):
    return True
  start = head.lstrip()[:15].lower()
  return start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))


def _download(url: str, destination: pathlib.Path,
              validate: Optional[Callable[[pathlib.Path], Any]] = None) -> Any:
  """Streams ``url`` to a temp file next to ``destination``, renamed when complete.

  Before the rename the temp file is checked with ``validate`` (default: it must
  parse as a Flax ``{"params": ...}`` msgpack tree); a failed check deletes it and
  raises ``_InvalidDownload``. Returns what ``validate`` returned.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  destination.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=destination.name + ".", suffix=".partial",
                                  dir=destination.parent)
  tmp = pathlib.Path(tmp_name)
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
      headers = response.headers or {}
      length = headers.get("Content-Length")
      content_type = headers.get("Content-Type") or ""
      total = int(length) if length else None
      written, head = 0, b""
      with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=destination.name, disable=None) as bar:
        while True:
          chunk = response.read(_CHUNK_BYTES)
          if not chunk:
            break
          if len(head) < 64:
            head += chunk[:64]
          out.write(chunk)
          written += len(chunk)
          bar.update(len(chunk))
      if total is not None and written != total:
        raise OSError(f"connection closed after {written} of {total} bytes")
      out.flush()
      os.fsync(out.fileno())
    try:
      checked = (validate or _parse_params)(tmp)
    except (CheckpointError, _InvalidCheckpoint) as e:
      problem = _one_line(str(e) if isinstance(e, _InvalidCheckpoint)
                          else _without_path(str(e), tmp))
      unreadable = isinstance(e, _Unreadable) or isinstance(e.__cause__, _Unreadable)
      if _looks_like_text_page(content_type, head):
        kind = content_type.split(";")[0].strip() or "text"
        reason = (f"the server sent a {kind} page ({written} bytes) "
                  f"instead of the checkpoint, and the download {problem}")
      elif total is None and unreadable:
        reason = (f"the response ended after {written} bytes without a Content-Length "
                  f"(cut short?), and the download {problem}")
      else:
        reason = f"the download {problem}"
      raise _InvalidDownload(reason) from e
    os.replace(tmp, destination)
    return checked
  finally:
    tmp.unlink(missing_ok=True)


def _without_path(message: str, path: pathlib.Path) -> str:
  """A validator's message about the temp file, worded to follow "the download"."""
  if message.startswith(str(path)):
    message = message[len(str(path)):].lstrip(" :")
  else:
    message = f"was rejected: {message}"
  return message.replace(str(path), "the download")


def _one_line(message: str, items: int = 3) -> str:
  first, *rest = message.splitlines() or [""]
  if not rest:
    return first
  listed = "; ".join(line.strip() for line in rest[:items])
  return f"{first} ({listed}{'; ...' if len(rest) > items else ''})"


DEFAULT_HINT = ("pass cache_dir=<a folder holding the files>, or the checkpoint files' "
                "paths instead of their names")


class _DownloadFailure(Exception):
  """One failed download (turned into a CheckpointError by ``_download_error``)."""

  def __init__(self, name: str, url: str, destination: pathlib.Path, cause: Exception):
    super().__init__(name)
    self.name, self.url, self.destination, self.cause = name, url, destination, cause


def _download_commands(failures: Sequence[_DownloadFailure]) -> str:
  """``mkdir -p DIR && curl -fL -o DIR/NAME URL`` for every failed file, one shell line."""
  folders: dict = {}
  for f in failures:
    folders.setdefault(str(f.destination.parent), []).append(f)
  parts = []
  for folder, group in folders.items():
    parts.append(" && ".join(
        [f"mkdir -p {shlex.quote(folder)}"] +
        [f"curl -fL -o {shlex.quote(str(f.destination))} {shlex.quote(f.url)}"
         for f in group]))
  return " && ".join(parts)


def _describe_failure(f: _DownloadFailure) -> str:
  if isinstance(f.cause, _InvalidDownload):
    return (f"downloaded checkpoint {f.name!r} from {f.url}, but {f.cause}; nothing "
            f"was saved to {f.destination}")
  return (f"could not download checkpoint {f.name!r} from {f.url} to {f.destination} "
          f"({type(f.cause).__name__}: {f.cause})")


def _download_error(failures: Sequence[_DownloadFailure],
                    hint: Optional[str]) -> CheckpointError:
  """One-line error naming every failed file, its URL and destination, and the fixes."""
  what = "; ".join(_describe_failure(f) for f in failures)
  many = len(failures) > 1
  return CheckpointError(
      f"{what}. Without network access, download "
      f"{'the files elsewhere and copy them to the paths' if many else 'the file elsewhere and copy it to the path'}"
      f" above (command: `{_download_commands(failures)}`); or set ${CACHE_ENV_VAR} "
      f"to a folder that holds {'them' if many else 'it'}; or {hint or DEFAULT_HINT}.")


class _Fetched(NamedTuple):
  path: pathlib.Path
  cached: bool         # an entry of the download cache, not the caller's own file
  checked: Any = None  # what the validator returned, when the file was just downloaded


def _fetch(name_or_path: str, cache_dir: Optional[str],
           validate: Optional[Callable[[pathlib.Path], Any]] = None) -> _Fetched:
  """``fetch_checkpoint`` without the message: raises ``_DownloadFailure``."""
  path = pathlib.Path(str(name_or_path)).expanduser()
  if path.is_file():
    return _Fetched(path, cached=False)
  name = str(name_or_path)
  if name not in CHECKPOINT_URLS:
    raise CheckpointError(
        f"{name!r} is neither an existing checkpoint file nor a known checkpoint "
        f"name; valid names: {', '.join(CHECKPOINT_URLS)}")
  directory = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  destination = directory / name
  if destination.is_file():
    return _Fetched(destination, cached=True)
  try:
    checked = _download(CHECKPOINT_URLS[name], destination, validate)
  except Exception as e:  # URLError, HTTPError, IncompleteRead, OSError, ...
    raise _DownloadFailure(name, CHECKPOINT_URLS[name], destination, e) from e
  return _Fetched(destination, cached=True, checked=checked)


def fetch_checkpoint(name_or_path: str, cache_dir: Optional[str] = None,
                     hint: Optional[str] = None,
                     validate: Optional[Callable[[pathlib.Path], Any]] = None
                     ) -> pathlib.Path:
  """Local path of a checkpoint: an existing file as is, or a known name (downloaded once).

  Known names: the keys of ``CHECKPOINT_URLS``. Raises ``CheckpointError`` when the
  name is unknown or the download fails. ``hint`` ends the download error with how
  the caller's user points elsewhere (e.g. the command's own flags); default
  ``DEFAULT_HINT``. A download is checked before it is renamed into the cache:
  ``validate(temp_path)`` raises ``CheckpointError`` when the file is not acceptable
  (default: it must parse as a Flax ``{"params": ...}`` msgpack tree); a rejected
  download is deleted and reported. Files already present are not re-checked here.
  """
  try:
    return _fetch(name_or_path, cache_dir, validate).path
  except _DownloadFailure as failure:
    raise _download_error([failure], hint) from failure.cause


class _InvalidCheckpoint(Exception):
  """Why a file is not a usable checkpoint, worded to follow the file's name."""


class _Unreadable(_InvalidCheckpoint):
  """The file does not parse as msgpack at all (truncated, an error page, noise)."""


def _parse_params(path: pathlib.Path) -> dict:
  """The ``params`` tree of a Flax msgpack file; raises ``_InvalidCheckpoint``."""
  try:
    state = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on bad input
    raise _Unreadable(
        f"is not a valid checkpoint: it cannot be read as a Flax msgpack checkpoint "
        f"(truncated or corrupt?): {type(e).__name__}: {e}") from e
  if not isinstance(state, dict) or not isinstance(state.get("params"), dict):
    found = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise _InvalidCheckpoint(
        f"is not a valid checkpoint: it does not hold a {{'params': ...}} Flax tree "
        f"(found {found})")
  return state["params"]


def _shape_of(leaf) -> Optional[tuple]:
  shape = getattr(leaf, "shape", None)
  return tuple(shape) if shape is not None else None


def _describe_mismatch(missing, unexpected, misshaped) -> str:
  lines = [f"does not match the model: {len(missing)} missing, "
           f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped tensors"]
  groups = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
  for label, items in groups:
    for item in items[:_MAX_LISTED_KEYS]:
      lines.append(f"  {label}: {item}")
    if len(items) > _MAX_LISTED_KEYS:
      lines.append(f"  ... and {len(items) - _MAX_LISTED_KEYS} more {label}")
  return "\n".join(lines)


def _flat_expected(expected: Params) -> dict:
  if isinstance(expected, dict) and set(expected) == {"params"}:
    expected = expected["params"]
  return traverse_util.flatten_dict(dict(expected), sep="/")


def _checked_params(path: pathlib.Path, want: dict) -> dict:
  """The flat params of ``path`` if they fit ``want`` exactly; else ``_InvalidCheckpoint``."""
  raw = traverse_util.flatten_dict(_parse_params(path), sep="/")
  missing = [f"{k} {_shape_of(want[k])}" for k in sorted(set(want) - set(raw))]
  unexpected = [f"{k} {_shape_of(raw[k])}" for k in sorted(set(raw) - set(want))]
  misshaped = [f"{k}: checkpoint {_shape_of(raw[k])}, model {_shape_of(want[k])}"
               for k in sorted(set(want) & set(raw))
               if _shape_of(raw[k]) != _shape_of(want[k])]
  if missing or unexpected or misshaped:
    raise _InvalidCheckpoint(_describe_mismatch(missing, unexpected, misshaped))
  return raw


def _bad_file_error(fetched: _Fetched, problem: str) -> CheckpointError:
  """A file that does not load: the caller's own is bad; a cache entry is to delete."""
  if not fetched.cached:
    return CheckpointError(f"{fetched.path} {problem}")
  first, newline, rest = problem.partition("\n")
  return CheckpointError(
      f"cached checkpoint {fetched.path} {first}; delete {fetched.path} and rerun to "
      f"download it again{newline}{rest}")


def _load_fetched(fetched: _Fetched, want: dict, verbose: bool) -> Params:
  raw = fetched.checked
  if raw is None:
    try:
      raw = _checked_params(fetched.path, want)
    except _InvalidCheckpoint as e:
      raise _bad_file_error(fetched, str(e)) from e
  params = {k: jnp.asarray(np.asarray(raw[k]), jnp.float32) for k in want}
  if verbose:
    count = sum(int(np.prod(v.shape)) for v in params.values())
    print(f"loaded {fetched.path}: {len(params)} tensors, {count:,} parameters",
          file=sys.stderr, flush=True)
  return traverse_util.unflatten_dict(params, sep="/")


def load_params(name_or_path: str, expected: Params,
                cache_dir: Optional[str] = None, verbose: bool = True,
                hint: Optional[str] = None) -> Params:
  """Reads a checkpoint and checks it against ``expected`` (a tree of ShapeDtypeStruct).

  ``expected`` is ``jax.eval_shape(model.init, ...)["params"]`` (a tree with a single
  top-level ``"params"`` key is unwrapped). Every missing, unexpected or mis-shaped
  tensor is reported in one ``CheckpointError``. Returns the params as float32 arrays.
  A download is checked against ``expected`` before it enters the cache; a cached
  file that does not load is named in the error, to delete. ``hint``: see
  ``fetch_checkpoint``.
  """
  want = _flat_expected(expected)
  try:
    fetched = _fetch(name_or_path, cache_dir, lambda p: _checked_params(p, want))
  except _DownloadFailure as failure:
    raise _download_error([failure], hint) from failure.cause
  return _load_fetched(fetched, want, verbose)


def _models(config: MaskGITConfig) -> Tuple[VQGAN, Transformer]:
  return VQGAN(config.tokenizer), Transformer(config.transformer)


def _init_fns(config: MaskGITConfig):
  """Init functions returning params only; the tokenizer sees one token's worth of pixels."""
  tokenizer, transformer = _models(config)
  side = config.tokenizer.downsample_factor
  images = jnp.zeros((1, side, side, 3), jnp.float32)
  tokens = jnp.zeros((1, config.transformer.sequence_length), jnp.int32)
  tok_init = lambda rng: tokenizer.init(rng, images)["params"]
  tr_init = lambda rng: transformer.init(rng, tokens)["params"]
  return tok_init, tr_init


def param_shapes(config: MaskGITConfig) -> Tuple[Params, Params]:
  """(tokenizer, transformer) param trees of ``jax.ShapeDtypeStruct``; allocates nothing."""
  tok_init, tr_init = _init_fns(config)
  rng = jax.random.PRNGKey(0)
  return jax.eval_shape(tok_init, rng), jax.eval_shape(tr_init, rng)


def init_params(config: MaskGITConfig, rng: jax.Array) -> Tuple[Params, Params]:
  """Random (tokenizer, transformer) params at the official scales, for benchmarks and
  tiny runs.

  Only the shapes are traced (`param_shapes`); the values are drawn with numpy: VQGAN
  kernels and codebook with fan-in variance (Flax's defaults, as the official code),
  transformer weights N(0, initializer_range), biases 0 and norm scales 1. Jitting
  the modules' `init` instead would compile the whole VQGAN forward (~25 s on a 2-core
  CPU even for the tiny config). Same key, same params.
  """
  tok_shapes, tr_shapes = param_shapes(config)
  tok_rng, tr_rng = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
  fan_in = lambda shape: 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1]))))
  std = config.transformer.initializer_range
  return (draw_params(tok_shapes, tok_rng, fan_in),
          draw_params(tr_shapes, tr_rng, lambda _: std))


def official_checkpoint_names(config: MaskGITConfig) -> Tuple[str, str]:
  """(tokenizer, transformer) checkpoint names for the config's resolution."""
  names = (f"tokenizer_imagenet{config.image_size}", f"maskgit_imagenet{config.image_size}")
  if any(n not in CHECKPOINT_URLS for n in names):
    raise CheckpointError(
        f"there is no official checkpoint for config {config.name!r} "
        f"(image size {config.image_size}); pass checkpoint paths explicitly")
  return names


def load_maskgit(config: MaskGITConfig, tokenizer: Optional[str] = None,
                 transformer: Optional[str] = None, cache_dir: Optional[str] = None,
                 hint: Optional[str] = None) -> Tuple[Params, Params]:
  """Loads (tokenizer_params, transformer_params), defaulting to the official files.

  Both files are fetched before either is read, so one error names every checkpoint
  that is missing. ``hint``: see ``fetch_checkpoint``.
  """
  if not tokenizer or not transformer:
    default_tok, default_tr = official_checkpoint_names(config)
    tokenizer = tokenizer or default_tok
    transformer = transformer or default_tr
  shapes = []  # computed once, and only if needed (a download to check, or loading)

  def want(i):
    if not shapes:
      shapes.extend(_flat_expected(t) for t in param_shapes(config))
    return shapes[i]

  fetched, failures = [], []
  for i, name in enumerate((tokenizer, transformer)):
    try:
      fetched.append(_fetch(name, cache_dir or None,
                            lambda p, i=i: _checked_params(p, want(i))))
    except _DownloadFailure as failure:
      failures.append(failure)
  if failures:
    raise _download_error(failures, hint) from failures[0].cause
  return (_load_fetched(fetched[0], want(0), verbose=True),
          _load_fetched(fetched[1], want(1), verbose=True))
