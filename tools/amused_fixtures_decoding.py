"""Writes the aMUSEd decoding fixture from diffusers' own `AmusedScheduler`.

Run by hand (needs `pip install torch==2.13.0 diffusers==0.42.1`):
  python tools/amused_fixtures_decoding.py [--out tests/fixtures/amused]

torch's sampling stream cannot be reproduced in JAX, so while the runs last
`torch.multinomial` is replaced by inverse-CDF sampling (the sampler of
lr_jax: the same categorical distribution) on one uniform per token drawn from
the run's generator, and the
uniforms that the scheduler's own `gumbel_noise` draws are recorded (its formula
and everything else in `step` run unchanged). Both are saved per step, so the JAX
decoder can be fed the same noise.

The loop is the one of diffusers' AmusedInpaintPipeline (linear schedule,
starting_mask_ratio = masked share, guidance on a doubled batch) around a fake
transformer whose logits are table lookups, `A[position] + C[token]` (one pair of
tables for the unconditional rows, one for the conditional rows), so that each
step's logits depend on the tokens of the previous one.

Writes decoding.npz:
  temperatures_default (12,), temperatures_scalar3 (8,): scheduler.temperatures;
    temperatures_extra_specs (4, 3): (start, end, steps); temperatures_extra (4, 50):
    their values, NaN-padded.
  schedule_{linear,cosine}_{16,32}: (side**2, 11) int16, the `mask_len` of every step
    but the last of a 12-step run on a side x side grid (amused-256: 16, amused-512:
    32) that starts with m = 1..side**2 tokens masked.
  <run>_*: per scenario its settings, tables, ids, mask, noise and outputs.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
from diffusers import AmusedScheduler
from diffusers.schedulers import scheduling_amused

EXTRA_TEMPERATURES = ((2.5, 0.3, 16), (4.0, 1.0, 12), (0.7, 0.2, 13), (5.0, 0.01, 50))
SCENARIOS = {
    # name: (grid, vocab, batch, masked per image, steps, schedule, temperature,
    #        guidance, strength)
    "linear_guided": (4, 8, 1, 9, 12, "linear", (2, 0), 10.0, 1.0),
    "cosine_guided_batch2": (4, 8, 2, 7, 12, "cosine", (2, 0), 10.0, 1.0),
    "linear_unguided_strength": (4, 8, 1, 11, 8, "linear", 3, 1.0, 0.5),
    "cosine_full_mask": (4, 8, 1, 16, 12, "cosine", (2, 0), 4.0, 1.0),
}


class Recorder:
  """Patches the scheduler's random draws, records them and its cut-off counts."""

  def __init__(self):
    self.sample_uniforms, self.choice_uniforms, self.mask_lens = [], [], []
    self._multinomial = torch.multinomial
    self._gumbel = scheduling_amused.gumbel_noise
    self._topk = scheduling_amused.mask_by_random_topk

  def multinomial(self, probs, num_samples, generator=None):
    assert num_samples == 1
    uniform = torch.rand(probs.shape[:-1], generator=generator)
    self.sample_uniforms.append(uniform.numpy().copy())
    cdf = torch.cumsum(probs, dim=-1)
    target = uniform * cdf[:, -1]
    return torch.searchsorted(cdf, target[:, None], right=True)

  def gumbel_noise(self, t, generator=None):
    state = generator.get_state()
    noise = self._gumbel(t, generator=generator)
    replay = torch.Generator().set_state(state)
    uniform = torch.zeros_like(t).uniform_(0, 1, generator=replay)
    assert torch.equal(noise, -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20)))
    self.choice_uniforms.append(uniform.numpy().copy())
    return noise

  def mask_by_random_topk(self, mask_len, probs, temperature=1.0, generator=None):
    self.mask_lens.append(mask_len.reshape(-1).numpy().astype(np.int64))
    return self._topk(mask_len, probs, temperature, generator)

  def __enter__(self):
    torch.multinomial = self.multinomial
    scheduling_amused.gumbel_noise = self.gumbel_noise
    scheduling_amused.mask_by_random_topk = self.mask_by_random_topk
    return self

  def __exit__(self, *exc):
    torch.multinomial = self._multinomial
    scheduling_amused.gumbel_noise = self._gumbel
    scheduling_amused.mask_by_random_topk = self._topk


def make_scheduler(vocab: int, steps: int, schedule: str, temperature) -> AmusedScheduler:
  scheduler = AmusedScheduler(mask_token_id=vocab)
  scheduler.register_to_config(masking_schedule=schedule)
  scheduler.set_timesteps(steps, temperature)
  return scheduler


def run_loop(scheduler, latents, fake_model, guidance, strength, generator):
  """The inpaint pipeline's loop; returns the latents after every step."""
  steps = len(scheduler.timesteps)
  start = steps - int(steps * strength)
  starting_mask_ratio = (latents == scheduler.config.mask_token_id).sum() / latents.numel()
  history = []
  for i in range(start, steps):
    model_input = torch.cat([latents] * 2) if guidance > 1.0 else latents
    output = fake_model(model_input)
    if guidance > 1.0:
      uncond, cond = output.chunk(2)
      output = uncond + guidance * (cond - uncond)
    latents = scheduler.step(model_output=output, timestep=scheduler.timesteps[i],
                             sample=latents, generator=generator,
                             starting_mask_ratio=starting_mask_ratio).prev_sample
    history.append(latents.numpy().copy())
  return history


def table_model(position_tables, token_tables, guided):
  """(G*B, h, w) ids -> (G*B, V, h, w) logits A[g, position] + C[g, token]."""

  def fake_model(ids):
    rows, height, width = ids.shape
    groups = 2 if guided else 1
    group = torch.arange(rows) // (rows // groups) + (0 if guided else 1)
    flat = ids.reshape(rows, -1)
    logits = position_tables[group] + token_tables[group[:, None], flat]
    return logits.reshape(rows, height, width, -1).permute(0, 3, 1, 2)

  return fake_model


def scenario(name, spec, seed):
  grid, vocab, batch, num_masked, steps, schedule, temperature, guidance, strength = spec
  gen = torch.Generator().manual_seed(seed)
  seq_len = grid * grid
  position_tables = 2.0 * torch.randn(2, seq_len, vocab, generator=gen)
  token_tables = 1.5 * torch.randn(2, vocab + 1, vocab, generator=gen)
  ids = torch.randint(0, vocab, (batch, grid, grid), generator=gen)
  mask = torch.zeros(batch, seq_len, dtype=torch.bool)
  for b in range(batch):
    mask[b, torch.randperm(seq_len, generator=gen)[:num_masked]] = True
  mask = mask.reshape(batch, grid, grid)
  latents = torch.where(mask, vocab, ids)
  scheduler = make_scheduler(vocab, steps, schedule, temperature)
  fake_model = table_model(position_tables, token_tables, guidance > 1.0)
  with Recorder() as rec:
    history = run_loop(scheduler, latents, fake_model, guidance, strength,
                       torch.Generator().manual_seed(seed + 1))
  run_steps = len(history)
  choice = np.zeros((run_steps, batch, seq_len), np.float32)   # the last step draws none
  choice[:len(rec.choice_uniforms)] = np.stack(rec.choice_uniforms)
  settings = dict(grid=grid, vocab=vocab, steps=steps, schedule=schedule,
                  temperature=temperature, guidance=guidance, strength=strength)
  return {
      f"{name}_settings": np.array(json.dumps(settings)),
      f"{name}_position_tables": position_tables.numpy(),
      f"{name}_token_tables": token_tables.numpy(),
      f"{name}_ids": ids.numpy().astype(np.int32),
      f"{name}_mask": mask.numpy(),
      f"{name}_sample_uniforms": np.stack(rec.sample_uniforms).reshape(
          run_steps, batch, seq_len),
      f"{name}_choice_uniforms": choice,
      f"{name}_mask_lens": np.stack(rec.mask_lens).astype(np.int32),
      f"{name}_history": np.stack(history).astype(np.int32),
  }


def schedule_table(schedule: str, grid: int) -> np.ndarray:
  """mask_len of steps 0..10 of a 12-step run on a grid x grid map, for every m masked."""
  vocab, steps = 4, 12
  logits = torch.randn(1, vocab, grid, grid, generator=torch.Generator().manual_seed(3))
  table = np.zeros((grid * grid, steps - 1), np.int16)
  for m in range(1, grid * grid + 1):
    latents = torch.zeros(1, grid, grid, dtype=torch.long)
    latents.view(-1)[:m] = vocab
    scheduler = make_scheduler(vocab, steps, schedule, (2, 0))
    with Recorder() as rec:
      run_loop(scheduler, latents, lambda ids: logits, 1.0, 1.0,
               torch.Generator().manual_seed(m))
    table[m - 1] = np.concatenate(rec.mask_lens)
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/fixtures/amused")
  out = pathlib.Path(parser.parse_args().out)
  out.mkdir(parents=True, exist_ok=True)
  arrays = {
      "temperatures_default": make_scheduler(8, 12, "linear", (2, 0)).temperatures.numpy(),
      "temperatures_scalar3": make_scheduler(8, 8, "linear", 3).temperatures.numpy(),
      "temperatures_extra_specs": np.array(EXTRA_TEMPERATURES, np.float32),
      "temperatures_extra": np.stack([np.pad(
          make_scheduler(8, int(n), "linear", (a, b)).temperatures.numpy(), (0, 50 - int(n)),
          constant_values=np.nan) for a, b, n in EXTRA_TEMPERATURES]),
      **{f"schedule_{schedule}_{grid}": schedule_table(schedule, grid)
         for schedule in ("linear", "cosine") for grid in (16, 32)},
  }
  for seed, (name, spec) in enumerate(SCENARIOS.items()):
    arrays.update(scenario(name, spec, 10 * seed))
  np.savez_compressed(out / "decoding.npz", **arrays)
  print(f"wrote {out / 'decoding.npz'} ({(out / 'decoding.npz').stat().st_size} bytes)")


if __name__ == "__main__":
  main()
