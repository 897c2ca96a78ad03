"""The jitted pieces of the method: regions, candidate edits, losses, one training step, inference.

Everything here is a pure function of (frozen model parameters, RGN parameters, batch,
key); `lr_jax.trainer` and `lr_jax.editor` drive them. Shapes: B images, K anchors,
M boxes per anchor, S the MaskGIT image size, boxes (top, left, height, width) in
MaskGIT token units, (row, col) order everywhere.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lr_jax import anchors as anchors_lib
from lr_jax import losses as losses_lib
from lr_jax import rgn as rgn_lib
from lr_jax import roi_align as roi_lib
from lr_jax import scoring
from lr_jax.models import Models
from maskgit import editing

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


def make_optimizer(config) -> optax.GradientTransformation:
  return optax.adam(config.optim.learning_rate, b1=config.optim.b1, b2=config.optim.b2,
                    eps=config.optim.eps)


def init_train_state(models: Models, config, rng: Array) -> TrainState:
  """Random RGN parameters and a fresh Adam state (one small jitted call: eager
  `init` would compile every primitive separately, seconds on a small CPU)."""
  k, m = config.region.num_anchors, len(config.region.sizes)
  r, d = config.region.roi_size, models.dino_dim

  def init(rng):
    params = models.rgn.init(rng, jnp.zeros((1, k, m, r, r, d), jnp.float32))["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(config).init(params))

  return _cached(models, "init_train_state", config, lambda: jax.jit(init))(rng)


def find_regions(models: Models, frozen: Any, images: Array, config) -> Regions:
  """DINO attention -> top-K anchors -> M square proposals each -> ROI-aligned features."""
  feats, attention = models.dino_features(frozen["dino"], images)      # (B,g,g,D), (B,g,g)
  grid = models.maskgit.tokens_per_side
  feat_grid = feats.shape[1]
  if feat_grid % grid:
    raise ValueError(
        f"The DINO patch grid ({feat_grid}x{feat_grid}) must be a whole multiple of the "
        f"MaskGIT token grid ({grid}x{grid}): pick a DINO patch size / image size that fits.")
  if feat_grid != grid:  # e.g. DINO B/8: average the attention onto the token grid
    f = feat_grid // grid
    attention = attention.reshape(attention.shape[0], grid, f, grid, f).mean((2, 4))
  anchors = anchors_lib.top_k_anchors(attention, config.region.num_anchors)
  boxes = anchors_lib.box_proposals(anchors, sizes=tuple(config.region.sizes), grid=grid)
  pooled = roi_lib.roi_align_batched(
      feats, boxes, output_size=config.region.roi_size,
      sampling_ratio=config.region.sampling_ratio, spatial_scale=feat_grid / grid)
  return Regions(attention, anchors, boxes, pooled)


def edit_boxes(models: Models, frozen: Any, images: Array, boxes: Array, labels: Array,
               rng: Array) -> dict[str, Array]:
  """MaskGIT edits of every box in one batched call, clipped to [0, 1]. boxes: (B, N, 4) tokens."""
  out = editing.edit_images(   # one key per box: fold_in(fold_in(rng, image), box)
      frozen["vqgan"], frozen["transformer"], images, jnp.round(boxes).astype(jnp.int32),
      labels, rng, config=models.maskgit, edit=models.edit)
  # The decoder's output is not clipped; the saved photo is. Clip here so that CLIP
  # scores and trains on the pixels that are written out.
  out["images"] = jnp.clip(out["images"], 0., 1.)
  return jax.tree.map(jax.lax.stop_gradient, out)


def clip_images(models: Models, frozen: Any, images: Array) -> tuple[Array, Array]:
  """CLIP image embeddings and last-layer tokens of images (..., H, W, 3) in [0, 1]."""
  lead = images.shape[:-3]
  flat = images.reshape((-1,) + images.shape[-3:])
  emb, tok = models.clip_image(frozen["clip"], flat)
  return emb.reshape(lead + emb.shape[1:]), tok.reshape(lead + tok.shape[1:])


def augmented_embeds(models: Models, frozen: Any, edits: Array, rng: Array,
                     num_views: int) -> Array:
  """CLIP embeddings (V, ...lead, P) of V random resized crops/flips of edits (...lead, S, S, 3)."""
  lead = edits.shape[:-3]
  flat = edits.reshape((-1,) + edits.shape[-3:])
  views = losses_lib.augment_views(flat, rng, num_views, size=models.clip_image_size,
                                   normalize=False)                    # (V, N, s, s, 3)
  emb, _ = clip_images(models, frozen, views)
  return emb.reshape((num_views,) + lead + emb.shape[-1:])


def _edit_loss(config, edit_emb, edit_tok, src_emb, src_tok, txt, src_txt, view_emb=None):
  """Per-edit weighted loss and its terms; source/text arrays broadcast over edits.

  With augmented views (view_emb: (V, ...) embeddings of V crops of each edit) the
  guidance and directional terms are averaged over the views; the structure term
  always compares the un-augmented edit with the source.
  """
  e = edit_emb if view_emb is None else view_emb
  reduce = (lambda x: x) if view_emb is None else (lambda x: x.mean(axis=0))
  terms = {
      "clip": reduce(losses_lib.guidance_loss(e, txt)),
      "dir": reduce(losses_lib.directional_loss(e, src_emb, txt, src_txt)),
      "structure": losses_lib.structure_loss(edit_tok, src_tok),
  }
  w = config.loss
  total = w.clip * terms["clip"] + w.dir * terms["dir"] + w.structure * terms["structure"]
  return total, terms


def loss_fn(rgn_params, models: Models, frozen: Any, batch: dict[str, Array], rng: Array,
            config) -> tuple[Array, dict[str, Array]]:
  """The training loss of a batch; differentiable in the RGN parameters only."""
  images = batch["images"]
  b = images.shape[0]
  k, m = config.region.num_anchors, len(config.region.sizes)
  rng_edit, rng_gumbel, rng_views = jax.random.split(rng, 3)
  views = config.loss.num_views
  regions = jax.lax.stop_gradient(find_regions(models, frozen, images, config))
  edits = edit_boxes(models, frozen, images, regions.boxes.reshape(b, k * m, 4),
                     batch["labels"], rng_edit)["images"]
  edits = edits.reshape((b, k, m) + edits.shape[2:])                    # (B,K,M,S,S,3)
  txt, src_txt = batch["text_embed"], batch["src_text_embed"]
  expand = lambda x, n: x.reshape(x.shape[:1] + (1,) * n + x.shape[1:])
  logits = models.rgn.apply({"params": rgn_params}, regions.pooled)    # (B,K,M)

  # The sources go through CLIP in the same call as the edits (one CLIP in the
  # compiled program instead of two); they get no gradient.
  if config.selection.estimator == "straight_through":
    weights = rgn_lib.gumbel_softmax_straight_through(logits, rng_gumbel, config.selection.tau)
    chosen = rgn_lib.select_candidates(edits, weights)                   # (B,K,S,S,3)
    both = jnp.concatenate([jax.lax.stop_gradient(images)[:, None], chosen], axis=1)
    all_emb, all_tok = clip_images(models, frozen, both)                 # (B,1+K,...)
    src_emb, src_tok = jax.lax.stop_gradient((all_emb[:, 0], all_tok[:, 0]))
    emb, tok = all_emb[:, 1:], all_tok[:, 1:]
    view_emb = augmented_embeds(models, frozen, chosen, rng_views, views) if views else None
    per_edit, terms = _edit_loss(config, emb, tok, expand(src_emb, 1), expand(src_tok, 1),
                                 expand(txt, 1), expand(src_txt, 1), view_emb)
    loss = per_edit.mean()
  elif config.selection.estimator == "expected":
    both = jnp.concatenate([images[:, None], edits.reshape((b, k * m) + edits.shape[3:])], 1)
    all_emb, all_tok = jax.lax.stop_gradient(clip_images(models, frozen, both))
    src_emb, src_tok = all_emb[:, 0], all_tok[:, 0]
    emb = all_emb[:, 1:].reshape((b, k, m) + all_emb.shape[2:])
    tok = all_tok[:, 1:].reshape((b, k, m) + all_tok.shape[2:])
    view_emb = (jax.lax.stop_gradient(augmented_embeds(models, frozen, edits, rng_views, views))
                if views else None)
    per_edit, terms = _edit_loss(config, emb, tok, expand(src_emb, 2), expand(src_tok, 2),
                                 expand(txt, 2), expand(src_txt, 2), view_emb)   # (B,K,M)
    loss = rgn_lib.expected_loss(per_edit, logits).mean()
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    raise ValueError(f"selection.estimator must be 'straight_through' or 'expected', "
                     f"got {config.selection.estimator!r}")
  probs = jax.nn.softmax(logits, axis=-1)
  metrics = {f"loss_{n}": v.mean() for n, v in terms.items()}
  metrics.update(
      loss=loss,
      per_image_loss=per_edit.reshape(b, -1).mean(axis=1),
      entropy=-(probs * jnp.log(probs + 1e-9)).sum(-1).mean(),
      mean_box_size=(weights * jnp.asarray(config.region.sizes, jnp.float32)).sum(-1).mean())
  return loss, metrics


def train_step(state: TrainState, frozen: Any, batch: dict[str, Array], rng: Array, *,
               models: Models, config) -> tuple[TrainState, dict[str, Array]]:
  """One Adam step on the RGN. `rng` is the run's key; it is folded with the step here."""
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, models, frozen, batch, step_rng, config)
  updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return TrainState(state.step + 1, params, opt_state), metrics


# Config sections that do not change the compiled steps.
_NOT_COMPILED = ("train", "data", "infer", "seed")


def _cached(models: Models, name: str, config, build):
  """One compiled function per (models, config): reruns in a process reuse it."""
  compiled = {k: v for k, v in config.to_dict().items() if k not in _NOT_COMPILED}
  key = (name, repr(sorted(compiled.items())))
  cache = models.jit_cache
  if key not in cache:
    cache[key] = build()
  return cache[key]


def make_train_step(models: Models, config, donate: bool = True):
  """`train_step` jitted for these models and config (static)."""
  fn = functools.partial(train_step, models=models, config=config)
  donate_argnums = (0,) if donate and jax.default_backend() != "cpu" else ()
  return _cached(models, f"train_step_{bool(donate_argnums)}", config,
                 lambda: jax.jit(fn, donate_argnums=donate_argnums))


def infer(rgn_params, frozen: Any, batch: dict[str, Array], rng: Array, *,
          models: Models, config) -> dict[str, Array]:
  """The RGN's box per anchor, the K edits in one call, and their quality scores."""
  images = batch["images"]
  regions = find_regions(models, frozen, images, config)
  logits = models.rgn.apply({"params": rgn_params}, regions.pooled)     # (B,K,M)
  chosen = jnp.argmax(logits, axis=-1)                                   # (B,K)
  boxes = jnp.take_along_axis(regions.boxes, chosen[..., None, None], axis=2)[:, :, 0]
  out = edit_boxes(models, frozen, images, boxes, batch["labels"], rng)
  both = jnp.concatenate([images[:, None], out["images"]], axis=1)       # one CLIP call
  all_emb, _ = clip_images(models, frozen, both)                         # (B,1+K,P)
  src_emb, emb = all_emb[:, 0], all_emb[:, 1:]
  score = jax.vmap(functools.partial(scoring.quality_score, alpha=config.score.alpha,
                                     beta=config.score.beta))(emb, src_emb, batch["text_embed"])
  return dict(attention=regions.attention, anchors=regions.anchors, proposals=regions.boxes,
              logits=logits, chosen=chosen, boxes=boxes, candidates=out["images"],
              masks=out["pixel_mask"], scores=score.score, s_t2i=score.t2i,
              s_i2i=score.i2i, best=jnp.argmax(score.score, axis=-1))


def make_infer(models: Models, config):
  """`infer` jitted for these models and config (static)."""
  return _cached(models, "infer", config,
                 lambda: jax.jit(functools.partial(infer, models=models, config=config)))
