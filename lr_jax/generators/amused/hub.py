"""The aMUSEd hub layout: finding the files, reading a subfolder, loading the VQ model strictly.

`amused/amused-256` and `amused/amused-512` are diffusers pipeline repos with one folder per
component: `vqvae/` and `transformer/` (diffusers: `config.json`,
`diffusion_pytorch_model[.fp16].safetensors`), `text_encoder/` (transformers: `config.json`,
`model[.fp16].safetensors`) and `tokenizer/` (CLIP BPE: `vocab.json`, `merges.txt`, ...).
`resolve_amused` accepts a repo id or a local directory of that layout; a repo id is looked up
like `lr_jax.encoders.hf_files` does (cache only when HF_HUB_OFFLINE is set or the hub does not answer one
quick probe), and a failure names the exact download command.
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex
from typing import Any, Callable, Sequence

import numpy as np

from lr_jax.encoders import hf_files
from lr_jax.generators.amused.vq import VQConfig, VQConfigError, abstract_params
from lr_jax.encoders.hf_files import WeightsError, read_json, read_safetensors
from lr_jax.encoders.hf_weights import convert_state

AMUSED_256 = "amused/amused-256"
AMUSED_512 = "amused/amused-512"
SUBFOLDERS = ("vqvae", "transformer", "text_encoder", "tokenizer")
VARIANTS = (None, "fp16")
WEIGHTS_STEMS = {"vqvae": "diffusion_pytorch_model", "transformer": "diffusion_pytorch_model",
                 "text_encoder": "model"}
# A tokenizer folder needs tokenizer.json, or vocab.json + merges.txt; the rest is optional.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
NOTHING_IGNORED = re.compile(r"(?!)")  # the VQ state dict has no buffers to skip


def _check_variant(variant: str | None) -> None:
  if variant not in VARIANTS:
    raise WeightsError(f"unknown weights variant {variant!r}; choose None (float32) or 'fp16'")


def weights_filename(subfolder: str, variant: str | None = None) -> str:
  """`diffusion_pytorch_model[.fp16].safetensors` or `model[.fp16].safetensors`."""
  _check_variant(variant)
  if subfolder not in WEIGHTS_STEMS:
    raise WeightsError(f"subfolder {subfolder!r} holds no weights (ones that do: "
                       f"{', '.join(WEIGHTS_STEMS)})")
  return f"{WEIGHTS_STEMS[subfolder]}{'.' + variant if variant else ''}.safetensors"


def subfolder_files(subfolder: str, variant: str | None = None) -> list[str]:
  """The files of a subfolder, relative to the pipeline directory (tokenizer: all candidates)."""
  if subfolder == "tokenizer":
    return [f"tokenizer/{name}" for name in TOKENIZER_FILES]
  if subfolder not in WEIGHTS_STEMS:
    raise WeightsError(f"unknown aMUSEd subfolder {subfolder!r} (known: {', '.join(SUBFOLDERS)})")
  return [f"{subfolder}/config.json", f"{subfolder}/{weights_filename(subfolder, variant)}"]


def _missing_files(subfolders: Sequence[str], variant: str | None,
                   present: Callable[[str], bool]) -> list[str]:
  """What `subfolders` lack, asking `present(relative path)` once per file."""
  missing = []
  for subfolder in subfolders:
    files = subfolder_files(subfolder, variant)
    if subfolder != "tokenizer":
      missing += [f for f in files if not present(f)]
      continue
    found = {f.split("/")[1] for f in files if present(f)}
    if "tokenizer.json" not in found and not {"vocab.json", "merges.txt"} <= found:
      missing.append("tokenizer/tokenizer.json (or tokenizer/vocab.json + tokenizer/merges.txt)")
  return missing


def download_command(repo_id: str, variant: str | None = None,
                     subfolders: Sequence[str] = SUBFOLDERS) -> str:
  """The `huggingface-cli download` command that fetches `subfolders` into DIR."""
  patterns = []
  for subfolder in subfolders:
    patterns += ["tokenizer/*"] if subfolder == "tokenizer" else subfolder_files(subfolder, variant)
  return (f"huggingface-cli download {repo_id} --include "
          f"{' '.join(shlex.quote(p) for p in patterns)} --local-dir DIR")


def _hint(repo_id: str, variant: str | None, subfolders: Sequence[str]) -> str:
  return (f"On a machine with network access run\n  {download_command(repo_id, variant, subfolders)}\n"
          f"(or `hf download` with the same arguments), copy DIR here and pass DIR (a local "
          f"directory) instead of the repo id.")


def resolve_amused(repo_or_dir: str | os.PathLike, variant: str | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   subfolders: Sequence[str] = SUBFOLDERS) -> pathlib.Path:
  """The pipeline directory (holding `subfolders`) for a hub repo id or a local directory.

  `variant` "fp16" picks the `*.fp16.safetensors` weights. Raises WeightsError naming every
  missing file and the download command.
  """
  _check_variant(variant)
  for subfolder in subfolders:
    subfolder_files(subfolder, variant)  # unknown names fail here, before any lookup
  path = pathlib.Path(repo_or_dir).expanduser()
  if path.is_dir():
    missing = _missing_files(subfolders, variant, lambda f: (path / f).is_file())
    if missing:
      raise WeightsError(f"directory {path} lacks {missing} of the aMUSEd layout. "
                         + _hint(AMUSED_256, variant, subfolders))
    return path
  repo_id = str(repo_or_dir)
  if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
    raise WeightsError(f"{repo_id!r} is neither an existing directory nor a hub repo id "
                       f"(such as {AMUSED_256}). " + _hint(AMUSED_256, variant, subfolders))
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

  missing = _missing_files(subfolders, variant, present)
  if missing:
    where = (f"hub not asked: {offline}; not in the local cache" if offline else
             "download failed: " + "; ".join(errors)[:800])
    raise WeightsError(f"could not get {missing} of Hugging Face repo '{repo_id}' ({where}). "
                       + _hint(repo_id, variant, subfolders))
  return roots[0]


def read_subfolder(directory: str | os.PathLike, subfolder: str,
                   variant: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json as a dict, every tensor of the weights file) of one component folder."""
  folder = pathlib.Path(directory) / subfolder
  weights = folder / weights_filename(subfolder, variant)
  missing = [str(p) for p in (folder / "config.json", weights) if not p.is_file()]
  if missing:
    raise WeightsError(f"missing {missing}. " + _hint(AMUSED_256, variant, [subfolder]))
  return read_json(folder / "config.json"), read_safetensors(weights)


# ----------------------------------------------------------------------------
# The VQ model.
# ----------------------------------------------------------------------------

# diffusers VQModel defaults for keys a config.json may leave out.
_VQ_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                    up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                    layers_per_block=1, act_fn="silu", latent_channels=3, num_vq_embeddings=256,
                    norm_num_groups=32, vq_embed_dim=None, norm_type="group",
                    mid_block_add_attention=True)


def vq_config_from_json(data: dict[str, Any]) -> VQConfig:
  """VQConfig from a diffusers `VQModel` config.json dict; every unsupported setting is listed."""
  cfg = {**_VQ_DEFAULTS, **{k: v for k, v in data.items() if k in _VQ_DEFAULTS}}
  problems = []
  if data.get("_class_name", "VQModel") != "VQModel":
    problems.append(f"_class_name is {data['_class_name']!r}, not 'VQModel'")
  for key, supported in (("act_fn", "silu"), ("norm_type", "group"),
                         ("mid_block_add_attention", False)):
    if cfg[key] != supported:
      problems.append(f"{key}={cfg[key]!r} (only {supported!r} is implemented)")
  blocks = len(cfg["block_out_channels"])
  for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    if list(cfg[key]) != [kind] * blocks:
      problems.append(f"{key}={list(cfg[key])} (expected {blocks} x {kind!r}, one per block)")
  if not problems:
    try:
      return VQConfig(
          in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
          block_out_channels=tuple(cfg["block_out_channels"]),
          layers_per_block=cfg["layers_per_block"], latent_channels=cfg["latent_channels"],
          num_vq_embeddings=cfg["num_vq_embeddings"],
          vq_embed_dim=cfg["vq_embed_dim"] or cfg["latent_channels"],
          norm_num_groups=cfg["norm_num_groups"])
    except (VQConfigError, TypeError) as err:
      problems.append(str(err))
  raise WeightsError("unsupported VQ config.json: " + "; ".join(problems))


def vq_param_name(path: tuple[str, ...]) -> tuple[str, str]:
  """Flax param path -> (diffusers state-dict name, layout kind for `convert_state`)."""
  *modules, leaf = path
  prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
  if leaf == "kernel":
    return f"{prefix}.weight", "conv"
  if leaf in ("scale", "embedding"):
    return f"{prefix}.weight", "same"
  return f"{prefix}.{leaf}", "same"


def convert_vq(tensors: dict[str, np.ndarray], config: VQConfig, source: str = "checkpoint") -> Any:
  """diffusers VQModel tensors -> float32 Flax params of `VQModel(config)` (strict)."""
  return convert_state(tensors, abstract_params(config), vq_param_name, NOTHING_IGNORED, source)


def load_vq(repo_or_dir: str | os.PathLike, variant: str | None = None,
            cache_dir: str | os.PathLike | None = None) -> tuple[VQConfig, Any]:
  """(VQConfig, params) from the `vqvae/` folder of an aMUSEd repo id or local directory."""
  directory = resolve_amused(repo_or_dir, variant, cache_dir, subfolders=("vqvae",))
  data, tensors = read_subfolder(directory, "vqvae", variant)
  config = vq_config_from_json(data)
  source = str(directory / "vqvae" / weights_filename("vqvae", variant))
  return config, convert_vq(tensors, config, source)


def load_tokenizer(repo_or_dir: str | os.PathLike,
                   cache_dir: str | os.PathLike | None = None) -> Any:
  """transformers' CLIPTokenizerFast from the `tokenizer/` folder."""
  from transformers import CLIPTokenizerFast  # pylint: disable=import-outside-toplevel
  directory = resolve_amused(repo_or_dir, cache_dir=cache_dir, subfolders=("tokenizer",))
  return CLIPTokenizerFast.from_pretrained(str(directory / "tokenizer"))
