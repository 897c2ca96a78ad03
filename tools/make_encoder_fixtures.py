"""Writes PyTorch-made parity fixtures for lr_jax's CLIP / DINO encoders.

Run by hand (needs torch: `pip install torch==2.13.0`):
  python tools/make_encoder_fixtures.py [--out tests/fixtures/encoders]

Builds transformers' PyTorch `CLIPModel` and `ViTModel` (eager attention) with
tiny configs and re-drawn random weights (large enough that attention is far
from uniform), saves them with `save_pretrained` (config.json +
model.safetensors, the hub layout; the ViT without pooler, as the
facebook/dino-* checkpoints) and writes the inputs and HF outputs to npz files.
Images are stored NHWC; everything else as HF returns it.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lr_jax.encoders.hf_weights import TINY_VOCAB_SIZE, tiny_clip_tokenizer  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXTS = ["a photo of a cat", "a dog", "zebra stripes under blue sky"]


def redraw_weights(model: torch.nn.Module, seed: int) -> None:
  """Replaces HF's small init by weights that give peaked attention and O(1) activations."""
  gen = torch.Generator().manual_seed(seed)
  randn = lambda p: torch.randn(p.shape, generator=gen, dtype=p.dtype)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name == "logit_scale":
        continue
      is_norm = any(k in name for k in ("layer_norm", "layernorm", "layrnorm"))
      if is_norm:
        param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * randn(param))
      elif name.endswith("bias"):
        param.copy_(0.1 * randn(param))
      elif param.ndim == 4:  # patch conv
        param.copy_(randn(param) / math.sqrt(param[0].numel()))
      elif param.ndim == 2 and "embedding" not in name:
        gain = 1.5 if any(k in name for k in ("q_proj", "k_proj", "query", "key")) else 1.0
        param.copy_(gain * randn(param) / math.sqrt(param.shape[1]))
      else:  # embeddings, class token, position embeddings
        param.copy_(0.5 * randn(param))


def make_clip(out: pathlib.Path) -> None:
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                       bos_token_id=0, pad_token_id=1, eos_token_id=2),  # legacy ids, as openai/*
      vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4),
      projection_dim=16)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  redraw_weights(model, seed=1)
  model_dir = out / "clip_tiny"
  model.save_pretrained(model_dir)
  tokenizer = tiny_clip_tokenizer()
  tokenizer.save_pretrained(model_dir)

  rng = np.random.default_rng(2)
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  tok = tokenizer(TEXTS, padding="max_length", max_length=32, truncation=True,
                  return_tensors="np")
  ids, mask = tok["input_ids"].astype(np.int64), tok["attention_mask"].astype(np.int64)
  override_eos = tokenizer.convert_tokens_to_ids("a</w>")
  with torch.no_grad():
    px = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    vis = model.vision_model(pixel_values=px)
    image_embeds = model.visual_projection(vis.pooler_output)
    txt = model.text_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    text_embeds = model.text_projection(txt.pooler_output)
    logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                   pixel_values=px).logits_per_image
    model.text_model.eos_token_id = override_eos  # first-occurrence pooling path
    txt_override = model.text_model(input_ids=torch.from_numpy(ids),
                                    attention_mask=torch.from_numpy(mask))
    text_embeds_override = model.text_projection(txt_override.pooler_output)
  np.savez_compressed(
      out / "clip_io.npz", pixels=pixels, texts=np.array(TEXTS), input_ids=ids, attention_mask=mask,
      image_embeds=image_embeds.numpy(), vision_last_hidden_state=vis.last_hidden_state.numpy(),
      text_embeds=text_embeds.numpy(), text_last_hidden_state=txt.last_hidden_state.numpy(),
      logits_per_image=logits.numpy(), override_eos_token_id=np.int64(override_eos),
      text_embeds_override_eos=text_embeds_override.numpy())


def make_dino(out: pathlib.Path) -> None:
  config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu",
                                  layer_norm_eps=1e-12, qkv_bias=True)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(3)
  model = transformers.ViTModel(config, add_pooling_layer=False).eval()
  redraw_weights(model, seed=4)
  model.save_pretrained(out / "dino_tiny")

  rng = np.random.default_rng(5)
  arrays = {}
  mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
  for tag, (h, w) in {"native": (32, 32), "nonsquare": (48, 40), "small": (24, 24)}.items():
    images = rng.uniform(size=(2, h, w, 3)).astype(np.float32)
    with torch.no_grad():
      px = (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std
      res = model(pixel_values=px, output_attentions=True, interpolate_pos_encoding=tag != "native")
    attn = res.attentions[-1][:, :, 0, 1:]  # (B, heads, N)
    arrays[f"{tag}_images"] = images
    arrays[f"{tag}_last_hidden_state"] = res.last_hidden_state.numpy()
    arrays[f"{tag}_cls_attention_heads"] = attn.numpy()
    arrays[f"{tag}_cls_attention_mean"] = attn.mean(1).reshape(2, h // 8, w // 8).numpy()
  np.savez_compressed(out / "dino_io.npz", **arrays)


def make_bicubic(out: pathlib.Path) -> None:
  """torch F.interpolate bicubic (align_corners=False) by size and by scale factor."""
  rng = np.random.default_rng(6)
  arrays = {}
  size_cases = {"up_4_to_6x5": (4, (6, 5)), "down_4_to_3x3": (4, (3, 3)), "up_28_to_32": (28, (32, 32))}
  for name, (n, size) in size_cases.items():
    grid = rng.normal(size=(1, 8, n, n)).astype(np.float32)
    res = torch.nn.functional.interpolate(torch.from_numpy(grid), size=size, mode="bicubic",
                                          align_corners=False)
    arrays[f"size_{name}_in"], arrays[f"size_{name}_out"] = grid, res.numpy()
  scale_cases = {"4_to_6x5": (4, (6, 5)), "28_to_32": (28, (32, 32)), "14_to_11": (14, (11, 11))}
  for name, (n, (h, w)) in scale_cases.items():  # facebookresearch/dino's +0.1 offset
    grid = rng.normal(size=(1, 8, n, n)).astype(np.float32)
    res = torch.nn.functional.interpolate(torch.from_numpy(grid), mode="bicubic",
                                          scale_factor=((h + 0.1) / n, (w + 0.1) / n))
    assert res.shape[-2:] == (h, w), res.shape
    arrays[f"scale_{name}_in"], arrays[f"scale_{name}_out"] = grid, res.numpy()
  np.savez_compressed(out / "bicubic_io.npz", **arrays)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "encoders"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  make_clip(args.out)
  make_dino(args.out)
  make_bicubic(args.out)
  total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
  print(f"wrote fixtures to {args.out} ({total / 1e6:.2f} MB, torch {torch.__version__}, "
        f"transformers {transformers.__version__})")


if __name__ == "__main__":
  main()
