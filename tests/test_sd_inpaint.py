"""SD inpainting against diffusers' StableDiffusionInpaintPipeline (fixtures of
tools/sd_fixtures_pipeline.py: a tiny random pipeline in the hub layout, run with injected
noises), and the batching, chunking, guidance and dtype behaviour of `inpaint.inpaint`."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_common.errors import SettingsError
from lr_jax.encoders.hf_files import WeightsError
from lr_jax.generators.stable_diffusion import hub, inpaint, schedulers

KINDS = {"pndm": 4, "ddim": 3, "dpmsolver++": 3}  # steps of each fixture case
GUIDANCE = 5.0


@pytest.fixture(scope="module")
def sd_dir(fixtures_dir):
  return fixtures_dir / "stable_diffusion"


@pytest.fixture(scope="module")
def io(sd_dir):
  return dict(np.load(sd_dir / "pipeline_tiny_io.npz"))


@pytest.fixture(scope="module")
def pipeline(sd_dir):
  """({kind: (models, scheduler config)}, params, tokenizer) through the loader; the other
  kinds' settings as `scheduler_kind` gives them."""
  models, scheduler, params, tokenizer = hub.load_stable_diffusion(sd_dir / "pipeline_tiny")
  data = json.loads((sd_dir / "pipeline_tiny" / "scheduler" / "scheduler_config.json").read_text())
  loaded = {kind: (models, scheduler if kind == "pndm" else
                   hub.pipeline_scheduler_config(data, kind)) for kind in KINDS}
  return loaded, params, tokenizer


def _settings(scheduler, kind, **kwargs):
  return inpaint.InpaintSettings(scheduler, num_steps=KINDS[kind],
                                 **{"guidance_scale": GUIDANCE, **kwargs})


def _run(pipeline, io, kind="ddim", rows=slice(None), **kwargs):
  (loaded, params, _) = pipeline
  models, scheduler = loaded[kind]
  settings = _settings(scheduler, kind, **kwargs)
  negative = io.get("negative_override", io["negative_embeds"])
  out = inpaint.inpaint(params, models, settings, io["images"][rows], io["masks"][rows],
                        io["prompt_embeds"][rows], negative[rows], None,
                        init_noise=io["init_noise"][rows],
                        posterior_noise=io["posterior_noise"][rows])
  return np.asarray(out)


@pytest.fixture(scope="module")
def ddim_out(pipeline, io):
  return _run(pipeline, io, "ddim")


def _max_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)))


def test_loader_reads_the_pipeline(pipeline, io):
  loaded, params, tokenizer = pipeline
  models, scheduler = loaded["pndm"]
  assert models == hub.tiny_models()
  assert (scheduler.kind, scheduler.steps_offset, scheduler.timestep_spacing) == (
      "pndm", 1, "leading")
  assert not loaded["ddim"][1].clip_sample  # the json's value, as the swapped class reads it
  # The json has no timestep_spacing: DPM-Solver++ takes its own default, as from_config does.
  assert loaded["dpmsolver++"][1].timestep_spacing == "linspace"
  for kind, (_, config) in loaded.items():
    timesteps = schedulers.make_schedule(config, KINDS[kind]).timesteps
    np.testing.assert_array_equal(timesteps, io[f"{kind}_timesteps"])
  assert set(params) == {"unet", "vae", "text_encoder"}
  ids = tokenizer(list(io["prompts"]), padding="max_length", max_length=77, truncation=True,
                  return_tensors="np")["input_ids"]
  np.testing.assert_array_equal(ids, io["input_ids"])


def test_prompt_states_match_the_pipeline(pipeline, io):
  (loaded, params, tokenizer) = pipeline
  models = loaded["pndm"][0]
  states = inpaint.encode_prompts(params, models, io["input_ids"])
  assert _max_error(states, io["prompt_embeds"]) < 1e-5
  empty = tokenizer([""] * 3, padding="max_length", max_length=77, truncation=True,
                    return_tensors="np")["input_ids"]
  assert _max_error(inpaint.encode_prompts(params["text_encoder"], models, empty),
                    io["negative_embeds"]) < 1e-5


def test_mask_conditioning_matches_the_unet_input(pipeline, io):
  (loaded, params, _) = pipeline
  models = loaded["pndm"][0]
  condition = jax.jit(inpaint.mask_conditioning, static_argnums=1)
  mask, latents = condition(params["vae"], models.vae, io["images"], io["masks"],
                            io["posterior_noise"])
  unet_input = io["ddim_unet_input"][3:]  # the conditional half
  np.testing.assert_array_equal(mask, unet_input[..., 4:5])
  assert _max_error(latents, unet_input[..., 5:]) < 1e-5
  np.testing.assert_array_equal(unet_input[..., :4], io["init_noise"])


@pytest.mark.parametrize("kind", ["pndm", "dpmsolver++"])
def test_matches_diffusers(pipeline, io, kind):
  out = _run(pipeline, io, kind)
  error = _max_error(out, io[f"{kind}_images"])
  print(f"{kind}: max abs error {error:.2e}")
  assert error < 1e-4


def test_ddim_matches_diffusers(ddim_out, io):
  error = _max_error(ddim_out, io["ddim_images"])
  print(f"ddim: max abs error {error:.2e}")
  assert error < 1e-4


def test_an_edit_alone_equals_it_in_a_batch(pipeline, io):
  """With noises drawn from per-edit keys: fold_in(key, 0) and fold_in(key, 1)."""
  (loaded, params, _) = pipeline
  models, scheduler = loaded["ddim"]
  settings = _settings(scheduler, "ddim")
  keys = jax.random.split(jax.random.key(3), 3)
  args = (io["images"], io["masks"], io["prompt_embeds"], io["negative_embeds"])
  batch = inpaint.inpaint(params, models, settings, *args, keys)
  alone = inpaint.inpaint(params, models, settings, *(x[1:2] for x in args), keys[1:2])
  assert _max_error(alone, batch[1:2]) < 1e-5
  init, posterior = inpaint.edit_noise(keys, (16, 16, 4))
  drawn = jax.random.normal(jax.random.fold_in(keys[2], inpaint.POSTERIOR_NOISE_STREAM),
                            (16, 16, 4))
  np.testing.assert_array_equal(posterior[2], drawn)
  assert not np.allclose(init, posterior)
  # The same program as injected noises (the keys only draw them).
  injected = inpaint.inpaint(params, models, settings, *args, None, init_noise=init,
                             posterior_noise=posterior)
  np.testing.assert_array_equal(injected, batch)


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_chunks_equal_one_batch(pipeline, io, ddim_out, chunk_size):
  assert _max_error(_run(pipeline, io, "ddim", chunk_size=chunk_size), ddim_out) < 1e-5


def test_no_guidance_runs_one_batch(pipeline, io):
  poisoned = dict(io, negative_override=np.full_like(io["negative_embeds"], np.nan))
  out = _run(pipeline, poisoned, "ddim", guidance_scale=1.0)  # NaN states would show
  error = _max_error(out, io["ddim_unguided_images"])
  print(f"ddim unguided: max abs error {error:.2e}")
  assert error < 1e-4
  # negative_hidden may be left out, and the program is the same one.
  (loaded, params, _) = pipeline
  models, scheduler = loaded["ddim"]
  settings = _settings(scheduler, "ddim", guidance_scale=1.0)
  again = inpaint.inpaint(params, models, settings, io["images"], io["masks"],
                          io["prompt_embeds"], None, None, init_noise=io["init_noise"],
                          posterior_noise=io["posterior_noise"])
  np.testing.assert_array_equal(again, out)


def test_bfloat16_runs_finite(pipeline, io, ddim_out):
  out = _run(pipeline, io, "ddim", rows=slice(1, 2), dtype="bfloat16")
  assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
  print(f"ddim bfloat16 UNet vs float32: max abs difference "
        f"{_max_error(out, ddim_out[1:2]):.2e}")


def test_inputs_are_checked(pipeline, io):
  (loaded, params, _) = pipeline
  models, scheduler = loaded["ddim"]
  settings = _settings(scheduler, "ddim")
  args = (params, models, settings, io["images"], io["masks"], io["prompt_embeds"])
  with pytest.raises(SettingsError, match="needs negative_hidden"):
    inpaint.inpaint(*args, None, jax.random.split(jax.random.key(0), 3))
  with pytest.raises(SettingsError, match="needs keys"):
    inpaint.inpaint(*args, io["negative_embeds"], None)
  with pytest.raises(SettingsError, match="multiples of 4"):
    inpaint.inpaint(params, models, settings, io["images"][:, :62], io["masks"][:, :62],
                    io["prompt_embeds"], io["negative_embeds"], None,
                    init_noise=io["init_noise"], posterior_noise=io["posterior_noise"])
  with pytest.raises(SettingsError, match="chunk_size"):
    inpaint.InpaintSettings(scheduler, chunk_size=-1)
  with pytest.raises(SettingsError, match="dtype"):
    inpaint.InpaintSettings(scheduler, dtype="float16")


def test_presets_and_tiny_models_fit():
  sd15, sd2 = hub.sd15_inpainting_models(), hub.sd2_inpainting_models()
  assert (sd15.unet.in_channels, sd15.unet.cross_attention_dim, sd15.text.text.hidden_size) == (
      9, 768, 768)
  assert (sd2.unet.cross_attention_dim, sd2.text.text.num_layers) == (1024, 23)
  assert sd15.downsample_factor == 8 and hub.tiny_models().downsample_factor == 4
  with pytest.raises(SettingsError, match="cross_attention_dim is 768"):
    inpaint.SDModels(unet=sd15.unet, vae=sd15.vae, text=sd2.text)
  params = hub.random_params(hub.tiny_models(), jax.random.key(0))
  assert jax.tree.map(jnp.shape, params["vae"]) == jax.tree.map(
      jnp.shape, hub.vae_lib.abstract_params(hub.tiny_models().vae))


def test_loader_forces_the_pipeline_scheduler_settings_and_checks_the_parts(sd_dir, tmp_path):
  root = tmp_path / "pipeline"
  shutil.copytree(sd_dir / "pipeline_tiny", root)
  config = root / "scheduler" / "scheduler_config.json"
  data = json.loads(config.read_text())
  data.update(steps_offset=0, skip_prk_steps=False)
  config.write_text(json.dumps(data))
  forced = hub.pipeline_scheduler_config(data)
  assert (forced.kind, forced.steps_offset) == ("pndm", 1)
  unet_config = root / "unet" / "config.json"
  data = json.loads(unet_config.read_text())
  data.update(in_channels=4, cross_attention_dim=48)
  unet_config.write_text(json.dumps(data))
  with pytest.raises(WeightsError, match="do not make an inpainting model") as err:
    hub.load_stable_diffusion(root)
  assert "4 input channels" in str(err.value) and "cross_attention_dim is 48" in str(err.value)
