"""The jitted pieces of the method: regions, candidate edits, the objective, a training step, inference.

Everything here is a pure function of (frozen model parameters, RGN parameters, batch,
key) and of static `Models` and `settings.Method`; `lr_jax.trainer` and
`lr_jax.inference` drive them. Shapes: B images, K anchors, M boxes per anchor, S the
editor's image size, boxes (top, left, height, width) in the editor's token units,
(row, col) order everywhere.

A batch is {"images" (B,S,S,3): the canvases (`lr_common.canvas`), "valid" (B,4) int: the
token area (top, left, height, width) of each canvas that shows the photo (optional:
the whole grid), "text_embed" (B,P), "src_text_embed" (B,P), "cond": the editor's
conditioning arrays}.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_common import box_editing
from lr_jax.method import anchors as anchors_lib
from lr_jax.encoders import dino as dino_lib
from lr_jax.method import losses as losses_lib
from lr_jax.method import rgn as rgn_lib
from lr_jax.method import roi_align as roi_lib
from lr_jax.method import scoring
from lr_jax.method import sharding
from lr_jax.encoders.clip import CLIP, augment_views, clip_preprocess
from lr_jax.editors.base import EditOutput
from lr_jax.method.bundle import Models
from lr_jax.method.settings import (LossSettings, Method, OptimSettings, RegionSettings,
                                    ScoreSettings)

Array = jax.Array


class TrainState(NamedTuple):
  step: Array
  params: Any        # RGN parameters (the only trained ones)
  opt_state: Any


class Regions(NamedTuple):
  attention: Array   # (B, h, w) DINO [CLS] attention on the token grid
  anchors: Array     # (B, K, 2) int (row, col) in tokens
  boxes: Array       # (B, K, M, 4) proposals in tokens
  pooled: Array      # (B, K, M, R, R, D) ROI-aligned DINO features


class Candidates(NamedTuple):
  """Where each of N candidate boxes comes from (N = K, or K x M for "search")."""
  anchors: Array     # (B, N, 2) int (row, col): the anchor of each candidate
  proposals: Array   # (B, N, P, 4) the proposals it was picked from (P = M, or 1 for the
                     # random baselines, whose box is its own proposal)


class Inference(NamedTuple):
  """What `infer` computes for a batch of images with N candidate boxes each (N = K, or
  K x M for the "search" strategy); per image, index every field with [b]."""
  regions: Regions              # what `find_regions` found: attention, K anchors, proposals
  candidates: Candidates        # per candidate: its anchor and proposals
  logits: Array                 # (B, K, M) RGN scores of the proposals
  chosen: Array                 # (B, N) which of its proposals each candidate is
  boxes: Array                  # (B, N, 4) the candidate boxes, tokens
  edit: EditOutput              # the N edits of each image, in one editor call
  scores: scoring.QualityScore  # (B, N) S, S_t2i, S_i2i
  best: Array                   # (B,) the candidate kept


def make_optimizer(optim: OptimSettings) -> optax.GradientTransformation:
  return optax.adam(optim.learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps)


def new_train_state(params: Any, optim: OptimSettings) -> TrainState:
  """Step 0 and a fresh Adam state for RGN `params` (init, refinement and restore use it)."""
  return TrainState(np.zeros((), np.int32), params, make_optimizer(optim).init(params))


def rgn_network(method: Method) -> rgn_lib.RegionGenerationNetwork:
  """The RGN of these settings (its parameters are the trained state, not `frozen`)."""
  return rgn_lib.RegionGenerationNetwork(conv_features=method.rgn.conv_features,
                                         dense_features=method.rgn.dense_features)


@functools.lru_cache(maxsize=16)
def _init_fn(models: Models, method: Method):
  r = method.region
  shape = (1, 1, r.num_boxes, r.roi_size, r.roi_size, models.dino_dim)
  init = lambda rng: new_train_state(
      rgn_network(method).init(rng, jnp.zeros(shape, jnp.float32))["params"], method.optim)
  return jax.jit(init)


def init_train_state(models: Models, method: Method, rng: Array) -> TrainState:
  """Random RGN parameters and a fresh Adam state (one small jitted call: eager
  `init` would compile every primitive separately, seconds on a small CPU)."""
  return _init_fn(models, method)(rng)


def find_regions(models: Models, frozen: Any, images: Array, region: RegionSettings,
                 valid: Array | None = None) -> Regions:
  """DINO attention -> top-K anchors -> M square proposals each -> ROI-aligned features.

  valid: (B, 4) token areas showing the photo (None: the whole grid); anchors are
  picked inside them and the proposals clamped to them."""
  feats, attention = dino_lib.dino_features(models.dino, frozen["dino"], images)  # (B,g,g,D)
  grid = models.editor.box_grid
  feat_grid = feats.shape[1]
  if feat_grid % grid:
    raise ValueError(
        f"The DINO patch grid ({feat_grid}x{feat_grid}) must be a whole multiple of the "
        f"editor's token grid ({grid}x{grid}): pick a DINO patch size / image size that fits.")
  if feat_grid != grid:  # e.g. DINO B/8: average the attention onto the token grid
    f = feat_grid // grid
    attention = attention.reshape(attention.shape[0], grid, f, grid, f).mean((2, 4))
  anchors = anchors_lib.top_k_anchors(attention, region.num_anchors, valid)
  boxes = anchors_lib.box_proposals(anchors, sizes=region.sizes, grid=grid, valid=valid)
  pooled = roi_lib.roi_align_batched(
      feats, boxes, output_size=region.roi_size, sampling_ratio=region.sampling_ratio,
      spatial_scale=feat_grid / grid)
  return Regions(attention, anchors, boxes, pooled)


Split = sharding.CandidateSplit | None   # None: every candidate on one device, at once


def candidate_keys(rng: Array, batch: int, num_boxes: int) -> Array:
  """(B, N, 2) raw keys, fold_in(fold_in(rng, b), n): what the editors derive from one key."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return box_editing.box_keys(rng, batch, num_boxes)


def edit_boxes(models: Models, frozen: Any, images: Array, boxes: Array, cond: Any,
               rng: Array, split: Split = None) -> EditOutput:
  """The editor's edits of every box (B, N, 4) in one call (split over devices and
  chunks with `split`; box (b, n) keeps its key): constants for the RGN."""
  if split is None:
    out = models.editor.edit(frozen["editor"], images, boxes, cond, rng)
  else:
    edit = lambda params, local, boxes, keys: models.editor.edit(
        params, local["images"], boxes, local["cond"], keys)
    out = sharding.map_candidates(edit, split, frozen["editor"],
                                  {"images": images, "cond": cond}, boxes,
                                  candidate_keys(rng, *boxes.shape[:2]))
  return jax.tree.map(jax.lax.stop_gradient, out)


@functools.lru_cache(maxsize=16)
def make_edit(models: Models):
  """`edit_boxes` jitted for these models: one more editor call (`lr_jax.method.window`)."""
  return jax.jit(functools.partial(edit_boxes, models))


def clip_images(models: Models, frozen: Any, images: Array) -> tuple[Array, Array]:
  """CLIP image embeddings and last-layer tokens of images (..., H, W, 3) in [0, 1]."""
  lead = images.shape[:-3]
  flat = images.reshape((-1,) + images.shape[-3:])
  pixels = clip_preprocess(flat, size=models.clip_image_size, check_range=False)
  emb, tok = models.clip.apply({"params": frozen["clip"]}, pixels, method=CLIP.encode_image)
  return emb.reshape(lead + emb.shape[1:]), tok.reshape(lead + tok.shape[1:])


def augmented_embeds(models: Models, frozen: Any, edits: Array, rng: Array,
                     num_views: int) -> Array:
  """CLIP embeddings (V, ...lead, P) of V random resized crops/flips of edits (...lead, S, S, 3)."""
  lead = edits.shape[:-3]
  flat = edits.reshape((-1,) + edits.shape[-3:])
  views = augment_views(flat, rng, num_views, size=models.clip_image_size,
                        normalize=False)                               # (V, N, s, s, 3)
  emb, _ = clip_images(models, frozen, views)
  return emb.reshape((num_views,) + lead + emb.shape[-1:])


def edit_losses(models: Models, frozen: Any, batch: dict[str, Any], edits: Array,
                rng: Array, loss: LossSettings) -> tuple[Array, dict[str, Array]]:
  """Per-edit loss and terms (`losses.total_loss`) of edits (B, ...lead, S, S, 3).

  The sources go through CLIP in the same call as the edits (one CLIP in the
  compiled program instead of two); they get no gradient.
  """
  images = batch["images"]
  b, lead = images.shape[0], edits.shape[1:-3]
  flat = edits.reshape((b, -1) + edits.shape[-3:])
  both = jnp.concatenate([jax.lax.stop_gradient(images)[:, None], flat], axis=1)
  all_emb, all_tok = clip_images(models, frozen, both)                  # (B, 1+N, ...)
  src_emb, src_tok = jax.lax.stop_gradient((all_emb[:, 0], all_tok[:, 0]))
  emb = all_emb[:, 1:].reshape((b,) + lead + all_emb.shape[2:])
  tok = all_tok[:, 1:].reshape((b,) + lead + all_tok.shape[2:])
  expand = lambda x: x.reshape(x.shape[:1] + (1,) * len(lead) + x.shape[1:])
  views = (augmented_embeds(models, frozen, edits, rng, loss.num_views)
           if loss.num_views else None)
  inputs = losses_lib.LossInputs(
      edit_embeds=emb, text_embeds=expand(batch["text_embed"]), src_embeds=expand(src_emb),
      src_text_embeds=expand(batch["src_text_embed"]), edit_tokens=tok,
      src_tokens=expand(src_tok), view_embeds=views)
  return losses_lib.total_loss(inputs, dict(loss.weights))


def loss_fn(rgn_params, models: Models, frozen: Any, batch: dict[str, Any], rng: Array,
            method: Method, split: Split = None) -> tuple[Array, dict[str, Array]]:
  """The training loss of a batch; differentiable in the RGN parameters only."""
  images = batch["images"]
  b = images.shape[0]
  rng_edit, rng_gumbel, rng_views = jax.random.split(rng, 3)
  regions = jax.lax.stop_gradient(
      find_regions(models, frozen, images, method.region, batch.get("valid")))
  k, m = regions.boxes.shape[1:3]
  edits = edit_boxes(models, frozen, images, regions.boxes.reshape(b, k * m, 4),
                     batch["cond"], rng_edit, split).images
  edits = edits.reshape((b, k, m) + edits.shape[2:])                    # (B,K,M,S,S,3)
  logits = rgn_network(method).apply({"params": rgn_params}, regions.pooled)   # (B,K,M)
  def objective(candidates):   # -> (per-edit loss, (the same, its terms)) for the metrics
    total, terms = edit_losses(models, frozen, batch, candidates, rng_views, method.loss)
    return total, (total, terms)

  (losses, (per_edit, terms)), weights = rgn_lib.selection_loss(
      objective, edits, logits, rng_gumbel, method.selection.estimator,
      method.selection.tau, has_aux=True)
  loss = losses.mean()
  probs = jax.nn.softmax(logits, axis=-1)
  metrics = {f"loss_{n}": v.mean() for n, v in terms.items()}
  metrics.update(
      loss=loss,
      per_image_loss=per_edit.reshape(b, -1).mean(axis=1),
      entropy=-(probs * jnp.log(probs + 1e-9)).sum(-1).mean(),
      mean_box_size=(weights * jnp.asarray(method.region.sizes, jnp.float32)).sum(-1).mean())
  return loss, metrics


def train_step(state: TrainState, frozen: Any, batch: dict[str, Any], rng: Array, *,
               models: Models, method: Method, split: Split = None
               ) -> tuple[TrainState, dict[str, Array]]:
  """One Adam step on the RGN. `rng` is the run's key; it is folded with the step here.
  `split`: the K x M edits spread over devices (per-image refinement of one image)."""
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, models, frozen, batch, step_rng, method, split)
  updates, opt_state = make_optimizer(method.optim).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)   # NaN/inf if any parameter is
  return TrainState(state.step + 1, params, opt_state), metrics


@functools.lru_cache(maxsize=16)
def _jitted_train_step(models: Models, method: Method, donate: bool, split: Split):
  if split is None:
    fn = functools.partial(train_step, models=models, method=method)
    return jax.jit(fn, donate_argnums=(0,) if donate else ())
  fn = functools.partial(train_step, models=models, method=method, split=split)
  # Everything replicated on the split's devices, the state step after step: one compile
  # whether the inputs come from the host or from there.
  return jax.jit(fn, donate_argnums=(0,) if donate else (), in_shardings=split.replicated(),
                 out_shardings=split.replicated())


def make_train_step(models: Models, method: Method, donate: bool = True, split: Split = None):
  """`train_step` jitted for these models and settings (one compiled function per pair;
  the state is donated except on a CPU, which cannot use donations). With `split`,
  a batch's edits are spread over its devices (`sharding.CandidateSplit`)."""
  return _jitted_train_step(models, method, donate and jax.default_backend() != "cpu", split)


STRATEGIES = ("rgn", "search", "random", "dino_random")
_BOX_DRAWS = 0x5EED   # folded into the edit key for the baselines' random boxes


def _candidates(logits: Array, regions: Regions, rng: Array, models: Models, strategy: str,
                valid: Array | None = None):
  """From the RGN's `logits` (B,K,M): the candidate boxes (B,N,4) and, per candidate, its
  anchor (B,N,2), the proposals it was picked from (B,N,P,4) and which one (B,N)."""
  b, k, m = regions.boxes.shape[:3]
  if strategy == "rgn":   # the RGN's box per anchor
    chosen = jnp.argmax(logits, axis=-1)                                 # (B,K)
    boxes = jnp.take_along_axis(regions.boxes, chosen[..., None, None], axis=2)[:, :, 0]
    return boxes, regions.anchors, regions.boxes, chosen
  if strategy == "search":   # every proposal of every anchor
    boxes = regions.boxes.reshape(b, k * m, 4)
    anchors = jnp.repeat(regions.anchors, m, axis=1)
    proposals = jnp.repeat(regions.boxes, m, axis=1)
    chosen = jnp.tile(jnp.arange(m), (b, k))
    return boxes, anchors, proposals, chosen
  if strategy in ("random", "dino_random"):   # the paper's baselines
    centres, _, boxes = anchors_lib.random_boxes(
        jax.random.fold_in(rng, _BOX_DRAWS), (b, k), models.editor.box_grid,
        regions.anchors if strategy == "dino_random" else None,
        None if valid is None else valid[:, None])
    anchors = jnp.floor(centres).astype(regions.anchors.dtype)
    return boxes, anchors, boxes[:, :, None].astype(jnp.float32), jnp.zeros((b, k), int)
  raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def infer(rgn_params, frozen: Any, batch: dict[str, Any], rng: Array, *,
          models: Models, method: Method, strategy: str = "rgn",
          split: Split = None) -> Inference:
  """Candidate boxes, their edits in one call, their quality scores and the pick.

  strategy: "rgn" (the RGN's box per anchor: K candidates), "search" (every proposal:
  K x M candidates, no training), "random" / "dino_random" (the paper's baselines: K
  boxes of random size around random / DINO anchors, drawn from `rng`). `split`: the
  candidates spread over devices and chunks (`sharding.CandidateSplit`).
  """
  images = batch["images"]
  valid = batch.get("valid")
  regions = find_regions(models, frozen, images, method.region, valid)
  logits = rgn_network(method).apply({"params": rgn_params}, regions.pooled)   # (B,K,M)
  boxes, anchors, proposals, chosen = _candidates(logits, regions, rng, models, strategy, valid)
  out, scores, best = edit_and_score(models, frozen, batch, boxes, rng, method.score, split)
  return Inference(regions, Candidates(anchors, proposals), logits, chosen, boxes, out,
                   scores, best)


def edit_and_score(models: Models, frozen: Any, batch: dict[str, Any], boxes: Array,
                   rng: Array, score: ScoreSettings, split: Split = None
                   ) -> tuple[EditOutput, scoring.QualityScore, Array]:
  """The candidate boxes (B, N, 4) edited in one editor call, their quality scores
  S = alpha S_t2i + beta S_i2i (one CLIP call with the sources) and the pick per image.

  With `split` each device edits and embeds its share of the candidates, chunk by
  chunk (`sharding.map_candidates`); the sources are embedded apart."""
  images = batch["images"]
  if split is None:
    out = edit_boxes(models, frozen, images, boxes, batch["cond"], rng)
    both = jnp.concatenate([images[:, None], out.images], axis=1)          # one CLIP call
    all_emb, _ = clip_images(models, frozen, both)                         # (B,1+N,P)
    src_emb, emb = all_emb[:, 0], all_emb[:, 1:]
  else:
    def edit_and_embed(params, local, boxes, keys):
      edit = models.editor.edit(params["editor"], local["images"], boxes, local["cond"], keys)
      return edit, clip_images(models, params, edit.images)[0]
    out, emb = sharding.map_candidates(
        edit_and_embed, split, {"editor": frozen["editor"], "clip": frozen["clip"]},
        {"images": images, "cond": batch["cond"]}, boxes,
        candidate_keys(rng, *boxes.shape[:2]))
    src_emb = clip_images(models, frozen, images)[0]
  scores = jax.vmap(functools.partial(scoring.quality_score, alpha=score.alpha,
                                      beta=score.beta))(emb, src_emb, batch["text_embed"])
  best = jax.vmap(lambda q: scoring.pick_best(q, top_t2i=score.top_t2i or None))(scores)
  return out, scores, best


@functools.lru_cache(maxsize=16)
def _jitted_infer(models: Models, method: Method, strategy: str, split: Split):
  if split is None:
    return jax.jit(functools.partial(infer, models=models, method=method, strategy=strategy))
  # Inputs replicated on the split's devices (the candidates are split inside): host
  # arrays and arrays already there (a refined RGN) share one compile. The outputs are
  # gathered onto every device: their split over an images x boxes mesh need not be one
  # that the inputs' 1-D mesh can name.
  return jax.jit(functools.partial(infer, models=models, method=method, strategy=strategy,
                                   split=split), in_shardings=split.replicated(),
                 out_shardings=split.replicated())


def make_infer(models: Models, method: Method, strategy: str = "rgn", split: Split = None):
  """`infer` jitted for these models, settings, strategy and split over devices (one
  compiled function each; `sharding.candidate_split`)."""
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  return _jitted_infer(models, method, strategy, split)
