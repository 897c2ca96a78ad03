"""Writes the parity fixtures of lr_jax's SD inpainting (diffusers' StableDiffusionInpaintPipeline).

Run by hand with the fixture environment (torch 2.13 CPU, diffusers 0.42.1, transformers 5):
  /work/fixture_env/bin/python tools/sd_fixtures_pipeline.py [--out tests/fixtures/stable_diffusion]

Writes, under --out:
  pipeline_tiny/: a tiny random inpainting pipeline in the hub layout, with the sizes of
    `lr_jax.generators.stable_diffusion.hub.tiny_models()`: unet/ (9 input channels, levels of
    16 and 32 channels, 32-wide cross-attention), vae/ (8, 16, 16 channels: downsample factor
    4), text_encoder/ (a 3-layer 32-wide CLIPTextModel, quick_gelu, `text_model.*` names as
    the hub files have them), tokenizer/ (the byte-level fixture tokenizer of
    tools/sd_fixtures_text.py), scheduler/scheduler_config.json (stable-diffusion-2-inpainting's
    PNDM settings) and model_index.json. Every weight is redrawn (diffusers zero-initialises
    some) and rounded to float16 values, saved as F16 tensors (half the bytes); the pipeline
    runs in float32 on those values, loaded back from the folder.
  pipeline_tiny_io.npz: the inputs and outputs of the pipeline loaded from that folder:
    images (N, 64, 64, 3) in [0, 1]; masks (N, 64, 64) with soft edges and values exactly at
    and just below 0.5; prompts and their input_ids; prompt_embeds / negative_embeds (the
    pipeline's encode_prompt); init_noise and posterior_noise (N, 16, 16, 4) NHWC standard
    normals, injected as `latents=` and by replacing DiagonalGaussianDistribution.sample;
    then per case <case>_images (N, 64, 64, 3) from output_type="np", <case>_latents (the
    final latents, NHWC), <case>_unet_input (the 9-channel UNet input of the first call,
    NHWC, [uncond; cond] when guided) and <case>_timesteps. Cases: pndm (4 steps, 5 UNet
    calls), ddim and dpmsolver++ (swapped in with `Class.from_config(pipe.scheduler.config)`,
    3 steps each), all with guidance 5; ddim_unguided (guidance 1: one UNet batch).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil

import numpy as np
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler,
                       StableDiffusionInpaintPipeline, UNet2DConditionModel)
from diffusers.models.autoencoders import vae as vae_module
from safetensors.torch import save_file

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
UNET = dict(in_channels=9, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
            down_block_types=[CROSS_DOWN, PLAIN_DOWN], up_block_types=[PLAIN_UP, CROSS_UP],
            attention_head_dim=2, cross_attention_dim=32, norm_num_groups=4, sample_size=16)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[8, 16, 16], layers_per_block=1,
           down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
           latent_channels=4, norm_num_groups=4, sample_size=64, act_fn="silu")
TINY_VOCAB_SIZE = 514
TEXT = dict(vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=77, hidden_size=32,
            intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            hidden_act="quick_gelu", bos_token_id=TINY_VOCAB_SIZE - 2,
            eos_token_id=TINY_VOCAB_SIZE - 1, pad_token_id=TINY_VOCAB_SIZE - 1)
# stabilityai/stable-diffusion-2-inpainting's scheduler/scheduler_config.json.
SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
             "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
PROMPTS = ["a red apple", "", "two zebras under a blue sky"]
SIZE, FACTOR = 64, 4
GUIDANCE = 5.0
CASES = {"pndm": (None, 4, GUIDANCE), "ddim": (DDIMScheduler, 3, GUIDANCE),
         "dpmsolver++": (DPMSolverMultistepScheduler, 3, GUIDANCE),
         "ddim_unguided": (DDIMScheduler, 3, 1.0)}
TOWER_PREFIXES = ("embeddings.", "encoder.", "final_layer_norm.")


def redraw(model: torch.nn.Module, gen: torch.Generator, out_scale: dict[str, float]) -> None:
  """Non-zero weights everywhere, rounded to float16 values: kernels N(0, 1 / fan_in) (times
  out_scale[name] where given), biases N(0, 0.1^2), norm scales 1 + N(0, 0.2^2), embeddings
  N(0, 1)."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        value = 1.0 + 0.2 * noise
      elif name.endswith("bias"):
        value = 0.1 * noise
      elif "embedding" in name:
        value = noise
      else:
        value = noise / math.sqrt(param[0].numel()) * out_scale.get(name, 1.0)
      param.copy_(value.half().float())


def save_half(state: dict, path: pathlib.Path) -> None:
  save_file({k: v.detach().half().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in state.items()}, str(path), metadata={"format": "pt"})


def write_pipeline(folder: pathlib.Path, tokenizer_dir: pathlib.Path, seed: int) -> None:
  gen = torch.Generator().manual_seed(seed)
  shutil.rmtree(folder, ignore_errors=True)
  unet = UNet2DConditionModel(**UNET).eval()
  redraw(unet, gen, {"conv_out.weight": 0.5})
  vae = AutoencoderKL(**VAE).eval()
  # Decoded pixels mostly inside (-1, 1), so the final clip leaves most of them.
  redraw(vae, gen, {"decoder.conv_out.weight": 0.3})
  text_config = transformers.CLIPTextConfig(**TEXT)
  text_config._attn_implementation = "eager"  # pylint: disable=protected-access
  text = transformers.CLIPTextModel(text_config).eval()
  redraw(text, gen, {})
  tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tokenizer_dir))
  pipe = StableDiffusionInpaintPipeline(
      vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
      scheduler=PNDMScheduler.from_config(SCHEDULER), safety_checker=None,
      feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(folder, safe_serialization=True)
  # The hub's files: F16 copies of the float16-rounded values; `text_model.*` names.
  save_half(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.safetensors")
  save_half(vae.state_dict(), folder / "vae" / "diffusion_pytorch_model.safetensors")
  names = {f"text_model.{k}" if k.startswith(TOWER_PREFIXES) else k: v
           for k, v in text.state_dict().items()}
  save_half(names, folder / "text_encoder" / "model.safetensors")
  (folder / "scheduler" / "scheduler_config.json").write_text(
      json.dumps(SCHEDULER, indent=2, sort_keys=True) + "\n")
  shutil.rmtree(folder / "tokenizer")
  shutil.copytree(tokenizer_dir, folder / "tokenizer")


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def make_inputs(gen: torch.Generator) -> dict[str, np.ndarray]:
  count, latent = len(PROMPTS), SIZE // FACTOR
  coarse = torch.rand((count, 3, 8, 8), generator=gen)
  images = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear",
                                           align_corners=False).clamp(0, 1)
  boxes = torch.zeros((count, 1, 16, 16))
  for i, (top, left, height, width) in enumerate([(3, 4, 8, 6), (0, 0, 16, 9), (6, 7, 5, 5)]):
    boxes[i, :, top:top + height, left:left + width] = 1.0
  masks = torch.nn.functional.interpolate(boxes, size=(SIZE, SIZE), mode="bilinear",
                                          align_corners=False)[:, 0]
  masks[0, 5, 5:9] = torch.tensor([0.5, 0.4999, 0.5001, 0.5])  # binarisation at 0.5
  shape = (count, 4, latent, latent)
  return dict(images=images.permute(0, 2, 3, 1).numpy().astype(np.float32),
              masks=masks.numpy().astype(np.float32),
              init_noise=nhwc(torch.randn(shape, generator=gen)),
              posterior_noise=nhwc(torch.randn(shape, generator=gen)))


def run_cases(folder: pathlib.Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  pipe = StableDiffusionInpaintPipeline.from_pretrained(
      str(folder), torch_dtype=torch.float32, safety_checker=None,
      requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  base_config = pipe.scheduler.config
  init = torch.from_numpy(inputs["init_noise"]).permute(0, 3, 1, 2).contiguous()
  posterior = torch.from_numpy(inputs["posterior_noise"]).permute(0, 3, 1, 2).contiguous()

  def injected_sample(self, generator=None):
    assert self.mean.shape == posterior.shape, (self.mean.shape, posterior.shape)
    return self.mean + self.std * posterior
  vae_module.DiagonalGaussianDistribution.sample = injected_sample

  tokens = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids
  with torch.no_grad():
    embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
  out = dict(prompts=np.array(PROMPTS), input_ids=tokens.numpy().astype(np.int64),
             prompt_embeds=embeds.numpy(), negative_embeds=negative.numpy())
  first_input = []
  pipe.unet.register_forward_hook(
      lambda module, args, kwargs_out: first_input.append(args[0].clone()) if not first_input
      else None)
  for case, (scheduler_class, steps, guidance) in CASES.items():
    pipe.scheduler = (PNDMScheduler if scheduler_class is None else scheduler_class).from_config(
        base_config)
    first_input.clear()
    final = {}
    def keep_latents(pipeline, step, timestep, kwargs):
      final["latents"] = kwargs["latents"]
      return kwargs
    with torch.no_grad():
      images = pipe(prompt=PROMPTS, image=inputs["images"], mask_image=inputs["masks"],
                    height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance,
                    latents=init.clone(), output_type="np", callback_on_step_end=keep_latents,
                    ).images
    out[f"{case}_images"] = np.asarray(images, np.float32)
    out[f"{case}_latents"] = nhwc(final["latents"])
    out[f"{case}_unet_input"] = nhwc(first_input[0])
    out[f"{case}_timesteps"] = pipe.scheduler.timesteps.numpy().astype(np.int64)
    inside = np.mean((images > 0.01) & (images < 0.99))
    print(f"{case}: {type(pipe.scheduler).__name__} {steps} steps, guidance {guidance}, "
          f"timesteps {out[f'{case}_timesteps'].tolist()}, |latents| max "
          f"{final['latents'].abs().max():.2f}, pixels inside (0.01, 0.99): {inside:.0%}")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default_out = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/stable_diffusion"
  parser.add_argument("--out", type=pathlib.Path, default=default_out)
  args = parser.parse_args()
  torch.set_num_threads(1)
  torch.manual_seed(0)
  folder = args.out / "pipeline_tiny"
  write_pipeline(folder, args.out / "text_quick_gelu" / "tokenizer", seed=7)
  inputs = make_inputs(torch.Generator().manual_seed(8))
  outputs = run_cases(folder, inputs)
  np.savez_compressed(args.out / "pipeline_tiny_io.npz", **inputs, **outputs)
  files = [p for p in folder.rglob("*") if p.is_file()] + [args.out / "pipeline_tiny_io.npz"]
  print(f"wrote {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.2f} MB")


if __name__ == "__main__":
  main()
