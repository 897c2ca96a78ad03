"""Hugging Face CLIP / DINO checkpoints -> Flax parameters (strict, torch-free).

`load_clip` / `load_dino` accept a hub repo id or a local directory holding
`config.json` and `model.safetensors` (plus tokenizer files for CLIP).

The main branch of facebook/dino-vitb16 holds only `pytorch_model.bin` (and a
TF file); its `model.safetensors` lives in the hub's "Adding `safetensors`
variant of this model" pull request (refs/pr/7, opened by SFconvertbot). The
hub listings suggest the same for openai/clip-vit-base-patch16 (PR number
unknown here). The resolver tries
the main branch, then the revisions in SAFETENSORS_REVISIONS, then (online) that
pull request. Offline, the error names the download (and a one-time
pytorch_model.bin -> model.safetensors conversion, the only step that needs
torch). Tensors
are read with `safetensors.numpy`; the converter maps every Flax parameter to
exactly one HF tensor and fails, listing every problem, on unused tensors,
missing tensors or wrong shapes. Tensors allowed to go unused (IGNORED_*):
  * `{text,vision}_model.embeddings.position_ids`: the integer buffer
    arange(T) that older CLIP hub files store; positions here are implicit.
  * `pooler.dense.{weight,bias}`: HF ViTModel's tanh pooler, present when a
    ViTModel is saved with add_pooling_layer=True; DINO features never use it
    (the facebook/dino-* checkpoints do not contain it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import socket
import urllib.parse
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.clip import CLIP, CLIPConfig, TextConfig
from lr_jax.vit import ViT, ViTConfig
from maskgit import checkpoints as maskgit_checkpoints

HF_CLIP_REPO = "openai/clip-vit-base-patch16"
HF_DINO_REPO = "facebook/dino-vitb16"  # the paper's default; "facebook/dino-vitb8" by config
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
CLIP_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                        "special_tokens_map.json")
IGNORED_CLIP = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")
IGNORED_DINO = re.compile(r"^(vit\.)?pooler\.dense\.(weight|bias)$")
TINY_VOCAB_SIZE = 514  # 256 byte symbols, the same with "</w>", then bos, eos.

# HF config defaults (transformers CLIPVisionConfig / CLIPTextConfig / ViTConfig).
_CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                             hidden_act="quick_gelu", layer_norm_eps=1e-5)
_CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                           num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_VIT_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12, image_size=224,
                     patch_size=16, num_channels=3, qkv_bias=True)


class WeightsError(ValueError):
  """A checkpoint could not be found, read, or mapped onto the Flax model."""


@dataclasses.dataclass
class ClipBundle:
  model: CLIP
  params: Any  # the Flax "params" tree: model.apply({"params": params}, ...)
  tokenizer: Any  # transformers.CLIPTokenizerFast
  config: CLIPConfig


@dataclasses.dataclass
class DinoBundle:
  model: ViT
  params: Any
  config: ViTConfig


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------

def _download_hint(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> str:
  revision_arg = f" --revision {revision}" if revision else ""
  return (f"On a machine with network access run\n"
          f"  huggingface-cli download {repo_id} {' '.join(filenames)}{revision_arg} --local-dir DIR\n"
          f"(or `hf download ...` with the same arguments), copy DIR here and pass DIR "
          f"(a local directory) instead of the repo id.")


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
                    revision: str | None = None) -> pathlib.Path:
  """Returns a directory holding `filenames` (and whichever optional files exist).

  A local directory is used as is; anything else is taken as a hub repo id and
  fetched with `huggingface_hub.hf_hub_download`; with HF_HUB_OFFLINE=1, or when
  the hub endpoint does not answer a quick probe, only the local cache is
  searched. Without an explicit `revision`, a repo whose
  main branch lacks model.safetensors is tried at SAFETENSORS_REVISIONS[repo]
  and at its SFconvertbot pull requests. Failures raise WeightsError with
  instructions.
  """
  path = pathlib.Path(repo_id_or_dir).expanduser()
  if path.is_dir():
    missing = [f for f in filenames if not (path / f).is_file()]
    if missing:
      hint = _download_hint("<repo id>", filenames)
      if WEIGHTS_FILE in missing:
        hint += "\n" + _conversion_hint().replace("DIR", str(path))
      raise WeightsError(f"directory {path} lacks {missing}. " + hint)
    return path
  repo_id = str(repo_id_or_dir)
  if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
    raise WeightsError(f"{repo_id!r} is neither an existing directory nor a hub repo id. "
                       + _download_hint("<repo id>", filenames))
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  offline = _offline_reason()
  failures = []
  download = functools.partial(huggingface_hub.hf_hub_download,
                               local_files_only=offline is not None)
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
      + _download_hint(repo_id, list(filenames) + list(optional_filenames), hint_revision)
      + "\n" + _conversion_hint())


def _diagnose_safetensors(path: pathlib.Path) -> str:
  """Why a safetensors file failed to load: a bad header, truncation, or something else."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        return "the file is shorter than a safetensors header: it is truncated or not safetensors"
      size = int.from_bytes(head, "little")
      if size > 100_000_000:
        return "its header length is implausible: it is corrupt or not a safetensors file"
      header = json.loads(f.read(size))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
              default=0)
    dtypes = sorted({str(v.get("dtype")) for k, v in header.items() if k != "__metadata__"})
  except (OSError, ValueError, TypeError, KeyError) as err:
    return f"its header cannot be parsed ({err}): it is corrupt or not a safetensors file"
  actual = path.stat().st_size - 8 - size
  if actual < end:
    return (f"it is truncated ({actual} data bytes, the header describes {end}): "
            f"download it again")
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


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as err:
    raise WeightsError(f"could not read config {path}: {err}") from err


# ----------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------

def _activation(name: str) -> str:
  if name not in ("quick_gelu", "gelu"):
    raise WeightsError(f"unsupported hidden_act {name!r} (supported: quick_gelu, gelu)")
  return name


def _eos_token_id(value: Any) -> int:
  """The text config's eos_token_id (a list means its first entry)."""
  if isinstance(value, (list, tuple)) and value:
    value = value[0]
  if isinstance(value, bool) or not isinstance(value, int):
    raise WeightsError(f"text_config.eos_token_id must be an int, got {value!r}")
  return value


def clip_config_from_json(data: dict[str, Any]) -> CLIPConfig:
  """CLIPConfig from an HF CLIP config.json dict (legacy `*_config_dict` keys win, as in HF)."""
  vis = {**_CLIP_VISION_DEFAULTS, **(data.get("vision_config_dict") or data.get("vision_config") or {})}
  txt = {**_CLIP_TEXT_DEFAULTS, **(data.get("text_config_dict") or data.get("text_config") or {})}
  vision = ViTConfig(
      image_size=vis["image_size"], patch_size=vis["patch_size"], hidden_size=vis["hidden_size"],
      num_layers=vis["num_hidden_layers"], num_heads=vis["num_attention_heads"],
      mlp_dim=vis["intermediate_size"], layer_norm_eps=vis["layer_norm_eps"],
      activation=_activation(vis["hidden_act"]), pre_layernorm=True, final_norm="cls",
      patch_bias=False, num_channels=vis["num_channels"])
  text = TextConfig(
      vocab_size=txt["vocab_size"], max_positions=txt["max_position_embeddings"],
      hidden_size=txt["hidden_size"], num_layers=txt["num_hidden_layers"],
      num_heads=txt["num_attention_heads"], mlp_dim=txt["intermediate_size"],
      layer_norm_eps=txt["layer_norm_eps"], activation=_activation(txt["hidden_act"]),
      eos_token_id=_eos_token_id(txt.get("eos_token_id")))
  return CLIPConfig(vision=vision, text=text, projection_dim=data.get("projection_dim", 512),
                    logit_scale_init=data.get("logit_scale_init_value", 2.6592))


def dino_config_from_json(data: dict[str, Any], pos_interpolation: str = "dino") -> ViTConfig:
  """ViTConfig from an HF ViT (DINO) config.json dict.

  pos_interpolation "dino" (default) resamples the position embeddings for
  other input sizes the way facebookresearch/dino does (scale factors with the
  +0.1 offset), as the method's DINO features are defined; "hf" follows HF
  ViTModel(interpolate_pos_encoding=True) (resize to the target grid).
  """
  cfg = {**_VIT_DEFAULTS, **data}
  if not cfg["qkv_bias"]:
    raise WeightsError("ViT configs with qkv_bias=false are not supported")
  return ViTConfig(
      image_size=cfg["image_size"], patch_size=cfg["patch_size"], hidden_size=cfg["hidden_size"],
      num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
      mlp_dim=cfg["intermediate_size"], layer_norm_eps=cfg["layer_norm_eps"],
      activation=_activation(cfg["hidden_act"]), pre_layernorm=False, final_norm="tokens",
      patch_bias=True, num_channels=cfg["num_channels"], pos_interpolation=pos_interpolation)


def tiny_clip_config() -> CLIPConfig:
  """A tiny random-weight CLIP (32 px, patch 8, width 32) matching `tiny_clip_tokenizer`."""
  vision = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4,
                     mlp_dim=64, layer_norm_eps=1e-5, activation="quick_gelu", pre_layernorm=True,
                     final_norm="cls", patch_bias=False)
  text = TextConfig(vocab_size=TINY_VOCAB_SIZE, max_positions=77, hidden_size=32, num_layers=2,
                    num_heads=4, mlp_dim=64, layer_norm_eps=1e-5, activation="quick_gelu",
                    eos_token_id=TINY_VOCAB_SIZE - 1)
  return CLIPConfig(vision=vision, text=text, projection_dim=16)


def tiny_dino_config() -> ViTConfig:
  """A tiny random-weight DINO-style ViT (32 px native, patch 8, width 32)."""
  return ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4,
                   mlp_dim=64, layer_norm_eps=1e-12, activation="gelu", pre_layernorm=False,
                   final_norm="tokens", patch_bias=True, pos_interpolation="dino")


# ----------------------------------------------------------------------------
# Tokenizers.
# ----------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
  """The 256 printable stand-ins of byte-level BPE, in byte order."""
  keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
  extra = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer(model_max_length: int = 77):
  """An offline CLIP tokenizer with no merges: one token per byte (514 ids, eos = 513)."""
  from transformers import CLIPTokenizerFast  # pylint: disable=import-outside-toplevel
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  vocab = {token: i for i, token in enumerate(tokens)}
  return CLIPTokenizerFast(vocab=vocab, merges=[], model_max_length=model_max_length)


def load_clip_tokenizer(directory: pathlib.Path, config: CLIPConfig):
  """CLIPTokenizerFast from `directory`; the tiny tokenizer when it has none and the vocab fits."""
  from transformers import CLIPTokenizerFast  # pylint: disable=import-outside-toplevel
  if (directory / "tokenizer.json").is_file() or (
      (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()):
    return CLIPTokenizerFast.from_pretrained(str(directory))
  if config.text.vocab_size == TINY_VOCAB_SIZE:
    return tiny_clip_tokenizer(config.text.max_positions)
  raise WeightsError(f"no tokenizer files (tokenizer.json or vocab.json + merges.txt) in {directory}. "
                     + _download_hint("<repo id>", CLIP_TOKENIZER_FILES))


# ----------------------------------------------------------------------------
# Strict conversion.
# ----------------------------------------------------------------------------

def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "linear":
    return shape[::-1]
  if kind == "conv":  # Flax (kh, kw, in, out) <- torch (out, in, kh, kw)
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "batch1":  # torch keeps a leading batch axis of 1
    return (1, 1) + shape if len(shape) == 1 else (1,) + shape
  return shape


def _to_flax(kind: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if kind == "linear":
    return array.T
  if kind == "conv":
    return array.transpose(2, 3, 1, 0)
  return array.reshape(shape)


def _leaf(path: tuple[str, ...], prefix: str) -> tuple[str, str]:
  """Dense / LayerNorm / Embed leaf -> (hf suffix, kind)."""
  name = path[-1]
  if name == "kernel":
    return f"{prefix}.weight", "linear"
  if name == "scale":
    return f"{prefix}.weight", "same"
  if name == "embedding":
    return f"{prefix}.weight", "same"
  return f"{prefix}.{name}", "same"  # bias


_VIT_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "fc1": "intermediate.dense",
              "fc2": "output.dense", "query": "attention.attention.query",
              "key": "attention.attention.key", "value": "attention.attention.value",
              "out": "attention.output.dense"}
_CLIP_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
               "query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
               "out": "self_attn.out_proj"}


def _block(path: tuple[str, ...], hf_prefix: str, table: dict[str, str]) -> tuple[str, str] | None:
  index = int(path[0].split("_")[1])
  module = path[-2]
  if module not in table:
    return None
  return _leaf(path, f"{hf_prefix}.{index}.{table[module]}")


def _dino_name(path: tuple[str, ...], prefix: str) -> tuple[str, str] | None:
  head = path[0]
  if head == "cls_token":
    return f"{prefix}embeddings.cls_token", "batch1"
  if head == "pos_embed":
    return f"{prefix}embeddings.position_embeddings", "batch1"
  if head == "patch_embed":
    kind = "conv" if path[-1] == "kernel" else "same"
    return f"{prefix}embeddings.patch_embeddings.projection.{'weight' if kind == 'conv' else 'bias'}", kind
  if head == "final_norm":
    return _leaf(path, f"{prefix}layernorm")
  if head.startswith("block_"):
    return _block(path, f"{prefix}encoder.layer", _VIT_BLOCK)
  return None


def _clip_name(path: tuple[str, ...]) -> tuple[str, str] | None:
  head, rest = path[0], path[1:]
  if head == "logit_scale":
    return "logit_scale", "same"
  if head in ("visual_projection", "text_projection"):
    return f"{head}.weight", "linear"
  if head == "vision":
    emb = "vision_model.embeddings"
    simple = {"cls_token": (f"{emb}.class_embedding", "same"),
              "pos_embed": (f"{emb}.position_embedding.weight", "same"),
              "patch_embed": (f"{emb}.patch_embedding.weight", "conv")}
    if rest[0] in simple:
      return simple[rest[0]]
    if rest[0] in ("pre_norm", "final_norm"):
      hf = "pre_layrnorm" if rest[0] == "pre_norm" else "post_layernorm"
      return _leaf(rest, f"vision_model.{hf}")
    if rest[0].startswith("block_"):
      return _block(rest, "vision_model.encoder.layers", _CLIP_BLOCK)
  if head == "text":
    emb = "text_model.embeddings"
    if rest[0] == "token_embed":
      return f"{emb}.token_embedding.weight", "same"
    if rest[0] == "pos_embed":
      return f"{emb}.position_embedding.weight", "same"
    if rest[0] == "final_norm":
      return _leaf(rest, "text_model.final_layer_norm")
    if rest[0].startswith("block_"):
      return _block(rest, "text_model.encoder.layers", _CLIP_BLOCK)
  return None


def convert_state(hf_tensors: dict[str, np.ndarray], abstract_params: Any,
                  name_fn: Callable[[tuple[str, ...]], tuple[str, str] | None],
                  ignored: re.Pattern[str], source: str = "checkpoint") -> Any:
  """Strictly maps HF tensors onto a Flax param tree of the shapes in `abstract_params`."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  problems, used, leaves = [], set(), []
  for key_path, leaf in flat:
    path = tuple(str(getattr(k, "key", k)) for k in key_path)
    shape = tuple(leaf.shape)
    mapped = name_fn(path)
    if mapped is None:
      problems.append(f"no HF name known for Flax param {'/'.join(path)}")
      leaves.append(None)
      continue
    hf_name, kind = mapped
    if hf_name not in hf_tensors:
      problems.append(f"missing tensor {hf_name} (for Flax {'/'.join(path)}, shape {shape})")
      leaves.append(None)
      continue
    used.add(hf_name)
    array = hf_tensors[hf_name]
    if tuple(array.shape) != _hf_shape(kind, shape):
      problems.append(f"wrong shape for {hf_name}: {tuple(array.shape)}, expected "
                      f"{_hf_shape(kind, shape)} (Flax {'/'.join(path)} {shape})")
      leaves.append(None)
      continue
    leaves.append(jnp.asarray(_to_flax(kind, np.asarray(array, np.float32), shape)))
  unused = sorted(k for k in hf_tensors if k not in used and not ignored.match(k))
  problems += [f"unused tensor {k} {tuple(hf_tensors[k].shape)}" for k in unused]
  if problems:
    raise WeightsError(f"{source} does not match the Flax model ({len(problems)} problems):\n  "
                       + "\n  ".join(problems))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_params), leaves)


def _clip_dummy_inputs(config: CLIPConfig):
  size = config.vision.image_size
  pixels = jnp.zeros((1, size, size, config.vision.num_channels), jnp.float32)
  ids = jnp.zeros((1, min(8, config.text.max_positions)), jnp.int32)
  return pixels, ids


def _abstract_params(model: Any, *inputs: Any) -> Any:
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))["params"]


def convert_clip(hf_tensors: dict[str, np.ndarray], config: CLIPConfig, source: str = "checkpoint") -> Any:
  """HF CLIPModel tensors -> Flax params of `CLIP(config)`."""
  abstract = _abstract_params(CLIP(config), *_clip_dummy_inputs(config))
  return convert_state(hf_tensors, abstract, _clip_name, IGNORED_CLIP, source)


def convert_dino(hf_tensors: dict[str, np.ndarray], config: ViTConfig, source: str = "checkpoint") -> Any:
  """HF ViTModel tensors (optionally prefixed `vit.`) -> Flax params of `ViT(config)`."""
  size = config.image_size
  abstract = _abstract_params(ViT(config), jnp.zeros((1, size, size, config.num_channels)))
  prefix = "vit." if any(k.startswith("vit.embeddings.") for k in hf_tensors) else ""
  return convert_state(hf_tensors, abstract, lambda p: _dino_name(p, prefix), IGNORED_DINO, source)


# ----------------------------------------------------------------------------
# Public loaders.
# ----------------------------------------------------------------------------

def load_clip(repo_or_dir: str | os.PathLike = HF_CLIP_REPO, dtype: Any = jnp.float32,
              revision: str | None = None) -> ClipBundle:
  """CLIP model, params, tokenizer and config from a hub repo id or a local directory."""
  directory = resolve_hf_repo(repo_or_dir, MODEL_FILES, CLIP_TOKENIZER_FILES, revision)
  config = clip_config_from_json(_read_json(directory / "config.json"))
  tokenizer = load_clip_tokenizer(directory, config)
  weights = directory / "model.safetensors"
  params = convert_clip(read_safetensors(weights), config, str(weights))
  return ClipBundle(CLIP(config, dtype), params, tokenizer, config)


def load_dino(repo_or_dir: str | os.PathLike = HF_DINO_REPO, dtype: Any = jnp.float32,
              pos_interpolation: str = "dino", revision: str | None = None) -> DinoBundle:
  """DINO ViT model, params and config from a hub repo id or a local directory.

  Position embeddings are interpolated like facebookresearch/dino by default
  (see `dino_config_from_json`); 256x256 inputs to a B/16 give a 16x16 grid.
  """
  directory = resolve_hf_repo(repo_or_dir, MODEL_FILES, revision=revision)
  config = dino_config_from_json(_read_json(directory / "config.json"), pos_interpolation)
  weights = directory / "model.safetensors"
  params = convert_dino(read_safetensors(weights), config, str(weights))
  return DinoBundle(ViT(config, dtype), params, config)


def random_params(abstract_params: Any, rng: jax.Array, std: float = 0.02) -> Any:
  """Random params for the shapes in `abstract_params` (HF-style init: weights N(0, std),
  biases 0, LayerNorm scales 1), drawn with numpy: the same key gives the same params and
  nothing is compiled (eager `model.init` takes tens of seconds on a small CPU)."""
  return maskgit_checkpoints.draw_params(abstract_params, rng, lambda _: std)


def init_clip(config: CLIPConfig, rng: jax.Array, dtype: Any = jnp.float32) -> ClipBundle:
  """Randomly initialised CLIP; tokenizer is the tiny one when the vocab fits, else None."""
  model = CLIP(config, dtype)
  params = random_params(_abstract_params(model, *_clip_dummy_inputs(config)), rng)
  params["logit_scale"] = jnp.asarray(config.logit_scale_init, jnp.float32)
  tokenizer = (tiny_clip_tokenizer(config.text.max_positions)
               if config.text.vocab_size == TINY_VOCAB_SIZE else None)
  return ClipBundle(model, params, tokenizer, config)


def init_dino(config: ViTConfig, rng: jax.Array, dtype: Any = jnp.float32) -> DinoBundle:
  """Randomly initialised DINO-style ViT."""
  model = ViT(config, dtype)
  size = config.image_size
  params = random_params(_abstract_params(model, jnp.zeros((1, size, size, config.num_channels))), rng)
  return DinoBundle(model, params, config)
