"""Writes the PyTorch-made parity fixtures for lr_jax's aMUSEd VQ model.

Run by hand (needs torch and diffusers: `pip install torch==2.13.0 diffusers==0.42.1`):
  python tools/amused_fixtures_vq.py [--out tests/fixtures/amused]

Writes, under --out:
  vq_tiny/vqvae/{config.json, diffusion_pytorch_model.safetensors}: diffusers' `VQModel` with `VQConfig.tiny()`'s
    sizes and re-drawn random weights, saved with `save_pretrained` (the hub layout);
  vq_tiny/tokenizer/: the project's tiny CLIP tokenizer (for the tokenizer loader);
  vq_tiny_io.npz: NHWC pixels in [0, 1] (non-square), diffusers' pre-quantisation latents,
    ids (`quantize(...)[2][2]`, as the inpainting pipeline takes them), the pixels decoded from
    those ids and from a second id grid that uses every code (`decode(ids,
    force_not_quantize=True, shape=...)`, as the pipeline decodes), and each id's distance
    margin to the second-nearest code;
  vq_full_config.json / vq_full_shapes.json: the amused-256/512 `vqvae/` config (the values of
    diffusers' scripts/convert_amused.py) as `save_pretrained` writes it, and every state-dict
    tensor's shape of that model built on torch's meta device.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import shutil
import sys

import numpy as np
import torch
from diffusers import VQModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lr_jax.generators.amused.vq import VQConfig  # noqa: E402
from lr_jax.encoders.hf_weights import tiny_clip_tokenizer  # noqa: E402

FULL_CONFIG = dict(  # amused/amused-256 and amused/amused-512 vqvae/config.json
    act_fn="silu", block_out_channels=[128, 256, 256, 512, 768],
    down_block_types=["DownEncoderBlock2D"] * 5, in_channels=3, latent_channels=64,
    layers_per_block=2, norm_num_groups=32, num_vq_embeddings=8192, out_channels=3,
    sample_size=32, up_block_types=["UpDecoderBlock2D"] * 5, mid_block_add_attention=False,
    lookup_from_codebook=True)
MIN_MARGIN = 1e-2  # ids whose two nearest codes are closer than this would be fragile


def diffusers_kwargs(cfg: VQConfig) -> dict:
  blocks = len(cfg.block_out_channels)
  kwargs = dataclasses.asdict(cfg)
  kwargs["block_out_channels"] = list(cfg.block_out_channels)
  return dict(kwargs, act_fn="silu", down_block_types=["DownEncoderBlock2D"] * blocks,
              up_block_types=["UpDecoderBlock2D"] * blocks, mid_block_add_attention=False,
              lookup_from_codebook=True, sample_size=32)


def redraw_weights(model: VQModel, gen: torch.Generator) -> None:
  """Weights that keep activations O(1) and make GroupNorm affine parameters matter."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if "norm" in name:
        param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
      elif name.endswith("bias"):
        param.copy_(0.1 * noise)
      elif param.ndim == 4:
        param.copy_(noise / math.sqrt(param[0].numel()))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def margins(latents: np.ndarray, codes: np.ndarray) -> np.ndarray:
  flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
  dist = np.sqrt(((flat[:, None, :] - codes[None].astype(np.float64)) ** 2).sum(-1))
  two = np.sort(dist, axis=1)[:, :2]
  return (two[:, 1] - two[:, 0]).reshape(latents.shape[:-1])


def make_tiny(out: pathlib.Path) -> None:
  cfg = VQConfig.tiny()
  gen = torch.Generator().manual_seed(0)
  rng = np.random.default_rng(1)
  pixels = rng.uniform(0.0, 1.0, size=(2, 16, 24, 3)).astype(np.float32)
  torch_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
  for attempt in range(20):
    model = VQModel(**diffusers_kwargs(cfg)).eval()
    redraw_weights(model, gen)
    with torch.no_grad():
      latents = model.encode(torch_pixels).latents
      # Codes spread like the latents, so that many ids are used and none is a near tie.
      flat = latents.permute(0, 2, 3, 1).reshape(-1, cfg.vq_embed_dim)
      mean, std = flat.mean(0), flat.std(0)
      model.quantize.embedding.weight.copy_(
          mean + std * torch.randn((cfg.num_vq_embeddings, cfg.vq_embed_dim), generator=gen))
    margin = margins(nhwc(latents), model.quantize.embedding.weight.detach().numpy())
    if margin.min() > MIN_MARGIN:
      break
    print(f"attempt {attempt}: smallest margin {margin.min():.2e}, redrawing")
  else:
    raise SystemExit("no draw without near ties")

  with torch.no_grad():
    b, _, h, w = latents.shape
    ids = model.quantize(latents)[2][2].reshape(b, h, w)
    # The pipeline passes latent_channels as the last size; it is the code width (equal at
    # full size, vq_embed_dim here).
    decoded = model.decode(ids, force_not_quantize=True,
                           shape=(b, h, w, cfg.vq_embed_dim)).sample
    all_codes = torch.from_numpy(
        rng.permutation(np.resize(np.arange(cfg.num_vq_embeddings), b * h * w)).reshape(b, h, w))
    decoded_all = model.decode(all_codes, force_not_quantize=True,
                               shape=(b, h, w, cfg.vq_embed_dim)).sample

  folder = out / "vq_tiny"
  shutil.rmtree(folder, ignore_errors=True)
  model.save_pretrained(folder / "vqvae")
  tiny_clip_tokenizer().save_pretrained(folder / "tokenizer")
  np.savez_compressed(
      out / "vq_tiny_io.npz", pixels=pixels, latents=nhwc(latents),
      ids=ids.numpy().astype(np.int32), decoded=nhwc(decoded),
      all_code_ids=all_codes.numpy().astype(np.int32), all_code_decoded=nhwc(decoded_all),
      margins=margin.astype(np.float32))
  print(f"tiny: ids {tuple(ids.shape)}, {len(np.unique(ids.numpy()))} distinct codes, "
        f"smallest margin {margin.min():.3f}, decoded range "
        f"[{decoded.min():.2f}, {decoded.max():.2f}]")


def make_full(out: pathlib.Path) -> None:
  with torch.device("meta"):
    model = VQModel(**FULL_CONFIG)
  config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()
            if not k.startswith("_")}
  config["_class_name"] = "VQModel"
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
  (out / "vq_full_config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
  (out / "vq_full_shapes.json").write_text(json.dumps(shapes, indent=0, sort_keys=True) + "\n")
  print(f"full: {len(shapes)} tensors, {sum(math.prod(s) for s in shapes.values()):,} values")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/amused")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  make_tiny(args.out)
  make_full(args.out)


if __name__ == "__main__":
  main()
