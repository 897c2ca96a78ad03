"""Writes the PyTorch-made parity fixtures for lr_jax's Stable Diffusion VAE (AutoencoderKL).

Run by hand with torch and diffusers (torch 2.13, diffusers 0.42.1):
  /work/fixture_env/bin/python tools/sd_fixtures_vae.py [--out tests/fixtures/stable_diffusion]

Writes, under --out:
  vae_<case>/{config.json, diffusion_pytorch_model.safetensors}: diffusers' `AutoencoderKL` with
    small random sizes and re-drawn random weights, saved with `save_pretrained` (the hub layout);
    cases `tiny` (2 blocks, `VAEConfig.tiny()`'s sizes) and `three` (3 blocks, 2 groups, 2 layers
    per block, 3 latent channels, scaling factor 0.13025, quant_conv biases that push some
    log-variances past both clamps);
  vae_<case>_io.npz: NHWC images in [-1, 1], the posterior mean and (clamped) logvar, a fixed
    N(0, 1) noise tensor and the sample mean + std * noise, random latents and their decoded
    pixels;
  vae_tiny_old_names/: the `tiny` weights under the old attention names (query, key, value,
    proj_attn) of early hub files, conv-shaped (C, C, 1, 1) in the encoder, (C, C) in the decoder;
  full_size/vae_sd.json: the SD 1.x / 2.x `vae/config.json` as `save_pretrained` writes it
    ("config") and every state-dict tensor's shape of that model built on torch's meta device
    ("shapes").
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
FULL_CONFIG = dict(  # CompVis/stable-diffusion-v1-4 ... stabilityai/stable-diffusion-2-1 vae/
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=512,
    scaling_factor=0.18215)
CASES = {
    "tiny": dict(config=dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, sample_size=16),
                 image_size=(16, 24), logvar_shifts={}),
    "three": dict(config=dict(block_out_channels=[8, 12, 16], layers_per_block=2,
                              latent_channels=3, norm_num_groups=2, sample_size=16,
                              scaling_factor=0.13025),
                  image_size=(16, 16), logvar_shifts={0: -31.0, 1: 20.5}),
}
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def diffusers_kwargs(config: dict) -> dict:
  blocks = len(config["block_out_channels"])
  return dict(in_channels=3, out_channels=3, act_fn="silu",
              down_block_types=["DownEncoderBlock2D"] * blocks,
              up_block_types=["UpDecoderBlock2D"] * blocks, **config)


def redraw_weights(model: AutoencoderKL, gen: torch.Generator) -> None:
  """Weights that keep activations O(1) and make every GroupNorm affine parameter matter."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if "norm" in name:
        param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
      elif name.endswith("bias"):
        param.copy_(0.1 * noise)
      else:  # conv (out, in, kh, kw) or linear (out, in)
        param.copy_(noise / math.sqrt(param[0].numel()))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def make_case(out: pathlib.Path, name: str, case: dict, seed: int) -> AutoencoderKL:
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  model = AutoencoderKL(**diffusers_kwargs(case["config"])).eval()
  redraw_weights(model, gen)
  latent = case["config"]["latent_channels"]
  with torch.no_grad():
    for channel, shift in case["logvar_shifts"].items():
      model.quant_conv.bias[latent + channel] += shift

  h, w = case["image_size"]
  images = rng.uniform(-1.0, 1.0, size=(2, h, w, 3)).astype(np.float32)
  factor = 2 ** (len(case["config"]["block_out_channels"]) - 1)
  latents = rng.standard_normal((2, h // factor, w // factor, latent)).astype(np.float32)
  with torch.no_grad():
    posterior = model.encode(nchw(images)).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=gen)
    sample = posterior.mean + posterior.std * noise
    decoded = model.decode(nchw(latents)).sample

  logvar = nhwc(posterior.logvar)
  for channel in case["logvar_shifts"]:
    clipped = np.isin(logvar[..., channel], (-30.0, 20.0)).mean()
    assert 0.1 < clipped < 0.9, f"{name}: {clipped:.0%} of logvar channel {channel} clamped"
  folder = out / f"vae_{name}"
  shutil.rmtree(folder, ignore_errors=True)
  model.save_pretrained(folder, safe_serialization=True)
  np.savez_compressed(out / f"vae_{name}_io.npz", images=images, mean=nhwc(posterior.mean),
                      logvar=logvar, noise=nhwc(noise), sample=nhwc(sample), latents=latents,
                      decoded=nhwc(decoded))
  print(f"{name}: latents {tuple(posterior.mean.shape)}, logvar [{logvar.min():.1f}, "
        f"{logvar.max():.1f}], decoded range [{decoded.min():.2f}, {decoded.max():.2f}], "
        f"weights {(folder / WEIGHTS).stat().st_size:,} bytes")
  return model


def write_old_names(out: pathlib.Path) -> None:
  """The tiny case's files with the mid-block attention tensors under their old names."""
  source, target = out / "vae_tiny", out / "vae_tiny_old_names"
  shutil.rmtree(target, ignore_errors=True)
  target.mkdir()
  shutil.copy(source / "config.json", target / "config.json")
  tensors, old = load_file(str(source / WEIGHTS)), {}
  for name, tensor in tensors.items():
    for new, legacy in OLD_NAMES.items():
      marker = f".attentions.0.{new}."
      if marker in name:
        name = name.replace(marker, f".attentions.0.{legacy}.")
        if name.startswith("encoder.") and name.endswith(".weight"):
          tensor = tensor[:, :, None, None]
        break
    old[name] = tensor.contiguous()
  save_file(old, str(target / WEIGHTS), metadata={"format": "pt"})
  # diffusers itself maps the old names of a (C, C) file back onto the same model.
  plain = {k: v.reshape(v.shape[:2]) if ".attentions." in k and v.ndim == 4 else v
           for k, v in old.items()}
  model = AutoencoderKL.from_config(AutoencoderKL.load_config(str(source)))
  model._fix_state_dict_keys_on_load(plain)  # pylint: disable=protected-access
  model.load_state_dict(plain, strict=True)
  renamed = sum(any(f".{v}." in k for v in OLD_NAMES.values()) for k in old)
  print(f"old names: {renamed} tensors renamed")


def make_full(out: pathlib.Path) -> None:
  with torch.device("meta"):
    model = AutoencoderKL(**FULL_CONFIG)
  config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()
            if not k.startswith("_")}
  config["_class_name"] = "AutoencoderKL"
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
  (out / "full_size").mkdir(exist_ok=True)
  (out / "full_size" / "vae_sd.json").write_text(
      json.dumps({"config": config, "shapes": shapes}, indent=0, sort_keys=True) + "\n")
  print(f"full: {len(shapes)} tensors, {sum(math.prod(s) for s in shapes.values()):,} values")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/stable_diffusion"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  for seed, (name, case) in enumerate(CASES.items()):
    make_case(args.out, name, case, seed)
  write_old_names(args.out)
  make_full(args.out)


if __name__ == "__main__":
  main()
