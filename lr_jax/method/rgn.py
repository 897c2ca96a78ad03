"""Region generation network (RGN) and differentiable choice among box proposals.

For each anchor the RGN scores its M square box proposals from their ROI-pooled
features (paper Eq. 1-2). Training picks one proposal per anchor with the
Gumbel-max trick and a straight-through gradient (forward: exact one-hot of the
argmax; backward: gradient of the Gumbel-softmax), and gives the RGN a gradient
by forming the edited image as sum_j w_j * E_j over the M candidate edits
(`select_candidates`). Unlike the official Learnable_Regions code, nothing in
this path is cut off from the gradient (no ceil/.item()/PIL round trips).

An alternative, lower-variance estimator is the exact expectation
sum_j softmax(logits)_j * L_j over the candidates' losses (`expected_loss`);
`selection_loss` switches between the two with a string.
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ESTIMATORS = ("straight_through", "expected")


class RegionGenerationNetwork(nn.Module):
  """Scores the M box proposals of an anchor.

  Input: pooled features (..., M, l, l, C) (l = 7 in the paper). The M boxes are
  concatenated along channels with an explicit transpose to (..., l, l, M, C)
  before the reshape, so channel index m * C + c holds feature c of box m
  (the official code reshaped without the transpose, mixing boxes and anchors).
  Then Conv(k x k) -> ReLU -> Conv(k x k) -> ReLU -> flatten -> Dense -> ReLU
  -> Dense(M): two conv and two linear layers with ReLUs in between (paper
  Sec. 3.1). Output: logits (..., M).
  """
  conv_features: Sequence[int] = (256, 128)
  dense_features: int = 256
  kernel_size: int = 3

  @nn.compact
  def __call__(self, pooled: Array) -> Array:
    if pooled.ndim < 4:
      raise ValueError(
          f"pooled features must be (..., M, l, l, C), got {pooled.shape}")
    num_boxes, l_h, l_w, channels = pooled.shape[-4:]
    batch_shape = pooled.shape[:-4]
    x = pooled.reshape((-1, num_boxes, l_h, l_w, channels))
    x = jnp.transpose(x, (0, 2, 3, 1, 4))  # (B, l, l, M, C)
    x = x.reshape((x.shape[0], l_h, l_w, num_boxes * channels))
    for i, feats in enumerate(self.conv_features):
      x = nn.Conv(feats, (self.kernel_size, self.kernel_size), padding="SAME",
                  name=f"conv_{i}")(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.dense_features, name="dense_0")(x)
    x = nn.relu(x)
    logits = nn.Dense(num_boxes, name="dense_1")(x)
    return logits.reshape(batch_shape + (num_boxes,))


@jax.custom_jvp
def _straight_through(hard: Array, soft: Array) -> Array:
  """Returns `hard` exactly; its derivative is that of `soft`."""
  del soft
  return hard


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  hard, _ = primals
  _, soft_dot = tangents
  return hard, soft_dot


def gumbel_softmax_straight_through(logits: Array,
                                    rng: Optional[Array] = None,
                                    tau: float = 1.0,
                                    gumbel: Optional[Array] = None) -> Array:
  """Straight-through Gumbel-softmax sample over the last axis.

  Forward: the exact one-hot (bitwise 0.0/1.0) of argmax((logits + g) / tau),
  g ~ Gumbel(0, 1) i.i.d. = `jax.random.gumbel(rng, logits.shape)`; the argmax
  is distributed as softmax(logits) whatever tau is.
  Backward: the gradient of y_soft = softmax((logits + g) / tau). This is the
  usual y_hard - stop_gradient(y_soft) + y_soft, written with a custom JVP so
  that the forward value is exactly y_hard (no floating-point residue).

  Args:
    logits: (..., M) unnormalised log-probabilities.
    rng: PRNG key for the Gumbel noise (ignored when `gumbel` is given).
    tau: softmax temperature of the backward pass, > 0.
    gumbel: optional explicit noise, same shape as logits.

  Returns:
    (..., M) one-hot weights, dtype of logits (float).
  """
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    logits = logits.astype(jnp.float32)
  if isinstance(tau, (int, float)) and tau <= 0:
    raise ValueError(f"tau must be > 0, got {tau}")
  if gumbel is None:
    if rng is None:
      raise ValueError("pass either rng or gumbel")
    gumbel = jax.random.gumbel(rng, logits.shape, logits.dtype)
  elif gumbel.shape != logits.shape:
    raise ValueError(
        f"gumbel shape {gumbel.shape} != logits shape {logits.shape}")
  perturbed = (logits + jax.lax.stop_gradient(gumbel)) / tau
  soft = jax.nn.softmax(perturbed, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(perturbed, axis=-1), logits.shape[-1],
                        dtype=logits.dtype)
  return _straight_through(hard, soft)


def select_candidates(candidates: Array, weights: Array) -> Array:
  """sum_j weights[..., j] * candidates[..., j, *item].

  Args:
    candidates: (..., M, *item), e.g. edited images (K, M, H, W, 3); usually
      constant w.r.t. the RGN.
    weights: (..., M) selection weights (one-hot from
      `gumbel_softmax_straight_through`, or probabilities).

  Returns:
    (..., *item). With one-hot weights the forward value is exactly the chosen
    candidate (for finite candidates), and the gradient w.r.t. the weights is
    <dL/d output, E_j>, which reaches the logits through the straight-through
    backward pass.
  """
  lead = weights.ndim
  if candidates.ndim < lead or candidates.shape[:lead] != weights.shape:
    raise ValueError(
        f"candidates {candidates.shape} must start with weights' shape "
        f"{weights.shape}")
  w = weights.reshape(weights.shape + (1,) * (candidates.ndim - lead))
  return jnp.sum(w.astype(jnp.result_type(candidates, weights)) * candidates,
                 axis=lead - 1)


def expected_loss(losses: Array, logits: Array) -> Array:
  """Exact expectation sum_j softmax(logits)_j * losses_j over the last axis.

  The Gumbel-max choice is distributed as softmax(logits), so this is the
  expected loss of the sampled proposal, with an exact (no-noise) gradient.
  """
  if losses.shape != logits.shape:
    raise ValueError(f"losses {losses.shape} and logits {logits.shape} differ")
  return jnp.sum(jax.nn.softmax(logits, axis=-1) * losses, axis=-1)


def selection_loss(loss_fn: Callable[[Array], Any],
                   candidates: Array,
                   logits: Array,
                   rng: Optional[Array],
                   estimator: str = "straight_through",
                   tau: float = 1.0,
                   has_aux: bool = False) -> Tuple[Any, Array]:
  """Loss of the proposal choice under either estimator.

  Args:
    loss_fn: maps items (..., *item) with ANY leading batch shape to per-item
      losses (...), e.g. a CLIP loss of edited images; with `has_aux`, to
      (losses, aux) where aux is any pytree (e.g. the loss terms).
    candidates: (..., M, *item) candidate edits (one per box proposal).
    logits: (..., M) RGN logits.
    rng: PRNG key for the Gumbel noise (unused by "expected").
    estimator: "straight_through": loss_fn of the straight-through Gumbel
      selection (one loss_fn call on (...) items). "expected": exact
      sum_j softmax_j * loss_fn(E_j) (loss_fn on all (..., M) candidates).
    tau: Gumbel-softmax temperature (straight_through only).
    has_aux: loss_fn returns (losses, aux).

  Returns:
    (losses (...), weights (..., M)), or ((losses, aux), weights) with has_aux:
    weights are the one-hot choice for "straight_through" and softmax(logits)
    for "expected"; aux is loss_fn's, for the chosen edits (straight_through)
    or for every candidate (expected).
  """
  call = loss_fn if has_aux else (lambda x: (loss_fn(x), None))
  if estimator == "straight_through":
    weights = gumbel_softmax_straight_through(logits, rng, tau)
    losses, aux = call(select_candidates(candidates, weights))
  elif estimator == "expected":
    all_losses, aux = call(candidates)
    if all_losses.shape != logits.shape:
      raise ValueError(
          f"loss_fn(candidates) has shape {all_losses.shape}, expected "
          f"{logits.shape}")
    losses, weights = expected_loss(all_losses, logits), jax.nn.softmax(logits, axis=-1)
  else:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  return ((losses, aux), weights) if has_aux else (losses, weights)
