"""Writes PyTorch-made parity fixtures for lr_jax's aMUSEd transformer and text encoder.

Run by hand (needs torch, diffusers, transformers:
`pip install torch==2.13.0 diffusers==0.42.1 transformers`):
  python tools/amused_fixtures_transformer.py [--out tests/fixtures/amused]

Writes, under --out:
  transformer_plain/transformer/, transformer_down/transformer/: diffusers `UVit2DModel`s
    with small configs and re-drawn random weights, saved by `save_pretrained` (config.json +
    diffusion_pytorch_model.safetensors, the hub layout). "plain" has the amused-256 layout
    (no biases, no down/upsampling); "down" down/upsamples (as amused-512) and also has
    biases and norms without affine parameters, so those code paths are covered.
  transformer_io.npz: per model (prefix plain_ / down_): ids (with mask tokens), text hidden
    states, pooled text, micro-conditioning and the logits (B, codebook, h, w) as diffusers
    returns them.
  text_tiny/text_encoder/, text_tiny/tokenizer/: a small transformers
    `CLIPTextModelWithProjection` (eager attention) and the offline byte tokenizer.
  text_io.npz: prompts, input_ids (padded to 77, as the pipeline tokenizes), the
    penultimate hidden states (hidden_states[-2]) and text_embeds, computed without an
    attention mask (as the pipeline calls it) and with one.
  transformer_full_shapes.json: {"256", "512": {tensor: shape}} of the full-size UVit2DModels
    built on torch's meta device, and "configs": the config.json dicts diffusers writes for
    them. The full sizes are diffusers' UVit2DModel defaults with downsample/upsample and
    sample_size as diffusers' scripts/convert_amused.py sets them (16 / 32).
  text_full_shapes.json: {tensor: shape} of CLIP ViT-L/14's text tower with a 768 projection.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys

import diffusers
import numpy as np
import torch
import transformers
from diffusers.models.unets.uvit_2d import UVit2DModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lr_jax.generators.amused.transformer import UVit2DConfig  # noqa: E402  (sizes only)
from lr_jax.encoders.hf_weights import TINY_VOCAB_SIZE, tiny_clip_tokenizer  # noqa: E402

PROMPTS = ["a cat wearing sunglasses", "", "zebra stripes under a blue sky"]
GRID = (4, 6)  # a non-square token grid catches height/width mix-ups
MICRO_CONDS = [[256., 256., 0., 0., 6.], [512., 384., 16., 8., 5.5]]


def redraw_weights(model: torch.nn.Module, seed: int) -> None:
  """Replaces the init (zeros in GRN, ones in norms) by O(1) random weights."""
  gen = torch.Generator().manual_seed(seed)
  randn = lambda p: torch.randn(p.shape, generator=gen, dtype=p.dtype)
  with torch.no_grad():
    for name, param in model.named_parameters():
      leaf = name.rsplit(".", 1)[-1]
      is_norm = "norm" in name and param.ndim == 1
      if leaf in ("gamma", "beta"):
        param.copy_(0.5 * randn(param))
      elif is_norm:
        param.copy_((1.0 if leaf == "weight" else 0.0) + 0.2 * randn(param))
      elif leaf == "bias":
        param.copy_(0.1 * randn(param))
      elif "embedding" in name:
        param.copy_(randn(param))
      elif param.ndim == 4:  # conv (out, in, kh, kw) or transposed conv (in, out, kh, kw)
        fan_in = param.shape[1] * param.shape[2] * param.shape[3]
        if "upsample" in name:
          fan_in = param.shape[0]
        param.copy_(randn(param) / math.sqrt(fan_in))
      else:
        gain = 1.5 if any(k in name for k in ("to_q", "to_k", "q_proj", "k_proj")) else 1.0
        param.copy_(gain * randn(param) / math.sqrt(param.shape[1]))


def diffusers_kwargs(config: UVit2DConfig) -> dict:
  return dict(dataclasses.asdict(config), hidden_dropout=0.0, attention_dropout=0.0)


def make_transformers(out: pathlib.Path) -> None:
  cases = {"plain": UVit2DConfig.tiny(),
           "down": UVit2DConfig.tiny(downsample=True, use_bias=True, ln_elementwise_affine=False)}
  arrays = {}
  rng = np.random.default_rng(0)
  for seed, (tag, config) in enumerate(cases.items()):
    torch.manual_seed(seed)
    model = UVit2DModel(**diffusers_kwargs(config)).eval()
    redraw_weights(model, seed=10 + seed)
    model.save_pretrained(out / f"transformer_{tag}" / "transformer")
    batch = len(MICRO_CONDS)
    ids = rng.integers(0, config.codebook_size, size=(batch,) + GRID)
    ids[rng.uniform(size=ids.shape) < 0.5] = config.vocab_size - 1  # the mask token
    text_hidden = rng.normal(size=(batch, 7, config.encoder_hidden_size)).astype(np.float32)
    pooled = rng.normal(size=(batch, config.cond_embed_dim)).astype(np.float32)
    micro = np.asarray(MICRO_CONDS, np.float32)
    with torch.no_grad():
      logits = model(torch.from_numpy(ids), torch.from_numpy(text_hidden),
                     torch.from_numpy(pooled), torch.from_numpy(micro))
    arrays.update({f"{tag}_ids": ids.astype(np.int32), f"{tag}_text_hidden": text_hidden,
                   f"{tag}_pooled_text": pooled, f"{tag}_micro_conds": micro,
                   f"{tag}_logits": logits.numpy()})
  np.savez_compressed(out / "transformer_io.npz", **arrays)


def tiny_text_config() -> transformers.CLIPTextConfig:
  return transformers.CLIPTextConfig(
      vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
      projection_dim=16, bos_token_id=TINY_VOCAB_SIZE - 2, eos_token_id=TINY_VOCAB_SIZE - 1,
      pad_token_id=TINY_VOCAB_SIZE - 1)


def make_text(out: pathlib.Path) -> None:
  config = tiny_text_config()
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(5)
  model = transformers.CLIPTextModelWithProjection(config).eval()
  redraw_weights(model, seed=6)
  model.save_pretrained(out / "text_tiny" / "text_encoder")
  tokenizer = tiny_clip_tokenizer()
  tokenizer.save_pretrained(out / "text_tiny" / "tokenizer")
  tok = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length,
                  truncation=True, return_tensors="np")
  ids, mask = tok["input_ids"].astype(np.int64), tok["attention_mask"].astype(np.int64)
  arrays = {"prompts": np.array(PROMPTS), "input_ids": ids, "attention_mask": mask}
  with torch.no_grad():
    for tag, kwargs in {"nomask": {}, "mask": {"attention_mask": torch.from_numpy(mask)}}.items():
      res = model(input_ids=torch.from_numpy(ids), output_hidden_states=True, **kwargs)
      assert len(res.hidden_states) == config.num_hidden_layers + 1
      arrays[f"{tag}_penultimate"] = res.hidden_states[-2].numpy()
      arrays[f"{tag}_text_embeds"] = res.text_embeds.numpy()
  np.savez_compressed(out / "text_io.npz", **arrays)


def shapes(model: torch.nn.Module) -> dict:
  return {k: list(v.shape) for k, v in model.state_dict().items()}


def make_full_shapes(out: pathlib.Path) -> None:
  result = {"configs": {}}
  for resolution in (256, 512):
    with torch.device("meta"):
      model = UVit2DModel(**diffusers_kwargs(UVit2DConfig.preset(resolution)))
    result[str(resolution)] = shapes(model)
    result["configs"][str(resolution)] = json.loads(model.to_json_string())
  (out / "transformer_full_shapes.json").write_text(json.dumps(result, indent=0, sort_keys=True))
  text_config = transformers.CLIPTextConfig(
      vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
      projection_dim=768)
  with torch.device("meta"):
    text_shapes = shapes(transformers.CLIPTextModelWithProjection(text_config))
  (out / "text_full_shapes.json").write_text(json.dumps(text_shapes, indent=0, sort_keys=True))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "amused"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.set_num_threads(1)
  make_transformers(args.out)
  make_text(args.out)
  make_full_shapes(args.out)
  names = ("transformer_", "text_")
  total = sum(p.stat().st_size for p in args.out.rglob("*")
              if p.is_file() and p.relative_to(args.out).parts[0].startswith(names))
  print(f"wrote transformer/text fixtures to {args.out} ({total / 1e6:.2f} MB, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}, transformers "
        f"{transformers.__version__})")


if __name__ == "__main__":
  main()
