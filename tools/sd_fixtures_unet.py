"""Writes the PyTorch-made parity fixtures for lr_jax's Stable Diffusion UNet.

Run by hand with the fixture environment (torch 2.13 CPU, diffusers 0.42.1):
  /work/fixture_env/bin/python tools/sd_fixtures_unet.py [--out tests/fixtures/stable_diffusion]

Writes, under --out:
  unet_<case>/config.json, unet_<case>/diffusion_pytorch_model.safetensors: diffusers'
    `UNet2DConditionModel` built from a small config (the hub's `unet/` layout; the config as
    `save_config` writes it, every key listed). Every parameter is redrawn (diffusers
    zero-initialises conv_out and the transformer projections): weights N(0, 1 / fan_in),
    biases N(0, 0.1^2), norm scales 1 + N(0, 0.2^2). The values are rounded to float16 and
    saved as F16 tensors, which halves the files; the outputs were computed in float32 from
    those same rounded values.
    Cases:
      tiny: `UNetConfig.tiny()` (9 input channels, heads as an int, 1x1-conv projections),
        8x8 latents, integer timesteps per sample;
      sd2: 4 input channels, heads as a per-block list, linear projections, upcast_attention,
        two ResNets per level, flip_sin_to_cos false and freq_shift 1, 8x6 latents, fractional
        timesteps;
      odd: three levels, two transformer layers in the first, cross_attention_dim as a list,
        downsample_padding 0, mid_block_scale_factor 1.5, a 7x10 latent (so the up path
        resizes to the skips' sizes), one scalar timestep.
  unet_<case>_io.npz: sample (B, H, W, C) NHWC, timesteps ((B,) or a 0-d scalar),
    encoder_hidden_states (B, L, D), output (B, H, W, C_out) NHWC (PyTorch's NCHW transposed).
  full_size/unet_sd15_inpaint.json, full_size/unet_sd2_inpaint.json: {"repo", "config" (the
    hub's unet/config.json values for stable-diffusion-v1-5/stable-diffusion-inpainting and
    stabilityai/stable-diffusion-2-inpainting), "shapes" (every state-dict tensor's shape of
    that model built on torch's meta device)}.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
COMMON = dict(_class_name="UNet2DConditionModel", act_fn="silu", center_input_sample=False,
              flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5, downsample_padding=1,
              mid_block_scale_factor=1, out_channels=4)

CASES = {
    "tiny": dict(
        config=dict(COMMON, in_channels=9, block_out_channels=[16, 32], layers_per_block=1,
                    down_block_types=[CROSS_DOWN, PLAIN_DOWN], up_block_types=[PLAIN_UP, CROSS_UP],
                    attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4,
                    sample_size=8),
        sample=(2, 8, 8), timesteps=[10, 980], context=(7, 16)),
    "sd2": dict(
        config=dict(COMMON, in_channels=4, block_out_channels=[16, 32], layers_per_block=2,
                    down_block_types=[CROSS_DOWN, PLAIN_DOWN], up_block_types=[PLAIN_UP, CROSS_UP],
                    attention_head_dim=[2, 4], cross_attention_dim=24, norm_num_groups=4,
                    use_linear_projection=True, upcast_attention=True, flip_sin_to_cos=False,
                    freq_shift=1, dual_cross_attention=False, only_cross_attention=False,
                    num_class_embeds=None, sample_size=8),
        sample=(2, 8, 6), timesteps=[12.5, 771.25], context=(5, 24)),
    "odd": dict(
        config=dict(COMMON, in_channels=9, block_out_channels=[8, 16, 16], layers_per_block=1,
                    down_block_types=[CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN],
                    up_block_types=[PLAIN_UP, CROSS_UP, CROSS_UP], attention_head_dim=[1, 2, 2],
                    transformer_layers_per_block=[2, 1, 1], cross_attention_dim=[12, 12, 12],
                    norm_num_groups=4, downsample_padding=0, mid_block_scale_factor=1.5,
                    sample_size=8),
        sample=(1, 7, 10), timesteps=500, context=(3, 12)),
}

_BLOCKS_SD = dict(down_block_types=[CROSS_DOWN] * 3 + [PLAIN_DOWN],
                  up_block_types=[PLAIN_UP] + [CROSS_UP] * 3)
FULL_SIZE = {
    "unet_sd15_inpaint": ("stable-diffusion-v1-5/stable-diffusion-inpainting", dict(
        _class_name="UNet2DConditionModel", _diffusers_version="0.6.0.dev0", act_fn="silu",
        attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
        center_input_sample=False, cross_attention_dim=768, downsample_padding=1,
        flip_sin_to_cos=True, freq_shift=0, in_channels=9, layers_per_block=2,
        mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4,
        sample_size=64, **_BLOCKS_SD)),
    "unet_sd2_inpaint": ("stabilityai/stable-diffusion-2-inpainting", dict(
        _class_name="UNet2DConditionModel", _diffusers_version="0.8.0", act_fn="silu",
        attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
        center_input_sample=False, cross_attention_dim=1024, downsample_padding=1,
        dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=9,
        layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32,
        num_class_embeds=None, only_cross_attention=False, out_channels=4, sample_size=64,
        upcast_attention=False, use_linear_projection=True, **_BLOCKS_SD)),
}


def redraw_parameters(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Non-zero weights everywhere, rounded to float16 values; activations stay O(1)."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        value = 1.0 + 0.2 * noise
      elif name.endswith("bias"):
        value = 0.1 * noise
      else:
        value = noise / math.sqrt(param[0].numel())
      param.copy_(value.half().float())


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def make_case(out: pathlib.Path, tag: str, spec: dict, gen: torch.Generator) -> None:
  config = spec["config"]
  model = UNet2DConditionModel.from_config(config).eval()
  redraw_parameters(model, gen)
  batch, height, width = spec["sample"]
  sample = torch.randn((batch, config["in_channels"], height, width), generator=gen)
  context = torch.randn((batch,) + spec["context"], generator=gen)
  timesteps = spec["timesteps"]
  with torch.no_grad():
    torch_steps = timesteps if np.isscalar(timesteps) else torch.tensor(timesteps)
    output = model(sample, torch_steps, encoder_hidden_states=context).sample

  folder = out / f"unet_{tag}"
  shutil.rmtree(folder, ignore_errors=True)
  folder.mkdir(parents=True)
  model.save_config(folder)
  save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
            str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
  np.savez_compressed(out / f"unet_{tag}_io.npz", sample=nhwc(sample),
                      timesteps=np.asarray(timesteps),
                      encoder_hidden_states=context.numpy().astype(np.float32),
                      output=nhwc(output))
  params = sum(p.numel() for p in model.parameters())
  print(f"{tag}: {params:,} params, output {tuple(output.shape)}, |output| max "
        f"{output.abs().max():.3f}, std {output.std():.3f}")


def make_full_size(out: pathlib.Path) -> None:
  folder = out / "full_size"
  folder.mkdir(parents=True, exist_ok=True)
  for tag, (repo, config) in FULL_SIZE.items():
    with torch.device("meta"):
      model = UNet2DConditionModel.from_config(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    record = {"repo": repo, "config": config, "shapes": shapes}
    (folder / f"{tag}.json").write_text(json.dumps(record, indent=0, sort_keys=True) + "\n")
    print(f"{tag}: {len(shapes)} tensors, {sum(math.prod(s) for s in shapes.values()):,} values")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default_out = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/stable_diffusion"
  parser.add_argument("--out", type=pathlib.Path, default=default_out)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  for tag, spec in CASES.items():
    make_case(args.out, tag, spec, gen)
  make_full_size(args.out)


if __name__ == "__main__":
  main()
