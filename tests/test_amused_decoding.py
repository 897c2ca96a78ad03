"""aMUSEd decoding: schedule, temperatures and token selection against diffusers'
AmusedScheduler (fixture from tools/amused_fixtures_decoding.py, same injected noise)
and against a numpy reference written here from the scheduler's formulas."""
import dataclasses
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_common.errors import UserError
from lr_jax.generators.amused import decoding
from lr_jax.generators.amused.decoding import DecodeSettings
from lr_common.errors import SettingsError

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "amused" / "decoding.npz"
SCENARIOS = ("linear_guided", "cosine_guided_batch2", "linear_unguided_strength",
             "cosine_full_mask")


@pytest.fixture(scope="module")
def fixture():
  with np.load(FIXTURE) as data:
    return {k: data[k] for k in data.files}


# ---- numpy reference, from the formulas of scheduling_amused.py ----

def np_gumbel(uniform):
  return -np.log(np.maximum(-np.log(np.maximum(uniform, 1e-20)), 1e-20))


def np_keep_count(step, num_steps, start_fraction, num_masked, seq_len, schedule):
  """Tokens still masked after `step`, float32 as the scheduler computes it."""
  ratio = np.float32(step + 1) / np.float32(num_steps)
  if schedule == "cosine":
    share = np.cos(ratio * np.float32(math.pi) / np.float32(2))
  else:
    share = np.float32(1) - ratio
  count = np.floor(np.float32(seq_len) * (np.float32(start_fraction) * share))
  return int(max(1, min(num_masked - 1, count)))


def np_select(logits, tokens, masked, step, start_fraction, sample_u, choice_u, num_steps,
              schedule, temperature):
  """Rank form: sample by inverse CDF, then re-mask the `count` least confident samples."""
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  probs = shifted / shifted.sum(-1, keepdims=True)
  cdf = np.cumsum(probs, -1)
  draws = np.array([np.searchsorted(c, u * c[-1], side="right")
                    for c, u in zip(cdf.reshape(-1, cdf.shape[-1]), sample_u.ravel())])
  sampled = np.where(masked, draws.reshape(masked.shape), tokens)
  chosen = np.take_along_axis(probs, sampled[..., None], -1)[..., 0]
  confidence = np.log(np.maximum(chosen, 1e-20)) + temperature * np_gumbel(choice_u)
  remask = np.zeros_like(masked)
  if step < num_steps - 1:
    for row in range(masked.shape[0]):
      where = np.flatnonzero(masked[row])
      count = np_keep_count(step, num_steps, start_fraction[row], len(where),
                            masked.shape[1], schedule)
      lowest = where[np.argsort(confidence[row, where])[:count]]
      remask[row, lowest] = True
  return sampled, remask


def settings_of(fixture, name) -> DecodeSettings:
  spec = json.loads(str(fixture[f"{name}_settings"]))
  temperature = spec["temperature"]
  return DecodeSettings(num_steps=spec["steps"], schedule=spec["schedule"],
                        temperature=tuple(temperature) if isinstance(temperature, list)
                        else temperature,
                        guidance_scale=spec["guidance"], strength=spec["strength"])


def table_logits_fn(fixture, name, guided):
  """The fixture's fake transformer: A[group, position] + C[group, token], channel-last."""
  position = jnp.asarray(fixture[f"{name}_position_tables"])
  token = jnp.asarray(fixture[f"{name}_token_tables"])

  def logits_fn(ids):
    rows = ids.shape[0]
    flat = ids.reshape(rows, -1)
    group = jnp.arange(rows) // (rows // 2) if guided else jnp.ones(rows, jnp.int32)
    logits = position[group] + token[group[:, None], flat]
    return logits.reshape(ids.shape + (-1,))

  return logits_fn


# ---- settings ----

def test_settings_defaults_are_the_inpaint_pipelines():
  s = DecodeSettings()
  assert (s.num_steps, s.guidance_scale, s.temperature, s.schedule, s.strength) == (
      12, 10.0, (2.0, 0.0), "linear", 1.0)
  assert s.guided and s.start_step == 0
  assert DecodeSettings(strength=0.5).start_step == 6
  assert DecodeSettings(num_steps=12, strength=0.3).start_step == 12 - 3
  assert not DecodeSettings(guidance_scale=1.0).guided
  assert DecodeSettings(temperature=3).temperature == (3, 0.01)
  assert DecodeSettings(temperature=[1, 0.5], crop_coords=[4, 8]) == DecodeSettings(
      temperature=(1, 0.5), crop_coords=(4, 8))
  hash(DecodeSettings(size=[512, 256]))


@pytest.mark.parametrize("kwargs, word", [
    (dict(num_steps=0), "num_steps"), (dict(num_steps=2.0), "num_steps"),
    (dict(schedule="cubic"), "schedule"), (dict(strength=0.0), "strength"),
    (dict(num_steps=4, strength=0.2), "strength"), (dict(strength=1.5), "strength"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(temperature=(1.0,)), "temperature"), (dict(temperature=(-1, 0)), "temperature"),
    (dict(crop_coords=(0, -1)), "crop_coords"), (dict(size=(0, 256)), "size"),
    (dict(aesthetic_score=float("inf")), "aesthetic_score"),
    (dict(negative_prompt=None), "negative_prompt"), (dict(unroll=0), "unroll"),
])
def test_settings_errors(kwargs, word):
  with pytest.raises(SettingsError, match=rf"^config decode\.{word} must be") as info:
    DecodeSettings(**kwargs)
  assert isinstance(info.value, UserError)


def test_micro_conditioning_order():
  np.testing.assert_array_equal(
      decoding.micro_conditioning(DecodeSettings(), height=256, width=384), [384, 256, 0, 0, 6])
  s = DecodeSettings(size=(512, 640), crop_coords=(3, 5), aesthetic_score=5.5)
  np.testing.assert_array_equal(decoding.micro_conditioning(s, 256, 256), [512, 640, 3, 5, 5.5])


# ---- schedule arithmetic ----

def test_temperatures_match_diffusers(fixture):
  np.testing.assert_array_equal(decoding.temperatures(DecodeSettings()),
                                fixture["temperatures_default"])
  np.testing.assert_array_equal(decoding.temperatures(DecodeSettings(num_steps=8, temperature=3)),
                                fixture["temperatures_scalar3"])
  for (start, end, steps), want in zip(fixture["temperatures_extra_specs"],
                                       fixture["temperatures_extra"]):
    ours = decoding.temperatures(DecodeSettings(num_steps=int(steps),
                                                temperature=(float(start), float(end))))
    np.testing.assert_array_equal(ours, want[:int(steps)])
  np.testing.assert_array_equal(decoding.temperatures(DecodeSettings(
      num_steps=1, temperature=(1.5, 0.))), [1.5])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("side", [16, 32])
def test_mask_counts_match_diffusers_and_reference(fixture, schedule, side):
  table = fixture[f"schedule_{schedule}_{side}"]    # (L, 11): m = 1..L masked at the start
  settings = DecodeSettings(schedule=schedule)
  seq_len = side * side
  start = np.arange(1, seq_len + 1)
  count_fn = jax.jit(functools.partial(decoding.num_still_masked, seq_len=seq_len,
                                       settings=settings))
  masked = jnp.asarray(start)
  fraction = decoding.masked_fraction(start[:, None] > np.arange(seq_len)[None])
  ours = []
  for step in range(settings.num_steps - 1):
    masked = count_fn(step, fraction, masked)
    ours.append(np.asarray(masked))
  np.testing.assert_array_equal(np.stack(ours, 1), table)
  for m in (1, 2, 13, 100, seq_len - 1, seq_len):
    left, reference = m, []
    for step in range(settings.num_steps - 1):
      left = np_keep_count(step, 12, np.float32(m) / np.float32(seq_len), left, seq_len, schedule)
      reference.append(left)
    np.testing.assert_array_equal(reference, table[m - 1])


# ---- token selection with injected noise ----

@pytest.mark.parametrize("schedule, step", [("linear", 0), ("cosine", 4), ("linear", 11)])
def test_select_tokens_matches_numpy_reference(schedule, step):
  rng = np.random.default_rng(step)
  batch, seq_len, vocab = 4, 20, 11
  logits = (3 * rng.normal(size=(batch, seq_len, vocab))).astype(np.float32)
  tokens = rng.integers(0, vocab, (batch, seq_len)).astype(np.int32)
  masked = rng.random((batch, seq_len)) < 0.6
  masked[1] = False
  masked[1, 7] = True                                   # one masked token
  masked[2] = False                                     # none masked
  start_fraction = np.array([0.9, 0.5, 0.3, 1.0], np.float32)
  sample_u = rng.random((batch, seq_len)).astype(np.float32)
  choice_u = rng.random((batch, seq_len)).astype(np.float32)
  settings = DecodeSettings(schedule=schedule, temperature=(4.0, 1.0))
  sampled, remask = jax.jit(decoding.select_tokens, static_argnames="settings")(
      logits, tokens, masked, step, start_fraction, sample_u, choice_u, settings=settings)
  temperature = np.linspace(4.0, 1.0, 12)[step]
  want_sampled, want_remask = np_select(logits, tokens, masked, step, start_fraction, sample_u,
                                        choice_u, 12, schedule, temperature)
  np.testing.assert_array_equal(sampled, want_sampled)
  np.testing.assert_array_equal(remask, want_remask)
  np.testing.assert_array_equal(np.asarray(sampled)[~masked], tokens[~masked])
  assert not np.any(np.asarray(remask) & ~masked)
  if step < 11:
    assert remask[1, 7] and remask[0].sum() >= 1
  else:
    assert not np.any(remask)


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_step_matches_diffusers(fixture, name):
  """Fed diffusers' tokens before each step, one step gives diffusers' tokens after it."""
  settings = settings_of(fixture, name)
  vocab = fixture[f"{name}_token_tables"].shape[-1]
  logits_fn = table_logits_fn(fixture, name, settings.guided)
  mask = fixture[f"{name}_mask"]
  history = fixture[f"{name}_history"]
  batch, seq_len = mask.shape[0], mask[0].size
  fraction = jnp.asarray(mask.reshape(batch, -1).sum(-1) / seq_len, jnp.float32)

  @jax.jit
  def one_step(before, step, sample_u, choice_u):
    if settings.guided:
      logits = decoding.guided_logits(logits_fn(jnp.concatenate([before, before])),
                                      settings.guidance_scale)
    else:
      logits = logits_fn(before)
    flat = before.reshape(batch, -1)
    sampled, remask = decoding.select_tokens(
        logits.reshape(batch, seq_len, -1), flat, flat == vocab, step, fraction, sample_u,
        choice_u, settings)
    return sampled, remask

  before = np.where(mask, vocab, fixture[f"{name}_ids"])
  for run_step, after in enumerate(history):
    step = settings.start_step + run_step
    sampled, remask = one_step(before, step, fixture[f"{name}_sample_uniforms"][run_step],
                               fixture[f"{name}_choice_uniforms"][run_step])
    ours = np.where(remask, vocab, sampled).reshape(after.shape)
    np.testing.assert_array_equal(ours, after, err_msg=f"{name} step {step}")
    if run_step < len(history) - 1:
      np.testing.assert_array_equal(np.sum(remask, -1),
                                    fixture[f"{name}_mask_lens"][run_step])
    before = after


@pytest.mark.parametrize("name, unroll", [(name, 1) for name in SCENARIOS]
                         + [("linear_guided", True)])
def test_inpaint_with_noise_matches_diffusers(fixture, name, unroll):
  settings = dataclasses.replace(settings_of(fixture, name), unroll=unroll)
  vocab = fixture[f"{name}_token_tables"].shape[-1]
  sample_u = jnp.asarray(fixture[f"{name}_sample_uniforms"])
  choice_u = jnp.asarray(fixture[f"{name}_choice_uniforms"])
  noise_fn = lambda step, shape: (sample_u[step - settings.start_step],
                                  choice_u[step - settings.start_step])
  run = jax.jit(lambda ids, mask: decoding.inpaint_with_noise(
      table_logits_fn(fixture, name, settings.guided), ids, mask, noise_fn, settings,
      mask_token_id=vocab))
  out = run(fixture[f"{name}_ids"], fixture[f"{name}_mask"])
  np.testing.assert_array_equal(out, fixture[f"{name}_history"][-1])


# ---- the keyed decoder ----

def random_tables(seed, grid=6, vocab=16):
  rng = np.random.default_rng(seed)
  position = jnp.asarray(2 * rng.normal(size=(2, grid * grid, vocab)), jnp.float32)
  token = jnp.asarray(1.5 * rng.normal(size=(2, vocab + 1, vocab)), jnp.float32)

  def logits_fn(ids):       # (2B, h, w): unconditional rows first
    rows = ids.shape[0]
    group = jnp.arange(rows) // (rows // 2)
    return (position[group] + token[group[:, None], ids.reshape(rows, -1)]).reshape(
        ids.shape + (vocab,))

  return logits_fn


def masks_and_ids(batch, grid=6, vocab=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (batch, grid, grid)).astype(np.int32)
  mask = rng.random((batch, grid, grid)) < 0.5
  mask[0] = True
  if batch > 2:
    mask[2] = False
  return ids, mask


def test_known_tokens_never_change_and_all_masked_are_filled():
  vocab = 16
  ids, mask = masks_and_ids(4)
  # Image 2 has nothing masked; a large temperature (diffusers' known-token confidence
  # log(float32 max) would no longer be safe) makes the re-masking noisy.
  settings = DecodeSettings(num_steps=6, temperature=(30.0, 10.0))
  run = jax.jit(lambda ids, mask, key: decoding.inpaint(random_tables(1), ids, mask, key,
                                                        settings, mask_token_id=vocab))
  for seed in range(3):
    out = np.asarray(run(ids, mask, jax.random.key(seed)))
    assert out.dtype == np.int32 and out.shape == ids.shape
    np.testing.assert_array_equal(out[~mask], ids[~mask])
    assert np.all((out >= 0) & (out < vocab))
    assert np.any(out[mask] != ids[mask])          # the masked tokens were regenerated


def test_an_image_decodes_alone_as_in_the_batch():
  vocab = 16
  ids, mask = masks_and_ids(3, seed=5)
  keys = jax.random.split(jax.random.key(7), 3)
  run = jax.jit(lambda ids, mask, keys: decoding.inpaint(
      random_tables(2), ids, mask, keys, DecodeSettings(num_steps=5, guidance_scale=2.0),
      mask_token_id=vocab))
  together = np.asarray(run(ids, mask, keys))
  for row in range(3):
    alone = run(ids[row:row + 1], mask[row:row + 1], keys[row:row + 1])
    np.testing.assert_array_equal(alone[0], together[row])
  raw = jax.random.key_data(keys)                   # raw uint32 keys are the same keys
  np.testing.assert_array_equal(jax.random.key_data(decoding.image_keys(raw, 3)), raw)
  one = decoding.image_keys(jax.random.key(7), 3)   # one key: fold_in per image
  np.testing.assert_array_equal(jax.random.key_data(one[2]),
                                jax.random.key_data(jax.random.fold_in(jax.random.key(7), 2)))
  with pytest.raises(ValueError, match="Need one key or 3 keys"):
    decoding.image_keys(keys[:2], 3)
  other = np.asarray(run(ids, mask, jax.random.split(jax.random.key(8), 3)))
  assert np.any(other != together)


def test_guidance_doubles_the_batch_unconditional_first():
  vocab, batch = 6, 2
  traced_rows = []
  cond = jnp.zeros(vocab).at[3].set(30.)
  uncond = jnp.zeros(vocab).at[2].set(30.)

  def logits_fn(ids):
    rows = ids.shape[0]
    traced_rows.append(rows)
    half = rows // 2 if rows == 2 * batch else 0
    rows_logits = jnp.where((jnp.arange(rows) < half)[:, None], uncond, cond)
    return jnp.broadcast_to(rows_logits[:, None, None], ids.shape + (vocab,))

  ids = np.zeros((batch, 3, 3), np.int32)
  mask = np.ones((batch, 3, 3), bool)
  for scale in (10.0, 1.0):
    settings = DecodeSettings(num_steps=3, guidance_scale=scale)
    out = jax.jit(lambda ids, mask: decoding.inpaint(
        logits_fn, ids, mask, jax.random.key(0), settings, mask_token_id=vocab))(ids, mask)
    np.testing.assert_array_equal(out, 3)        # swapped halves would pick token 2
  assert traced_rows == [2 * batch, batch]        # the loop body is traced once


def test_guidance_batch_puts_unconditional_rows_first():
  cond = dict(hidden=np.ones((2, 3, 4)), pooled=np.ones((2, 4)))
  uncond = dict(hidden=np.zeros((2, 3, 4)), pooled=np.zeros((2, 4)))
  both = decoding.guidance_batch(cond, uncond, DecodeSettings(guidance_scale=10.))
  np.testing.assert_array_equal(both["hidden"][:, 0, 0], [0, 0, 1, 1])
  np.testing.assert_array_equal(both["pooled"][:, 0], [0, 0, 1, 1])
  assert decoding.guidance_batch(cond, uncond, DecodeSettings(guidance_scale=1.)) is cond


def test_logits_fn_sees_mask_token_and_bfloat16_logits_work():
  vocab = 16
  ids, mask = masks_and_ids(2)
  inputs_seen = []

  def logits_fn(inputs):
    jax.debug.callback(lambda x: inputs_seen.append(np.asarray(x)), inputs)
    return random_tables(3)(inputs).astype(jnp.bfloat16)

  out = jax.jit(lambda ids, mask: decoding.inpaint(
      logits_fn, ids, mask, jax.random.key(0), DecodeSettings(num_steps=2),
      mask_token_id=vocab))(ids, mask)
  jax.effects_barrier()
  assert len(inputs_seen) == 2
  first = inputs_seen[0]
  np.testing.assert_array_equal(first[:2], first[2:])
  np.testing.assert_array_equal(first[2:], np.where(mask, vocab, ids))
  assert np.sum(inputs_seen[1] == vocab) < np.sum(first == vocab)
  np.testing.assert_array_equal(np.asarray(out)[~mask], ids[~mask])
  assert np.all(np.asarray(out) < vocab)


def test_masked_fraction_is_an_exact_division_under_jit():
  for seq_len in (36, 100, 1024):
    masked = np.arange(seq_len + 1)[:, None] > np.arange(seq_len)[None]   # m = 0..L masked
    want = np.arange(seq_len + 1, dtype=np.float32) / np.float32(seq_len)
    np.testing.assert_array_equal(jax.jit(decoding.masked_fraction)(masked), want)


def test_sample_categorical_draws_with_the_given_probabilities():
  probs = np.array([0.1, 0.0, 0.25, 0.6, 0.05], np.float32)
  uniform = jax.random.uniform(jax.random.key(0), (200_000,))
  draws = np.asarray(jax.jit(decoding.sample_categorical)(
      jnp.broadcast_to(probs, (200_000, 5)), uniform))
  freq = np.bincount(draws, minlength=5) / draws.size
  assert freq[1] == 0
  np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / draws.size))



@pytest.mark.parametrize("vocab", [1, 11, 8192])
def test_sample_categorical_is_the_inverse_cdf(vocab):
  """Two-level sampling picks the entry a flat float64 inverse CDF picks (up to rounding
  at bin edges), never a zero-probability one, also when u * total rounds up."""
  rng = np.random.default_rng(vocab)
  logits = 3 * rng.normal(size=(1024, vocab))
  logits[:, vocab // 2:] = -np.inf if vocab > 1 else 0.  # zero-probability tail
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1))
  uniform = rng.random(1024).astype(np.float32)
  uniform[:8] = 1 - np.finfo(np.float32).epsneg
  ours = np.asarray(jax.jit(decoding.sample_categorical)(probs, uniform))
  cdf = np.cumsum(probs.astype(np.float64), -1)
  want = np.array([min(np.searchsorted(c, u * c[-1], side="right"), vocab - 1)
                   for c, u in zip(cdf, uniform)])
  assert np.all(probs[np.arange(1024), ours] > 0)
  assert np.mean(ours != want) <= 0.002
