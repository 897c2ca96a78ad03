"""Writes PyTorch-made parity fixtures for Stable Diffusion's text encoders in lr_jax.

Run by hand with torch and transformers (never by the tests):
  /work/fixture_env/bin/python tools/sd_fixtures_text.py [--out tests/fixtures/stable_diffusion]

Writes, under --out:
  text_<case>/text_encoder/: a tiny transformers `CLIPTextModel` with re-drawn random
    weights, as the SD repos store it: config.json and model.safetensors with `text_model.*`
    names (transformers 5 saves them without the prefix; the hub files predate that).
    Cases: "quick_gelu" (SD-1.x's activation; the real eos id, padding with eos as SD-1.x's
    tokenizer does) and "gelu" (SD-2.x's exact gelu; the legacy eos_token_id 2 and the
    bos/pad ids SD-2's config carries, padding with "!" as SD-2's tokenizer does, and the
    `position_ids` buffer of older files).
  text_<case>/tokenizer/: a byte-level CLIP BPE tokenizer (one token per byte, no merges;
    the vocabulary of `lr_jax.encoders.hf_weights.tiny_clip_tokenizer`) written as the SD
    repos write theirs: vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json (no tokenizer.json).
  text_<case>_io.npz: prompts; input_ids as the SD pipeline tokenizes (transformers'
    CLIPTokenizer from that folder, padding="max_length" to 77, truncation, no attention
    mask); last_hidden_state, pooler_output and hidden_states[-2] of the PyTorch model.
  full_size/text_encoder_sd15.json, full_size/text_encoder_sd2.json: {"config": the
    config.json dict, "shapes": {tensor: shape}} of the real SD-1.5 (CLIP ViT-L/14 text) and
    SD-2 (OpenCLIP ViT-H/14 text, 23 layers) text encoders, built on torch's meta device,
    with the hub's `text_model.*` names.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

TINY_VOCAB_SIZE = 514  # hf_weights.TINY_VOCAB_SIZE: bytes, bytes + "</w>", bos, eos
BOS, EOS = TINY_VOCAB_SIZE - 2, TINY_VOCAB_SIZE - 1
PROMPTS = ["a photo of a cat", "", "Two zebras under a blue sky, oil painting!"]
TOWER_PREFIXES = ("embeddings.", "encoder.", "final_layer_norm.")

CASES = {
    # SD-1.x style: quick_gelu; the real eos id; the tokenizer pads with eos.
    "quick_gelu": dict(config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, hidden_act="quick_gelu",
                                   bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
                                   projection_dim=16),
                       pad_token="<|endoftext|>", position_ids=False, seed=11),
    # SD-2.x style: exact gelu; the legacy ids SD-2's config.json has (bos 0, eos 2, pad 1);
    # the tokenizer pads with "!"; the file also holds the position_ids buffer.
    "gelu": dict(config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                             num_attention_heads=4, hidden_act="gelu", bos_token_id=0,
                             eos_token_id=2, pad_token_id=1, projection_dim=512),
                 pad_token="!", position_ids=True, seed=12),
}

# The real text encoders' config.json values (the SD repos' text_encoder/config.json).
FULL_SIZE = {
    "sd15": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2,
                 pad_token_id=1),
    "sd2": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                layer_norm_eps=1e-5, projection_dim=512, bos_token_id=0, eos_token_id=2,
                pad_token_id=1),
}


def byte_symbols() -> list[str]:
  """Printable stand-ins of the 256 bytes, in byte order (byte-level BPE's alphabet)."""
  keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
  extra = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tokenizer(folder: pathlib.Path, pad_token: str) -> None:
  """vocab.json + merges.txt (no merges) + the two small json files, as SD repos have them."""
  folder.mkdir(parents=True, exist_ok=True)
  symbols = byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  assert len(tokens) == TINY_VOCAB_SIZE
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)},
                                                ensure_ascii=False))
  (folder / "merges.txt").write_text("#version: 0.2\n")
  special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>", "pad_token": pad_token}
  (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
  config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
            "errors": "replace", "add_prefix_space": False, **special}
  (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def redraw_weights(model: torch.nn.Module, seed: int) -> None:
  """O(1) random weights instead of the 0.02-std init, so every path shows in the outputs."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
      if "norm" in name and param.ndim == 1:
        param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
      elif name.endswith("bias"):
        param.copy_(0.1 * noise)
      elif "embedding" in name:
        param.copy_(noise)
      else:
        param.copy_(noise / math.sqrt(param.shape[1]))


def hub_names(state: dict) -> dict:
  """transformers-5 CLIPTextModel names -> the hub files' `text_model.*` names."""
  return {f"text_model.{k}" if k.startswith(TOWER_PREFIXES) else k: v for k, v in state.items()}


def make_case(out: pathlib.Path, case: str, spec: dict) -> None:
  root = out / f"text_{case}"
  config = transformers.CLIPTextConfig(vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=77,
                                       **spec["config"])
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(spec["seed"])
  model = transformers.CLIPTextModel(config).eval()
  redraw_weights(model, spec["seed"])
  folder = root / "text_encoder"
  model.save_pretrained(folder)
  state = hub_names({k: v.contiguous() for k, v in model.state_dict().items()})
  assert all(k.startswith("text_model.") for k in state), sorted(state)[:3]
  if spec["position_ids"]:
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
  save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
  data = json.loads((folder / "config.json").read_text())
  data["architectures"] = ["CLIPTextModel"]
  (folder / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True))

  write_tokenizer(root / "tokenizer", spec["pad_token"])
  tokenizer = transformers.CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
  ids = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length,
                  truncation=True, return_tensors="np")["input_ids"].astype(np.int64)
  pad_id = tokenizer.convert_tokens_to_ids(spec["pad_token"])
  assert ids.shape == (len(PROMPTS), 77) and (ids[:, -1] == pad_id).all(), ids[:, -3:]

  # The hub-named file must load back into transformers (its legacy-prefix conversion).
  reloaded = transformers.CLIPTextModel.from_pretrained(str(folder), attn_implementation="eager")
  with torch.no_grad():
    res = reloaded.eval()(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    ref = model(input_ids=torch.from_numpy(ids))
  assert torch.equal(res.last_hidden_state, ref.last_hidden_state)
  assert len(res.hidden_states) == config.num_hidden_layers + 1
  np.savez_compressed(out / f"text_{case}_io.npz", prompts=np.array(PROMPTS), input_ids=ids,
                      last_hidden_state=res.last_hidden_state.numpy(),
                      pooled=res.pooler_output.numpy(),
                      penultimate=res.hidden_states[-2].numpy())


def make_full_size(out: pathlib.Path) -> None:
  folder = out / "full_size"
  folder.mkdir(parents=True, exist_ok=True)
  for name, values in FULL_SIZE.items():
    config = transformers.CLIPTextConfig(**values)
    with torch.device("meta"):
      model = transformers.CLIPTextModel(config)
    shapes = {k: list(v.shape) for k, v in hub_names(model.state_dict()).items()}
    data = {**json.loads(config.to_json_string()), "architectures": ["CLIPTextModel"]}
    (folder / f"text_encoder_{name}.json").write_text(
        json.dumps({"config": data, "shapes": shapes}, indent=0, sort_keys=True))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "stable_diffusion"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.set_num_threads(1)
  for case, spec in CASES.items():
    make_case(args.out, case, spec)
  make_full_size(args.out)
  written = [p for p in args.out.rglob("*") if p.is_file() and (
      p.name.startswith("text_") or p.relative_to(args.out).parts[0].startswith("text_"))]
  print(f"wrote {len(written)} text fixture files to {args.out} "
        f"({sum(p.stat().st_size for p in written) / 1e6:.2f} MB; torch {torch.__version__}, "
        f"transformers {transformers.__version__})")


if __name__ == "__main__":
  main()
