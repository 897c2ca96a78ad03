"""SD schedulers (PNDM, DDIM, DPM-Solver++) against diffusers' own runs
(fixture from tools/sd_fixtures_schedulers.py: same configs, same model outputs)."""
import dataclasses
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.encoders.hf_files import WeightsError
from lr_jax.generators.stable_diffusion import schedulers
from lr_common.errors import SettingsError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "stable_diffusion"
CASES = json.loads((FIXTURES / "schedulers.json").read_text())
TOLERANCE = 1e-5   # per step, relative to the largest |value| of diffusers' sample


@pytest.fixture(scope="module")
def arrays():
  with np.load(FIXTURES / "schedulers.npz") as data:
    return {k: data[k] for k in data.files}


def schedule_of(name: str) -> schedulers.Schedule:
  case = CASES[name]
  config = schedulers.scheduler_config_from_json(case["config"], kind=case["kind"])
  return schedulers.make_schedule(config, case["num_steps"], case["first_call"])


@jax.jit
def run_loop(schedule, initial, outputs):
  """The sampling loop as the real usage runs it: one jitted scan over the calls."""

  def body(carry, output):
    sample, state, index = carry
    sample, state = schedulers.step(schedule, state, index, output, sample)
    return (sample, state, index + 1), sample

  state = schedulers.init_state(schedule, initial.shape)
  _, samples = jax.lax.scan(body, (initial, state, jnp.int32(0)), outputs)
  return samples


@pytest.mark.parametrize("name", sorted(CASES))
def test_timesteps_match_diffusers(name, arrays):
  schedule = schedule_of(name)
  np.testing.assert_array_equal(schedule.timesteps, arrays[f"{name}_timesteps"])
  assert schedule.init_noise_sigma == arrays[f"{name}_init_noise_sigma"]
  assert schedule.num_calls == len(arrays[f"{name}_samples"])
  assert all(table.shape[0] == schedule.num_calls for table in schedule.tables.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_steps_match_diffusers(name, arrays):
  schedule = schedule_of(name)
  expected = arrays[f"{name}_samples"]
  outputs = arrays["model_outputs"][:schedule.num_calls]
  got = np.asarray(run_loop(schedule, jnp.asarray(arrays["initial_sample"]), outputs))
  scale = np.abs(expected).reshape(len(expected), -1).max(1)
  error = np.abs(got - expected).reshape(len(expected), -1).max(1) / scale
  assert error.max() < TOLERANCE, (name, int(error.argmax()), float(error.max()))


def test_pndm_calls_the_second_timestep_twice():
  config = schedulers.SchedulerConfig()     # SD-2-inpainting values
  schedule = schedulers.make_schedule(config, 50)
  assert schedule.num_calls == 51
  assert schedule.timesteps[:4].tolist() == [981, 961, 961, 941]
  assert schedule.timesteps[-1] == 1


def test_step_is_jittable_with_a_closed_over_schedule(arrays):
  """A schedule closed over (numpy constants) gives the same samples as one passed in."""
  schedule = schedule_of("dpm_eps_4")

  @jax.jit
  def two_steps(x, outputs):
    state = schedulers.init_state(schedule, x.shape)
    for i in range(2):
      x, state = schedulers.step(schedule, state, jnp.int32(i), outputs[i], x)
    return x

  got = two_steps(arrays["initial_sample"], arrays["model_outputs"][:2])
  np.testing.assert_allclose(got, arrays["dpm_eps_4_samples"][1], rtol=0, atol=1e-5)
  assert int(schedulers.model_timestep(schedule, jnp.int32(1))) == 601


# ---- config parsing ----

def test_old_ddim_json_uses_diffusers_defaults():
  config = schedulers.scheduler_config_from_json(CASES["ddim_old_clip_20"]["config"])
  assert config == schedulers.SchedulerConfig(
      kind="ddim", clip_sample=True, timestep_spacing="leading", prediction_type="epsilon",
      set_alpha_to_one=False, steps_offset=1)
  hash(config)


def test_swap_takes_the_targets_defaults_for_missing_keys():
  pndm_json = CASES["swap_pndm_to_dpm_25"]["config"]
  assert "timestep_spacing" not in pndm_json
  config = schedulers.scheduler_config_from_json(pndm_json, kind="DPMSolverMultistepScheduler")
  assert config.kind == "dpmsolver++"
  assert (config.timestep_spacing, config.steps_offset, config.solver_order) == ("linspace", 1, 2)
  as_ddim = schedulers.scheduler_config_from_json(pndm_json, kind="ddim")
  assert (as_ddim.clip_sample, as_ddim.set_alpha_to_one) == (False, False)  # read from the json
  without_clip = {k: v for k, v in pndm_json.items() if k != "clip_sample"}
  assert schedulers.scheduler_config_from_json(without_clip, kind="ddim").clip_sample
  as_pndm = schedulers.scheduler_config_from_json(pndm_json)
  assert as_pndm == schedulers.SchedulerConfig()


def test_use_default_values_counts_as_missing():
  data = dict(CASES["ddim_eps_20"]["config"], timestep_spacing="trailing",
              _use_default_values=["timestep_spacing", "clip_sample"])
  config = schedulers.scheduler_config_from_json(data)
  assert (config.timestep_spacing, config.clip_sample) == ("leading", True)


@pytest.mark.parametrize("base, changes, named", [
    ("ddim_eps_20", {"thresholding": True}, ["thresholding"]),
    ("pndm_eps_20", {"skip_prk_steps": False}, ["skip_prk_steps"]),
    ("pndm_eps_20", {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"},
     ["prediction_type", "beta_schedule"]),
    ("dpm_eps_20", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True,
                    "solver_order": 3}, ["algorithm_type", "use_karras_sigmas", "solver_order"]),
    ("dpm_eps_20", {"timestep_spacing": "middle", "trained_betas": [0.1, 0.2]},
     ["timestep_spacing", "trained_betas"]),
    ("ddim_eps_20", {"_class_name": "EulerDiscreteScheduler"}, ["EulerDiscreteScheduler"]),
    ("ddim_eps_20", {"steps_offset": -1, "num_train_timesteps": 1.5},
     ["steps_offset", "num_train_timesteps"]),
])
def test_unsupported_values_are_named(base, changes, named):
  data = dict(CASES[base]["config"], **changes)
  with pytest.raises(WeightsError) as error:
    schedulers.scheduler_config_from_json(data)
  for name in named:
    assert name in str(error.value)


def test_unknown_kind_override_and_bad_fields():
  with pytest.raises(WeightsError, match="EulerDiscreteScheduler"):
    schedulers.scheduler_config_from_json(CASES["ddim_eps_20"]["config"],
                                          kind="EulerDiscreteScheduler")
  with pytest.raises(WeightsError, match="solver_type"):
    schedulers.SchedulerConfig(kind="dpmsolver++", solver_type="bh2")


def test_step_counts_are_checked():
  config = schedulers.SchedulerConfig(kind="ddim")
  for bad in (0, 1000, 2.0):
    with pytest.raises(SettingsError, match="num_steps"):
      schedulers.make_schedule(config, bad)
  with pytest.raises(SettingsError, match="first_call"):
    schedulers.make_schedule(config, 4, first_call=4)
  with pytest.raises(SettingsError, match="first_call"):
    schedulers.make_schedule(config, 4, first_call=-1)
