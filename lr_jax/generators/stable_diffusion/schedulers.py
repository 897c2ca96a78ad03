"""The noise schedulers of the SD inpainting checkpoints: host tables plus one pure step.

Three samplers, each giving the same `prev_sample` as its diffusers (0.42.1) class:
  * "pndm": PNDMScheduler with skip_prk_steps (stable-diffusion-2-inpainting);
  * "ddim": DDIMScheduler with eta 0 (stable-diffusion-inpainting);
  * "dpmsolver++": DPMSolverMultistepScheduler, DPM-Solver++ (2M by default).

Everything that depends only on the step number (timesteps, noise levels, the
weights of the multistep formulas) is computed once on the host by
`make_schedule` as arrays with one row per model call. `step` then reads row
`index` (a traced integer) and does a few element-wise operations, so a whole
sampling loop is one `lax.scan` whose carry is (sample, state, index):

  schedule = make_schedule(config, 50)
  def body(carry, _):
    x, state, i = carry
    out = unet(x, model_timestep(schedule, i))   # no input scaling is needed
    x, state = step(schedule, state, i, out, x)
    return (x, state, i + 1), None
  x0 = noise * schedule.init_noise_sigma
  (x, _, _), _ = lax.scan(body, (x0, init_state(schedule, x0.shape), jnp.int32(0)), None,
                          length=schedule.num_calls)

The model is called at `schedule.timesteps[index]` with the sample of that call.
PNDM makes n + 1 calls for n steps (its second timestep appears twice);
the others make n calls.

Notation: abar_t is the cumulative product of (1 - beta) up to train step t, the
share of signal variance left at t; a sample is x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps. An "epsilon" model predicts eps; a "v_prediction" model
predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.

Tables are computed in float64 from float32 abar values (diffusers keeps abar in
float32 and computes its coefficients in float32); the step runs in float32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.encoders.hf_files import WeightsError
from lr_common.errors import SettingsError

PNDM, DDIM, DPM_SOLVER_PP = "pndm", "ddim", "dpmsolver++"
KINDS = (PNDM, DDIM, DPM_SOLVER_PP)
CLASS_KINDS = {"PNDMScheduler": PNDM, "DDIMScheduler": DDIM,
               "DPMSolverMultistepScheduler": DPM_SOLVER_PP}
BETA_SCHEDULES = ("scaled_linear", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")

# PLMS (Adams-Bashforth) weights of the newest model outputs, newest first, by how
# many outputs the history holds.
_ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """The scheduler settings that change the samples (frozen, hashable: a jit static).

  Defaults are the SD inpainting values with PNDM. Fields past `steps_offset`
  concern one kind only (set_alpha_to_one: PNDM and DDIM; clip_*: DDIM; the rest:
  DPM-Solver++) and are ignored by the others. Build it from a hub
  `scheduler_config.json` with `scheduler_config_from_json`.
  """
  kind: str = PNDM
  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  prediction_type: str = "epsilon"
  timestep_spacing: str = "leading"
  steps_offset: int = 1
  set_alpha_to_one: bool = False     # the step past t = 0 lands on abar = 1, else abar_0
  clip_sample: bool = False          # DDIM clamps its x0 estimate to +-clip_sample_range
  clip_sample_range: float = 1.0
  solver_order: int = 2              # DPM-Solver++: 1 (DDIM-like) or 2 (2M)
  solver_type: str = "midpoint"
  lower_order_final: bool = True     # first order on the last step when under 15 steps
  euler_at_final: bool = False       # always first order on the last step
  final_sigmas_type: str = "zero"    # the last step goes to noise 0, or to sigma_min
  lambda_min_clipped: float = -math.inf

  def __post_init__(self):
    problems = _value_problems(dataclasses.asdict(self))
    if problems:
      raise WeightsError("unsupported scheduler settings: " + "; ".join(problems))


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_problems(values: Mapping[str, Any]) -> list[str]:
  """One line per value this module cannot run (empty: all fine)."""
  choices = {"kind": KINDS, "beta_schedule": BETA_SCHEDULES,
             "prediction_type": PREDICTION_TYPES, "timestep_spacing": TIMESTEP_SPACINGS,
             "solver_type": SOLVER_TYPES, "final_sigmas_type": FINAL_SIGMAS_TYPES,
             "solver_order": (1, 2)}
  problems = [f"{name}={values[name]!r} (supported: {', '.join(map(repr, allowed))})"
              for name, allowed in choices.items()
              if name in values and (values[name] not in allowed
                                     or isinstance(values[name], bool))]
  n = values.get("num_train_timesteps")
  if not _is_int(n) or n < 2:
    problems.append(f"num_train_timesteps={n!r} (an integer >= 2)")
  if not _is_int(values.get("steps_offset")) or values["steps_offset"] < 0:
    problems.append(f"steps_offset={values.get('steps_offset')!r} (an integer >= 0)")
  start, end = values.get("beta_start"), values.get("beta_end")
  if not (_is_number(start) and _is_number(end) and 0 <= start <= end < 1):
    problems.append(f"beta_start={start!r}, beta_end={end!r} (0 <= start <= end < 1)")
  for name in ("set_alpha_to_one", "clip_sample", "lower_order_final", "euler_at_final"):
    if name in values and not isinstance(values[name], bool):
      problems.append(f"{name}={values[name]!r} (true or false)")
  for name, low in (("clip_sample_range", 0.0),):
    if name in values and not (_is_number(values[name]) and values[name] > low):
      problems.append(f"{name}={values[name]!r} (a number > {low})")
  if "lambda_min_clipped" in values and not (
      _is_number(values["lambda_min_clipped"]) and not math.isnan(values["lambda_min_clipped"])):
    problems.append(f"lambda_min_clipped={values['lambda_min_clipped']!r} (a number)")
  return problems


# ---- reading diffusers' scheduler_config.json ----

# Constructor defaults of the diffusers classes: a key missing from the json takes them.
_SHARED_DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                        beta_schedule="linear", trained_betas=None, prediction_type="epsilon",
                        timestep_spacing="leading", steps_offset=0)
_CLASS_DEFAULTS = {
    PNDM: dict(_SHARED_DEFAULTS, skip_prk_steps=False, set_alpha_to_one=False),
    DDIM: dict(_SHARED_DEFAULTS, clip_sample=True, set_alpha_to_one=True,
               clip_sample_range=1.0, thresholding=False, rescale_betas_zero_snr=False),
    DPM_SOLVER_PP: dict(
        _SHARED_DEFAULTS, timestep_spacing="linspace", solver_order=2,
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, final_sigmas_type="zero", lambda_min_clipped=-math.inf,
        thresholding=False, use_karras_sigmas=False, use_exponential_sigmas=False,
        use_beta_sigmas=False, use_lu_lambdas=False, use_flow_sigmas=False,
        variance_type=None, rescale_betas_zero_snr=False),
}
# Keys that must keep one value here (the other values take code paths not ported).
_FIXED = {
    PNDM: dict(skip_prk_steps=True, trained_betas=None),
    DDIM: dict(thresholding=False, rescale_betas_zero_snr=False, trained_betas=None),
    DPM_SOLVER_PP: dict(
        algorithm_type="dpmsolver++", thresholding=False, use_karras_sigmas=False,
        use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
        use_flow_sigmas=False, variance_type=None, rescale_betas_zero_snr=False,
        trained_betas=None),
}


def _kind_of(name: str | None) -> str | None:
  if name in KINDS:
    return name
  return CLASS_KINDS.get(name)


def scheduler_config_from_json(data: Mapping[str, Any], kind: str | None = None
                               ) -> SchedulerConfig:
  """The settings of a diffusers `scheduler/scheduler_config.json` (a parsed dict).

  `_class_name` picks the kind unless `kind` (a kind of KINDS or a class name of
  CLASS_KINDS) overrides it. Like diffusers' `Target.from_config(config)` swap,
  the target class reads the keys it knows and takes its own defaults for keys
  the json lacks (or lists in `_use_default_values`): a PNDM json without
  `timestep_spacing` thus gives DPM-Solver++ "linspace", and a DDIM json without
  `clip_sample` clips. Keys the target class does not know are ignored.
  diffusers' SD inpaint pipeline forces steps_offset 1 and skip_prk_steps true
  whatever the json says; this reads the json as the scheduler class does.

  Raises:
    WeightsError: unknown class, or values this module does not implement
      (all of them named in one message).
  """
  class_name = data.get("_class_name")
  target = _kind_of(kind if kind is not None else class_name)
  if target is None:
    wanted = "kind" if kind is not None else "_class_name"
    raise WeightsError(
        f"scheduler_config.json: {wanted} {kind if kind is not None else class_name!r} is "
        f"not a supported scheduler (supported: {', '.join(CLASS_KINDS)}, or {KINDS})")
  from_defaults = set(data.get("_use_default_values") or ())
  values = {key: data[key] if key in data and key not in from_defaults else default
            for key, default in _CLASS_DEFAULTS[target].items()}
  values["kind"] = target
  problems = [f"{key}={values[key]!r} (supported: {want!r})"
              for key, want in _FIXED[target].items()
              if values[key] != want or type(values[key]) is not type(want)]
  problems += _value_problems(values)
  if problems:
    raise WeightsError(f"scheduler_config.json ({class_name} read as {target}): unsupported "
                       f"values: {'; '.join(problems)}")
  names = {field.name for field in dataclasses.fields(SchedulerConfig)}
  return SchedulerConfig(**{key: value for key, value in values.items() if key in names})


# ---- host-side tables ----

@dataclasses.dataclass(frozen=True)
class Schedule:
  """Per-call tables of one sampling run (a pytree: arrays are its leaves).

  Attributes:
    config: the settings (static).
    num_steps: the inference steps asked for (static).
    init_noise_sigma: the initial noise's scale (1.0 for all three kinds).
    timesteps: (num_calls,) int32, the timestep the model is called at, per call.
    tables: name -> (num_calls, ...) float32 coefficients read by `step`.
  """
  config: SchedulerConfig
  num_steps: int
  init_noise_sigma: float
  timesteps: Any
  tables: dict[str, Any]

  @property
  def num_calls(self) -> int:
    return int(np.shape(self.timesteps)[0])


jax.tree_util.register_dataclass(
    Schedule, data_fields=["timesteps", "tables"],
    meta_fields=["config", "num_steps", "init_noise_sigma"])


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
  """abar_t for t = 0 .. num_train_timesteps - 1, float32 as diffusers keeps it."""
  n = config.num_train_timesteps
  if config.beta_schedule == "linear":
    betas = np.linspace(config.beta_start, config.beta_end, n).astype(np.float32)
  else:  # "scaled_linear": evenly spaced square roots, squared in float32
    roots = np.linspace(math.sqrt(config.beta_start), math.sqrt(config.beta_end), n)
    betas = np.square(roots.astype(np.float32))
  alphas = np.float32(1) - betas
  return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def _descending_timesteps(config: SchedulerConfig, num_steps: int) -> np.ndarray:
  """The n train timesteps PNDM and DDIM visit, largest first."""
  n_train = config.num_train_timesteps
  if config.timestep_spacing == "linspace":   # both ends included, rounded
    steps = np.linspace(0, n_train - 1, num_steps).round()[::-1]
  elif config.timestep_spacing == "leading":  # multiples of n_train // n, shifted
    steps = np.arange(num_steps)[::-1] * (n_train // num_steps) + config.steps_offset
  else:                                       # "trailing": counted down from the end
    steps = np.round(np.arange(n_train, 0, -n_train / num_steps)) - 1
  return steps.astype(np.int64)


def _pndm_tables(config, abar, num_steps, first_call):
  """PLMS without Runge-Kutta warm-up (skip_prk_steps).

  One transfer from timestep t to t' with a noise estimate eps is
    x_t' = sqrt(abar_t' / abar_t) x_t
           - (abar_t' - abar_t) eps / (abar_t sqrt(1 - abar_t') + sqrt(abar_t (1 - abar_t) abar_t'))
  (PNDM's formula (9)), with t' = t - n_train // n (abar_t' = final value past 0).
  eps is an Adams-Bashforth mix of the latest model outputs. With a single
  output at the start, call 0 steps t0 -> t1 with it; call 1, made at t1 on that
  result, steps t0 -> t1 again from the first sample with the mean of both
  outputs (call 1's output is not kept for later mixes); from call 2 on (the model
  called at t1 once more) the mixes use 2, 3, then 4 outputs. A strength below 1
  starts this ladder over at `first_call`, as diffusers does.
  """
  descending = _descending_timesteps(config, num_steps)
  calls = np.concatenate([descending[:1], descending[1:2], descending[1:]])[first_call:]
  jump = config.num_train_timesteps // num_steps
  final_abar = 1.0 if config.set_alpha_to_one else float(abar[0])
  rows = []
  for counter, t in enumerate(calls):
    start, end = (t + jump, t) if counter == 1 else (t, t - jump)
    if not 0 <= start < config.num_train_timesteps:
      raise SettingsError(f"PNDM with {num_steps} steps steps from timestep {start}, outside "
                          f"the {config.num_train_timesteps} train timesteps")
    a, a_end = float(abar[start]), (float(abar[end]) if end >= 0 else final_abar)
    if counter == 1:
      weights = (0.5, 0.5)
    else:
      weights = _ADAMS_BASHFORTH[min(counter, 4) if counter else 1]
    denominator = a * math.sqrt(1 - a_end) + math.sqrt(a * (1 - a) * a_end)
    rows.append(dict(
        weights=np.pad(weights, (0, 4 - len(weights))),
        keep_output=float(counter != 1), restart=float(counter == 1),
        store_sample=float(counter == 0), sqrt_abar=math.sqrt(a),
        sqrt_one_minus_abar=math.sqrt(1 - a), sample_coeff=math.sqrt(a_end / a),
        eps_coeff=(a_end - a) / denominator))
  return calls, rows


def _ddim_tables(config, abar, num_steps, first_call):
  """DDIM, eta 0: x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') eps, t' = t - n_train // n."""
  calls = _descending_timesteps(config, num_steps)
  if np.any(calls >= config.num_train_timesteps):
    raise SettingsError(f"DDIM with {num_steps} steps and steps_offset "
                        f"{config.steps_offset} passes the last train timestep")
  jump = config.num_train_timesteps // num_steps
  final_abar = 1.0 if config.set_alpha_to_one else float(abar[0])
  rows = []
  for t in calls[first_call:]:
    a, a_end = float(abar[t]), (float(abar[t - jump]) if t - jump >= 0 else final_abar)
    rows.append(dict(sqrt_abar=math.sqrt(a), sqrt_one_minus_abar=math.sqrt(1 - a),
                     sqrt_abar_next=math.sqrt(a_end),
                     sqrt_one_minus_abar_next=math.sqrt(1 - a_end)))
  return calls[first_call:], rows


def _dpm_timesteps(config, abar, num_steps):
  n_train = config.num_train_timesteps
  # Timesteps whose log-SNR falls below lambda_min_clipped are never visited.
  log_snr = (np.log(np.sqrt(abar)) - np.log(np.sqrt(np.float32(1) - abar))).astype(np.float32)
  last = n_train - int(np.searchsorted(log_snr[::-1], config.lambda_min_clipped))
  if config.timestep_spacing == "linspace":    # n + 1 points, the one at 0 dropped
    steps = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1]
  elif config.timestep_spacing == "leading":
    steps = (np.arange(num_steps + 1) * (last // (num_steps + 1)))[::-1][:-1]
    steps = steps + config.steps_offset
  else:
    steps = np.round(np.arange(last, 0, -n_train / num_steps)) - 1
  return steps.astype(np.int64)


def _dpm_tables(config, abar, num_steps, first_call):
  """DPM-Solver++ (multistep, data prediction) on the VP noise levels.

  With alpha = sqrt(abar), sigma = sqrt(1 - abar) and lambda = log(alpha / sigma),
  a step from s to t (h = lambda_t - lambda_s > 0) with the model's x0 estimate D0:
    first order:  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D0
    second order: adds D1 = (D0 - D0_prev) / r, r = h_prev / h, with weight
                  -alpha_t (e^-h - 1) / 2 ("midpoint") or
                  alpha_t ((e^-h - 1) / h + 1) ("heun").
  The first call (`first_call`) and, when final_sigmas_type is "zero" (noise 0:
  the step returns D0), euler_at_final, or lower_order_final under 15 steps,
  the last one are first order. Noise levels are diffusers' float32
  sigma = sqrt((1 - abar) / abar) at the timesteps, plus the final one.
  """
  calls = _dpm_timesteps(config, abar, num_steps)
  if np.any(calls >= config.num_train_timesteps) or np.any(calls < 0):
    raise SettingsError(f"DPM-Solver++ with {num_steps} steps leaves the train timesteps")
  sigma_table = np.sqrt((np.float32(1) - abar) / abar).astype(np.float32)
  final = 0.0 if config.final_sigmas_type == "zero" else float(sigma_table[0])
  sigmas = np.append(sigma_table[calls], np.float32(final)).astype(np.float64)
  alpha = 1 / np.sqrt(sigmas ** 2 + 1)
  sigma = sigmas * alpha
  with np.errstate(divide="ignore"):
    log_snr = np.log(alpha) - np.log(sigma)   # +inf at noise 0
  count = len(calls)
  rows = []
  for s in range(first_call, count):
    h = log_snr[s + 1] - log_snr[s]
    decay = math.exp(-h) - 1.0                 # e^-h - 1 (-1 at noise 0)
    last_low = s == count - 1 and (config.euler_at_final or config.final_sigmas_type == "zero"
                                   or (config.lower_order_final and count < 15))
    first_order = config.solver_order == 1 or s == first_call or last_low
    if first_order:
      inv_r, d1_coeff = 0.0, 0.0
    else:
      inv_r = h / (log_snr[s] - log_snr[s - 1])
      if config.solver_type == "midpoint":
        d1_coeff = -0.5 * alpha[s + 1] * decay
      else:
        d1_coeff = alpha[s + 1] * (decay / h + 1.0)
    rows.append(dict(alpha=alpha[s], sigma=sigma[s], sample_coeff=sigma[s + 1] / sigma[s],
                     d0_coeff=-alpha[s + 1] * decay, inv_r=inv_r, d1_coeff=d1_coeff))
  return calls[first_call:], rows


_TABLE_BUILDERS = {PNDM: _pndm_tables, DDIM: _ddim_tables, DPM_SOLVER_PP: _dpm_tables}


def make_schedule(config: SchedulerConfig, num_steps: int, first_call: int = 0) -> Schedule:
  """Timesteps and step coefficients for `num_steps` inference steps (host, numpy).

  `first_call` skips the first calls as diffusers' inpaint pipeline does for a
  strength below 1 (it starts at call n - min(int(n * strength), n)); the
  multistep solvers then start over there, as diffusers' do.
  """
  if not _is_int(num_steps) or not 1 <= num_steps < config.num_train_timesteps:
    raise SettingsError(f"num_steps must be an integer in [1, "
                        f"{config.num_train_timesteps - 1}], got {num_steps!r}")
  if not _is_int(first_call) or first_call < 0:
    raise SettingsError(f"first_call must be an integer >= 0, got {first_call!r}")
  abar = alphas_cumprod(config)
  calls, rows = _TABLE_BUILDERS[config.kind](config, abar, num_steps, first_call)
  if not rows:
    raise SettingsError(f"first_call {first_call} skips every model call of {num_steps} steps")
  tables = {name: np.asarray([row[name] for row in rows], np.float32) for name in rows[0]}
  return Schedule(config=config, num_steps=num_steps, init_noise_sigma=1.0,
                  timesteps=np.asarray(calls, np.int32), tables=tables)


# ---- the step (jittable) ----

class SolverState(NamedTuple):
  """What a step leaves for the next ones (fixed shapes, zeros at the start).

  outputs: PNDM (3, *shape), the model outputs kept for the multistep mix, newest
    first; DPM-Solver++ (1, *shape), the previous x0 estimate; DDIM (0, *shape).
  first_sample: PNDM (1, *shape), the sample of the first call; others (0, *shape).
  """
  outputs: jax.Array
  first_sample: jax.Array


def init_state(schedule: Schedule, sample_shape: tuple[int, ...],
               dtype: Any = jnp.float32) -> SolverState:
  kind = schedule.config.kind
  history = {PNDM: 3, DDIM: 0, DPM_SOLVER_PP: 1}[kind]
  return SolverState(outputs=jnp.zeros((history, *sample_shape), dtype),
                     first_sample=jnp.zeros((int(kind == PNDM), *sample_shape), dtype))


def model_timestep(schedule: Schedule, index: jax.Array) -> jax.Array:
  """The timestep the model is called at on call `index` (int32 scalar)."""
  return jnp.asarray(schedule.timesteps)[index]


def _pndm_step(config, row, state, output, sample):
  # Call 1 restarts from the first call's sample; call 0 stores it.
  first = jnp.where(row["store_sample"] > 0, sample, state.first_sample[0].astype(jnp.float32))
  x = jnp.where(row["restart"] > 0, first, sample)
  history = state.outputs.astype(jnp.float32)
  weights = row["weights"]
  mixed = (weights[0] * output + weights[1] * history[0] + weights[2] * history[1]
           + weights[3] * history[2])
  if config.prediction_type == "v_prediction":   # the mix of v's, as an eps at this x
    mixed = row["sqrt_abar"] * mixed + row["sqrt_one_minus_abar"] * x
  prev = row["sample_coeff"] * x - row["eps_coeff"] * mixed
  pushed = jnp.concatenate([output[None], history[:2]])
  history = jnp.where(row["keep_output"] > 0, pushed, history)
  return prev, SolverState(history.astype(state.outputs.dtype),
                           first[None].astype(state.first_sample.dtype))


def _ddim_step(config, row, state, output, sample):
  if config.prediction_type == "epsilon":
    eps = output
    x0 = (sample - row["sqrt_one_minus_abar"] * output) / row["sqrt_abar"]
  else:
    eps = row["sqrt_abar"] * output + row["sqrt_one_minus_abar"] * sample
    x0 = row["sqrt_abar"] * sample - row["sqrt_one_minus_abar"] * output
  if config.clip_sample:   # only x0 is clamped; eps stays the model's
    x0 = jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
  prev = row["sqrt_abar_next"] * x0 + row["sqrt_one_minus_abar_next"] * eps
  return prev, state


def _dpm_step(config, row, state, output, sample):
  if config.prediction_type == "epsilon":
    x0 = (sample - row["sigma"] * output) / row["alpha"]
  else:
    x0 = row["alpha"] * sample - row["sigma"] * output
  d1 = row["inv_r"] * (x0 - state.outputs[0].astype(jnp.float32))
  prev = row["sample_coeff"] * sample + row["d0_coeff"] * x0 + row["d1_coeff"] * d1
  return prev, SolverState(x0[None].astype(state.outputs.dtype), state.first_sample)


_STEPS = {PNDM: _pndm_step, DDIM: _ddim_step, DPM_SOLVER_PP: _dpm_step}


def step(schedule: Schedule, state: SolverState, index: jax.Array, model_output: jax.Array,
         sample: jax.Array) -> tuple[jax.Array, SolverState]:
  """One sampler update: the sample for call `index + 1` (or the result after the last).

  `model_output` is the model's prediction at `model_timestep(schedule, index)` for
  `sample`. Computes in float32 and returns the sample's dtype. Pure and jittable;
  `index` may be traced.
  """
  row = {name: jnp.asarray(table)[index] for name, table in schedule.tables.items()}
  prev, state = _STEPS[schedule.config.kind](
      schedule.config, row, state, model_output.astype(jnp.float32),
      sample.astype(jnp.float32))
  return prev.astype(sample.dtype), state
