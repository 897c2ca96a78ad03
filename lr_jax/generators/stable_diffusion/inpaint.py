"""Stable Diffusion inpainting with a 9-channel UNet, batched over edits, as one jitted call.

The steps are those of diffusers' `StableDiffusionInpaintPipeline` at strength 1 (the
pipeline's default and the official editor's setting):
  1. images in [0, 1] go to [-1, 1]; masks are binarised (>= 0.5 regenerates);
  2. the masked image (the image where the mask is 0, zero elsewhere) goes through the VAE
     encoder; its latents are a posterior sample times the VAE's scaling factor;
  3. the binary mask is resized to the latent grid by nearest neighbour (torch's
     `F.interpolate` default: source row floor(i * H / h));
  4. the latents start as standard normal noise times the scheduler's init_noise_sigma;
  5. every scheduler call feeds the UNet the channel concatenation (latents, mask,
     masked-image latents); with classifier-free guidance (guidance_scale > 1) the batch is
     doubled, unconditional rows first, and the outputs combine as
     uncond + guidance_scale * (cond - uncond); the scheduler then steps the latents
     (its input scaling is the identity for PNDM, DDIM and DPM-Solver++);
  6. latents / scaling_factor are decoded by the VAE and (x / 2 + 0.5) is clipped to [0, 1].
The result is NOT composited with the input: like the pipeline, the whole image comes out of
the VAE decoder (pasting back is the editor's business).

Randomness: each edit has its own typed key; its initial noise uses fold_in(key, 0) and its
posterior noise fold_in(key, 1), so an edit gives the same image alone or in a batch, and in
any chunk. Tests inject both noises directly.

The whole denoising loop is one `lax.scan` over the scheduler's calls (the step tables are
host constants of `schedulers.make_schedule`), so a call compiles once per
(models, settings, shapes). `chunk_size > 0` runs the edits through encode, loop and decode
in chunks of that many with `lax.map` inside the same program, bounding the activations'
memory by the chunk's (a last, partial chunk is padded with copies of the last edit).

Precision: `dtype` "bfloat16" computes the UNet in bfloat16 with float32 params; latents,
the guidance combination and the scheduler stay float32 (`encode_prompts` takes its own
dtype). The VAE computes in `vae_dtype`, float32 by default. diffusers keeps its SD VAE in
float32 (`force_upcast`) because float16 overflows in the decoder; bfloat16 has float32's
range and does not overflow, but its 8-bit mantissa costs precision: on the full-size VAE
with diffusers' random init, a bfloat16 decode at 256 px is off by 2.4e-3 on average and
3.8e-2 at most (pixels in [0, 1]; 10 levels of 8 bits), the encoder's latents by 2.5% of
their range. The VAE is little of the work at SD-1.5 sizes (XLA's count at 512 px: encode +
decode 3.6 TFLOP, one guided UNet call 1.6 TFLOP, so 8% of a 25-step and 4% of a 50-step
run), so it stays float32 unless asked otherwise.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from lr_common.errors import SettingsError
from lr_jax.encoders import clip_text
from lr_jax.generators.stable_diffusion import schedulers
from lr_jax.generators.stable_diffusion import unet as unet_lib
from lr_jax.generators.stable_diffusion import vae as vae_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_BACKENDS = (None, "xla", "cudnn")
INIT_NOISE_STREAM, POSTERIOR_NOISE_STREAM = 0, 1  # fold_in values of an edit's key


def fit_problems(unet: unet_lib.UNetConfig, vae: vae_lib.VAEConfig,
                 text: clip_text.ClipTextConfig) -> list[str]:
  """One line per way the three parts do not fit an inpainting model (empty: they fit)."""
  latent = vae.latent_channels
  problems = []
  if unet.in_channels != 2 * latent + 1:
    problems.append(f"the UNet takes {unet.in_channels} input channels; inpainting needs "
                    f"2 * latent_channels + 1 = {2 * latent + 1} (latents, mask, masked-image "
                    f"latents) for the VAE's {latent} latent channels")
  if unet.out_channels != latent:
    problems.append(f"the UNet predicts {unet.out_channels} channels, the VAE has {latent} "
                    f"latent channels")
  width = text.text.hidden_size
  if unet.cross_attention_dim != width:
    problems.append(f"the UNet's cross_attention_dim is {unet.cross_attention_dim}, the text "
                    f"encoder is {width} wide")
  return problems


@dataclasses.dataclass(frozen=True)
class SDModels:
  """The static sizes of an SD inpainting model: UNet, VAE and text encoder.

  The parts must fit: the UNet takes 2 * latent_channels + 1 channels (latents, mask,
  masked-image latents) and predicts latent_channels, and cross-attends to states as wide
  as the text encoder.
  """
  unet: unet_lib.UNetConfig
  vae: vae_lib.VAEConfig
  text: clip_text.ClipTextConfig

  def __post_init__(self):
    problems = self.problems()
    if problems:
      raise SettingsError("the Stable Diffusion parts do not fit: " + "; ".join(problems))

  def problems(self) -> list[str]:
    """What keeps the parts from working together (empty: they fit)."""
    return fit_problems(self.unet, self.vae, self.text)

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent along each side (8 for SD)."""
    return self.vae.downsample_factor


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class InpaintSettings:
  """How `inpaint` samples (frozen, hashable: a jit static).

  Attributes:
    scheduler: the sampler and its noise schedule.
    num_steps: inference steps (PNDM makes num_steps + 1 UNet calls, the others num_steps).
    guidance_scale: classifier-free guidance; <= 1 runs the UNet once per call on the text
      states alone (the pipeline's rule), > 1 doubles its batch.
    dtype: UNet compute dtype, "float32" or "bfloat16" (params stay float32).
    chunk_size: > 0 sends the edits through the pipeline in chunks of this many
      (`lax.map` in the same program) to bound memory; 0 all at once.
    vae_dtype: VAE compute dtype (see the module docstring for why float32 is the default).
    attention_backend: `jax.nn.dot_product_attention`'s implementation for the UNet
      (None: XLA's choice; "cudnn": cuDNN's fused kernel, GPUs with bfloat16 only).
  """
  scheduler: schedulers.SchedulerConfig
  num_steps: int = 50
  guidance_scale: float = 7.5
  dtype: str = "float32"
  chunk_size: int = 0
  vae_dtype: str = "float32"
  attention_backend: str | None = None

  def __post_init__(self):
    need = []
    if not isinstance(self.scheduler, schedulers.SchedulerConfig):
      need.append(f"scheduler must be a SchedulerConfig, got {type(self.scheduler).__name__}")
    if not _is_int(self.num_steps) or self.num_steps < 1:
      need.append(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
    if (isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float))
        or not math.isfinite(self.guidance_scale)):
      need.append(f"guidance_scale must be a finite number, got {self.guidance_scale!r}")
    for name in ("dtype", "vae_dtype"):
      if getattr(self, name) not in DTYPES:
        need.append(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
    if not _is_int(self.chunk_size) or self.chunk_size < 0:
      need.append(f"chunk_size must be an integer >= 0, got {self.chunk_size!r}")
    if self.attention_backend not in ATTENTION_BACKENDS:
      need.append(f"attention_backend must be one of {ATTENTION_BACKENDS}, "
                  f"got {self.attention_backend!r}")
    if need:
      raise SettingsError("bad inpainting settings: " + "; ".join(need))

  @property
  def guided(self) -> bool:
    """Whether classifier-free guidance runs (diffusers: guidance_scale > 1)."""
    return self.guidance_scale > 1

  def schedule(self) -> schedulers.Schedule:
    """The scheduler's tables for `num_steps` (host numpy)."""
    return schedulers.make_schedule(self.scheduler, self.num_steps)


# ----------------------------------------------------------------------------
# The pieces (each works on a batch of edits).
# ----------------------------------------------------------------------------

def mask_conditioning(vae_params: Any, config: vae_lib.VAEConfig, images: jax.Array,
                      masks: jax.Array, posterior_noise: jax.Array,
                      dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """The UNet's extra inputs: (latent mask (N, h, w, 1), masked-image latents (N, h, w, C)).

  images (N, H, W, 3) in [0, 1]; masks (N, H, W), binarised at 0.5 (1 regenerates);
  posterior_noise (N, h, w, C) standard normal. The latents are scaled by the VAE's
  scaling factor.
  """
  regenerate = masks >= 0.5
  pixels = images.astype(jnp.float32) * 2 - 1
  masked = pixels * (~regenerate)[..., None].astype(jnp.float32)
  model = vae_lib.AutoencoderKL(config, dtype)
  mean, logvar = model.apply({"params": vae_params}, masked, method=vae_lib.AutoencoderKL.encode)
  latents = vae_lib.reparameterize(mean, logvar, posterior_noise) * config.scaling_factor
  latent_mask = unet_lib.nearest_resize(regenerate[..., None].astype(jnp.float32),
                                        latents.shape[1:3])
  return latent_mask, latents


def denoise(unet_params: Any, config: unet_lib.UNetConfig, settings: InpaintSettings,
            latents: jax.Array, latent_mask: jax.Array, masked_latents: jax.Array,
            text_hidden: jax.Array, negative_hidden: jax.Array | None) -> jax.Array:
  """The sampling loop (one `lax.scan`): initial latents (N, h, w, C) -> final latents.

  negative_hidden is read only when guided.
  """
  schedule = settings.schedule()
  model = unet_lib.UNet2DConditionModel(config, DTYPES[settings.dtype],
                                        settings.attention_backend)
  guided = settings.guided
  condition = jnp.concatenate([latent_mask, masked_latents], axis=-1)
  context = text_hidden
  if guided:
    condition = jnp.concatenate([condition, condition])
    context = jnp.concatenate([negative_hidden, text_hidden])
  scale = jnp.float32(settings.guidance_scale)

  def call(carry, _):
    x, state, index = carry
    doubled = jnp.concatenate([x, x]) if guided else x
    unet_input = jnp.concatenate([doubled, condition.astype(x.dtype)], axis=-1)
    output = model.apply({"params": unet_params}, unet_input,
                         schedulers.model_timestep(schedule, index), context)
    if guided:
      uncond, cond = jnp.split(output, 2)
      output = uncond + scale * (cond - uncond)
    x, state = schedulers.step(schedule, state, index, output, x)
    return (x, state, index + 1), None

  start = (latents * schedule.init_noise_sigma,
           schedulers.init_state(schedule, latents.shape), jnp.int32(0))
  (latents, _, _), _ = jax.lax.scan(call, start, None, length=schedule.num_calls)
  return latents


def decode_latents(vae_params: Any, config: vae_lib.VAEConfig, latents: jax.Array,
                   dtype: Any = jnp.float32) -> jax.Array:
  """Final latents (N, h, w, C) -> images (N, H, W, 3) in [0, 1] (the pipeline's
  postprocess: (x / 2 + 0.5) clipped)."""
  model = vae_lib.AutoencoderKL(config, dtype)
  pixels = model.apply({"params": vae_params}, latents / config.scaling_factor,
                       method=vae_lib.AutoencoderKL.decode)
  return jnp.clip(pixels / 2 + 0.5, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=1)
def edit_noise(keys: jax.Array, latent_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(initial noise, posterior noise), each (N, *latent_shape) float32 N(0, 1), drawn from
  fold_in(key, 0) and fold_in(key, 1) of each edit's key."""
  def draw(key, stream):
    return jax.random.normal(jax.random.fold_in(key, stream), latent_shape, jnp.float32)
  draw_all = jax.vmap(draw, in_axes=(0, None))
  return draw_all(keys, INIT_NOISE_STREAM), draw_all(keys, POSTERIOR_NOISE_STREAM)


def _check_inputs(models: SDModels, settings: InpaintSettings, images, masks, text_hidden,
                  negative_hidden) -> tuple[int, int, int]:
  """Shapes as `inpaint` needs them; returns (N, h, w) of the latents."""
  if images.ndim != 4 or images.shape[-1] != models.vae.in_channels:
    raise SettingsError(f"images must be (N, H, W, {models.vae.in_channels}), got "
                        f"{images.shape}")
  count, height, width = images.shape[:3]
  f = models.downsample_factor
  if height % f or width % f:
    raise SettingsError(f"image height and width must be multiples of {f}, got "
                        f"{height}x{width}")
  if masks.shape != (count, height, width):
    raise SettingsError(f"masks must be (N, H, W) = {(count, height, width)}, got {masks.shape}")
  depth = models.unet.cross_attention_dim
  if text_hidden.ndim != 3 or text_hidden.shape[0] != count or text_hidden.shape[2] != depth:
    raise SettingsError(f"text_hidden must be (N={count}, L, {depth}), got {text_hidden.shape}")
  if settings.guided and (negative_hidden is None
                          or negative_hidden.shape != text_hidden.shape):
    got = None if negative_hidden is None else negative_hidden.shape
    raise SettingsError(f"guidance_scale {settings.guidance_scale} > 1 needs negative_hidden "
                        f"shaped like text_hidden {text_hidden.shape}, got {got}")
  return count, height // f, width // f


def _in_chunks(fn, batch: tuple, count: int, chunk: int) -> jax.Array:
  """fn over `batch` (a tuple of arrays with leading axis `count`) in chunks of `chunk`
  (lax.map), the last chunk padded with copies of the last row."""
  if chunk <= 0 or chunk >= count:
    return fn(batch)
  pad = -count % chunk
  def split(x):
    if pad:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
    return x.reshape((-1, chunk) + x.shape[1:])
  out = jax.lax.map(fn, tuple(split(x) for x in batch))
  return out.reshape((-1,) + out.shape[2:])[:count]


def inpaint(params: Any, models: SDModels, settings: InpaintSettings, images: jax.Array,
            masks: jax.Array, text_hidden: jax.Array, negative_hidden: jax.Array | None,
            keys: jax.Array | None, *, init_noise: jax.Array | None = None,
            posterior_noise: jax.Array | None = None) -> jax.Array:
  """Inpaints N edits; returns the VAE-decoded images (N, H, W, 3) in [0, 1], not composited.

  Args:
    params: {"unet", "vae", "text_encoder"} float32 params (the text encoder is not used).
    models, settings: static (see SDModels, InpaintSettings).
    images: (N, H, W, 3) in [0, 1]; H and W multiples of the VAE's downsample factor.
    masks: (N, H, W) in [0, 1], 1 = regenerate (binarised at 0.5).
    text_hidden: (N, L, D) text encoder states of the prompts (`encode_prompts`).
    negative_hidden: (N, L, D) states of the negative prompts ("" when none); ignored and
      may be None when not guided.
    keys: (N,) typed PRNG keys, one per edit (may be None when both noises are given).
    init_noise, posterior_noise: optional (N, h, w, latent_channels) standard normals that
      replace the ones drawn from the keys.

  Jittable; on its own it runs one compiled program per (models, settings, shapes), the
  same whether the noises come from keys or are given.
  """
  images, masks, text_hidden = (jnp.asarray(x) for x in (images, masks, text_hidden))
  count, h, w = _check_inputs(models, settings, images, masks, text_hidden, negative_hidden)
  latent_shape = (h, w, models.vae.latent_channels)
  if init_noise is None or posterior_noise is None:
    if keys is None:
      raise SettingsError("inpaint needs keys unless init_noise and posterior_noise are given")
    keys = jnp.asarray(keys)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
      keys = jax.random.wrap_key_data(keys)
    if keys.shape != (count,):
      raise SettingsError(f"keys must be (N={count},) typed keys, got shape {keys.shape}")
    drawn_init, drawn_posterior = edit_noise(keys, latent_shape)
    init_noise = drawn_init if init_noise is None else init_noise
    posterior_noise = drawn_posterior if posterior_noise is None else posterior_noise
  for name, noise in (("init_noise", init_noise), ("posterior_noise", posterior_noise)):
    if jnp.shape(noise) != (count,) + latent_shape:
      raise SettingsError(f"{name} must be {(count,) + latent_shape}, got {jnp.shape(noise)}")
  if negative_hidden is None or not settings.guided:
    negative_hidden = text_hidden  # a stand-in the loop never reads
  return _inpaint_noised(params, models, settings, images, masks, text_hidden,
                         jnp.asarray(negative_hidden), jnp.asarray(init_noise, jnp.float32),
                         jnp.asarray(posterior_noise, jnp.float32))


@functools.partial(jax.jit, static_argnames=("models", "settings"))
def _inpaint_noised(params, models, settings, images, masks, text_hidden, negative_hidden,
                    init_noise, posterior_noise):
  vae_dtype = DTYPES[settings.vae_dtype]

  def run(batch):
    image, mask, text, negative, noise, posterior = batch
    latent_mask, masked_latents = mask_conditioning(params["vae"], models.vae, image, mask,
                                                    posterior, vae_dtype)
    latents = denoise(params["unet"], models.unet, settings, noise, latent_mask,
                      masked_latents, text, negative)
    return decode_latents(params["vae"], models.vae, latents, vae_dtype)

  batch = (images, masks, text_hidden, negative_hidden, init_noise, posterior_noise)
  return _in_chunks(run, batch, images.shape[0], settings.chunk_size)


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _encode(text_params: Any, config: clip_text.ClipTextConfig, ids: jax.Array,
            dtype: str) -> jax.Array:
  out = clip_text.ClipTextModel(config, DTYPES[dtype]).apply({"params": text_params}, ids)
  return out.last_hidden_state.astype(jnp.float32)


def encode_prompts(params: Any, models: SDModels, ids: jax.Array,
                   dtype: str = "float32") -> jax.Array:
  """Token ids (N, L) (the pipeline's: padded to 77, no attention mask) -> the text
  encoder's last hidden state (N, L, D) float32, after the final LayerNorm.

  `params` is the {"unet", "vae", "text_encoder"} dict (only "text_encoder" is read) or the
  text encoder's own params; `dtype` is the compute dtype.
  """
  if dtype not in DTYPES:
    raise SettingsError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  text_params = params["text_encoder"] if "text_encoder" in params else params
  return _encode(text_params, models.text, jnp.asarray(ids, jnp.int32), dtype)
