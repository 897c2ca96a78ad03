"""Official MaskGIT checkpoints: download/cache, strict loading, random init.

The released checkpoints are raw Flax msgpack files holding ``{"params": {...}}``.
Downloads go to ``$MASKGIT_CACHE_DIR`` (default ``~/.cache/lr_jax/maskgit``) through a
temporary file that is renamed into place only when complete.
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import urllib.request
from typing import Any, Optional, Sequence, Tuple

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


def _download(url: str, destination: pathlib.Path) -> None:
  """Streams ``url`` to a temp file next to ``destination``, renamed when complete."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  destination.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=destination.name + ".", suffix=".partial",
                                  dir=destination.parent)
  tmp = pathlib.Path(tmp_name)
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
      length = response.headers.get("Content-Length") if response.headers else None
      total = int(length) if length else None
      written = 0
      with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=destination.name, disable=None) as bar:
        while True:
          chunk = response.read(_CHUNK_BYTES)
          if not chunk:
            break
          out.write(chunk)
          written += len(chunk)
          bar.update(len(chunk))
      if total is not None and written != total:
        raise OSError(f"connection closed after {written} of {total} bytes")
      out.flush()
      os.fsync(out.fileno())
    os.replace(tmp, destination)
  finally:
    tmp.unlink(missing_ok=True)


DEFAULT_HINT = ("pass cache_dir=<a folder holding the files>, or the checkpoint files' "
                "paths instead of their names")


class _DownloadFailure(Exception):
  """One failed download (turned into a CheckpointError by ``_download_error``)."""

  def __init__(self, name: str, url: str, destination: pathlib.Path, cause: Exception):
    super().__init__(name)
    self.name, self.url, self.destination, self.cause = name, url, destination, cause


def _download_error(failures: Sequence[_DownloadFailure],
                    hint: Optional[str]) -> CheckpointError:
  """One-line error naming every failed file, its URL and destination, and the fixes."""
  what = "; ".join(
      f"could not download checkpoint {f.name!r} from {f.url} to {f.destination} "
      f"({type(f.cause).__name__}: {f.cause})" for f in failures)
  many = len(failures) > 1
  return CheckpointError(
      f"{what}. Without network access, download "
      f"{'the files elsewhere and copy them to the paths' if many else 'the file elsewhere and copy it to the path'}"
      f" above; or set ${CACHE_ENV_VAR} to a folder that holds {'them' if many else 'it'}; "
      f"or {hint or DEFAULT_HINT}.")


def _fetch(name_or_path: str, cache_dir: Optional[str]) -> pathlib.Path:
  """``fetch_checkpoint`` without the message: raises ``_DownloadFailure``."""
  path = pathlib.Path(str(name_or_path)).expanduser()
  if path.is_file():
    return path
  name = str(name_or_path)
  if name not in CHECKPOINT_URLS:
    raise CheckpointError(
        f"{name!r} is neither an existing checkpoint file nor a known checkpoint "
        f"name; valid names: {', '.join(CHECKPOINT_URLS)}")
  directory = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  destination = directory / name
  if not destination.is_file():
    try:
      _download(CHECKPOINT_URLS[name], destination)
    except Exception as e:  # URLError, HTTPError, IncompleteRead, OSError, ...
      raise _DownloadFailure(name, CHECKPOINT_URLS[name], destination, e) from e
  return destination


def fetch_checkpoint(name_or_path: str, cache_dir: Optional[str] = None,
                     hint: Optional[str] = None) -> pathlib.Path:
  """Local path of a checkpoint: an existing file as is, or a known name (downloaded once).

  Known names: the keys of ``CHECKPOINT_URLS``. Raises ``CheckpointError`` when the
  name is unknown or the download fails. ``hint`` ends the download error with how
  the caller's user points elsewhere (e.g. the command's own flags); default
  ``DEFAULT_HINT``.
  """
  try:
    return _fetch(name_or_path, cache_dir)
  except _DownloadFailure as failure:
    raise _download_error([failure], hint) from failure.cause


def _read_params(path: pathlib.Path) -> dict:
  try:
    state = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on bad input
    raise CheckpointError(
        f"{path} is not a readable Flax msgpack checkpoint (truncated or corrupt?): "
        f"{type(e).__name__}: {e}") from e
  if not isinstance(state, dict) or not isinstance(state.get("params"), dict):
    found = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise CheckpointError(
        f"{path} does not hold a {{'params': ...}} Flax checkpoint (found {found})")
  return state["params"]


def _shape_of(leaf) -> Optional[tuple]:
  shape = getattr(leaf, "shape", None)
  return tuple(shape) if shape is not None else None


def _describe_mismatch(path, missing, unexpected, misshaped) -> str:
  lines = [f"{path} does not match the model: {len(missing)} missing, "
           f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped tensors"]
  groups = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
  for label, items in groups:
    for item in items[:_MAX_LISTED_KEYS]:
      lines.append(f"  {label}: {item}")
    if len(items) > _MAX_LISTED_KEYS:
      lines.append(f"  ... and {len(items) - _MAX_LISTED_KEYS} more {label}")
  return "\n".join(lines)


def load_params(name_or_path: str, expected: Params,
                cache_dir: Optional[str] = None, verbose: bool = True,
                hint: Optional[str] = None) -> Params:
  """Reads a checkpoint and checks it against ``expected`` (a tree of ShapeDtypeStruct).

  ``expected`` is ``jax.eval_shape(model.init, ...)["params"]`` (a tree with a single
  top-level ``"params"`` key is unwrapped). Every missing, unexpected or mis-shaped
  tensor is reported in one ``CheckpointError``. Returns the params as float32 arrays.
  ``hint``: see ``fetch_checkpoint``.
  """
  path = fetch_checkpoint(name_or_path, cache_dir, hint)
  raw = traverse_util.flatten_dict(_read_params(path), sep="/")
  if isinstance(expected, dict) and set(expected) == {"params"}:
    expected = expected["params"]
  want = traverse_util.flatten_dict(dict(expected), sep="/")
  missing = [f"{k} {_shape_of(want[k])}" for k in sorted(set(want) - set(raw))]
  unexpected = [f"{k} {_shape_of(raw[k])}" for k in sorted(set(raw) - set(want))]
  misshaped = [f"{k}: checkpoint {_shape_of(raw[k])}, model {_shape_of(want[k])}"
               for k in sorted(set(want) & set(raw))
               if _shape_of(raw[k]) != _shape_of(want[k])]
  if missing or unexpected or misshaped:
    raise CheckpointError(_describe_mismatch(path, missing, unexpected, misshaped))
  params = {k: jnp.asarray(np.asarray(raw[k]), jnp.float32) for k in want}
  if verbose:
    count = sum(int(np.prod(v.shape)) for v in params.values())
    print(f"loaded {path}: {len(params)} tensors, {count:,} parameters",
          file=sys.stderr, flush=True)
  return traverse_util.unflatten_dict(params, sep="/")


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
  paths, failures = [], []
  for name in (tokenizer, transformer):
    try:
      paths.append(_fetch(name, cache_dir or None))
    except _DownloadFailure as failure:
      failures.append(failure)
  if failures:
    raise _download_error(failures, hint) from failures[0].cause
  tok_shapes, tr_shapes = param_shapes(config)
  return (load_params(str(paths[0]), tok_shapes), load_params(str(paths[1]), tr_shapes))
