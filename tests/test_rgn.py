"""RGN, straight-through Gumbel-softmax, candidate selection, and a learning test."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lr_jax.method.rgn import (RegionGenerationNetwork, expected_loss,
                        gumbel_softmax_straight_through, select_candidates,
                        selection_loss)


def _np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def test_forward_is_exact_one_hot():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(500, 7)) * 3.0,
                       jnp.float32)
  rng = jax.random.PRNGKey(1)
  w = np.asarray(gumbel_softmax_straight_through(logits, rng, tau=0.7))
  assert w.shape == (500, 7)
  assert set(np.unique(w).tolist()) <= {0.0, 1.0}
  np.testing.assert_array_equal(w.sum(-1), np.ones(500))
  g = np.asarray(jax.random.gumbel(rng, logits.shape))
  np.testing.assert_array_equal(w.argmax(-1),
                                (np.asarray(logits) + g).argmax(-1))
  # Under jit and grad tracing the forward value stays bitwise one-hot.
  jitted = jax.jit(gumbel_softmax_straight_through)(logits, rng, 0.7)
  np.testing.assert_array_equal(np.asarray(jitted), w)

  def loss_with_aux(lg):
    weights = gumbel_softmax_straight_through(lg, rng, 0.7)
    return jnp.sum(weights * lg), weights

  _, traced = jax.jit(jax.grad(loss_with_aux, has_aux=True))(logits)
  np.testing.assert_array_equal(np.asarray(traced), w)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_gradient_is_softmax_jvp(tau):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 6)).astype(np.float32)
  g = rng.gumbel(size=(3, 6)).astype(np.float32)
  cands = rng.normal(size=(3, 6, 4, 2)).astype(np.float32)
  probe = rng.normal(size=(3, 4, 2)).astype(np.float32)

  def loss(lg):
    w = gumbel_softmax_straight_through(lg, gumbel=jnp.asarray(g), tau=tau)
    return jnp.sum(select_candidates(jnp.asarray(cands), w) * probe)

  got = np.asarray(jax.grad(loss)(jnp.asarray(logits)))
  # Independent: dL/dw_j = <probe, E_j>; dw/dlogits = softmax Jacobian / tau.
  c = np.einsum("kmab,kab->km", cands, probe)
  for k in range(3):
    jac = np.asarray(jax.jacobian(jax.nn.softmax)(
        jnp.asarray((logits[k] + g[k]) / tau)))
    np.testing.assert_allclose(got[k], jac.T @ c[k] / tau, rtol=1e-4, atol=1e-5)
    s = _np_softmax((logits[k] + g[k]).astype(np.float64) / tau)
    np.testing.assert_allclose(got[k], s * (c[k] - s @ c[k]) / tau,
                               rtol=1e-4, atol=1e-5)
  assert np.abs(got).max() > 1e-3


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_sampling_frequencies_match_softmax(tau):
  logits = jnp.asarray([1.0, -0.5, 0.3, 2.0, -1.5], jnp.float32)
  n = 20000
  w = gumbel_softmax_straight_through(
      jnp.broadcast_to(logits, (n, 5)), jax.random.PRNGKey(42), tau=tau)
  freq = np.asarray(w).mean(0)
  np.testing.assert_allclose(freq, _np_softmax(np.asarray(logits, np.float64)),
                             atol=0.02)


def test_select_candidates_forward_and_errors():
  cands = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
  w = jnp.asarray([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  np.testing.assert_array_equal(select_candidates(cands, w),
                                np.asarray(cands)[[0, 1], [1, 2]])
  with pytest.raises(ValueError):
    select_candidates(cands, jnp.ones((2, 4)))
  with pytest.raises(ValueError):
    selection_loss(lambda x: x.sum(-1), cands, jnp.zeros((2, 3)),
                   jax.random.PRNGKey(0), estimator="reinforce")


def test_expected_loss_against_numpy():
  rng = np.random.default_rng(3)
  losses = rng.normal(size=(4, 7)).astype(np.float32)
  logits = rng.normal(size=(4, 7)).astype(np.float32)
  np.testing.assert_allclose(expected_loss(jnp.asarray(losses), jnp.asarray(logits)),
                             (_np_softmax(logits) * losses).sum(-1), rtol=1e-5)


RGN = RegionGenerationNetwork(conv_features=(8, 8), dense_features=16)
NUM_BOXES, CHANNELS = 7, 4
_rgn_init = jax.jit(RGN.init)  # compiled once: always called on the same shape
_rgn_apply = jax.jit(RGN.apply)


def _rgn_params(seed):
  return _rgn_init(jax.random.PRNGKey(seed),
                   jnp.zeros((1, NUM_BOXES, 7, 7, CHANNELS), jnp.float32))


def test_rgn_shape_and_gradient_reaches_every_parameter():
  k, m, c = 3, NUM_BOXES, CHANNELS
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.normal(size=(2, k, m, 7, 7, c)), jnp.float32)
  params = _rgn_params(1)
  logits = _rgn_apply(params, feats)
  assert logits.shape == (2, k, m)
  cands = jnp.asarray(rng.normal(size=(2, k, m, 5, 5, 3)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(2, k, 5, 5, 3)), jnp.float32)

  def loss(p):
    w = gumbel_softmax_straight_through(RGN.apply(p, feats), jax.random.PRNGKey(4))
    return jnp.sum(select_candidates(cands, w) * probe)

  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert len(leaves) == 8  # 2 conv + 2 dense, kernel and bias each
  for path, leaf in leaves:
    assert float(jnp.abs(leaf).max()) > 0, f"zero gradient at {path}"


def _np_conv_same(x, kernel, bias):
  """Cross-correlation with zero 'SAME' padding; x (B, H, W, C)."""
  kh, kw = kernel.shape[:2]
  pad = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[3],))
  for di in range(kh):
    for dj in range(kw):
      patch = pad[:, di:di + x.shape[1], dj:dj + x.shape[2]]
      out += patch @ kernel[di, dj]
  return out + bias


def test_rgn_forward_against_numpy():
  """Boxes concatenated along channels as [box 0 | box 1 | ...], then the layers."""
  rng = np.random.default_rng(5)
  feats = rng.normal(size=(2, NUM_BOXES, 7, 7, CHANNELS)).astype(np.float32)
  params = _rgn_params(0)
  got = np.asarray(_rgn_apply(params, jnp.asarray(feats)))
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
  x = np.concatenate([feats[:, m] for m in range(NUM_BOXES)],
                     axis=-1).astype(np.float64)
  for name in ("conv_0", "conv_1"):
    x = np.maximum(_np_conv_same(x, p[name]["kernel"], p[name]["bias"]), 0)
  x = x.reshape(x.shape[0], -1)
  x = np.maximum(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"], 0)
  want = x @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- learning test ---------------------------------------------------------
SIZES = (3, 5, 7, 9, 11, 13, 15)
ANCHORS = ((4, 4), (12, 12))
BEST = (4, 1)  # size 11 for anchor 0, size 5 for anchor 1
STEPS = 400


def _np_square_mask(r, c, s, grid=16):
  before = (s - 1) // 2
  mask = np.zeros((grid, grid, 1), np.float32)
  mask[max(r - before, 0):r - before + s, max(c - before, 0):c - before + s] = 1
  return mask


def _learning_setup():
  # "Edits": each candidate paints its box; the loss compares the edit with a
  # target that paints exactly the best box of each anchor, so the loss of a
  # proposal depends on its size, differently for each anchor.
  cands = np.stack([np.stack([_np_square_mask(r, c, s) for s in SIZES])
                    for r, c in ANCHORS])  # (K, M, 16, 16, 1)
  target = np.maximum(cands[0, BEST[0]], cands[1, BEST[1]])

  def loss_fn(x):  # any leading dims -> per-item loss
    return jnp.mean((x - target) ** 2, axis=(-3, -2, -1))

  table = np.asarray(loss_fn(jnp.asarray(cands)))
  assert tuple(table.argmin(-1)) == BEST  # the setup really has these optima
  feats = np.random.default_rng(7).normal(
      size=(len(ANCHORS), len(SIZES), 7, 7, CHANNELS))
  return jnp.asarray(cands), loss_fn, jnp.asarray(feats, jnp.float32)


@pytest.mark.parametrize("estimator", ["straight_through", "expected"])
def test_rgn_learns_best_size_per_anchor(estimator):
  cands, loss_fn, feats = _learning_setup()
  # Init seed 3 picks the wrong size for BOTH anchors. With 400 steps the
  # straight-through run settles on BEST after ~100 steps (64-253 over ten
  # noise keys), the expected-loss run after 32.
  params = _rgn_params(3)
  apply = RGN.apply
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def objective(p, rng):
    losses, _ = selection_loss(loss_fn, cands, apply(p, feats), rng,
                               estimator=estimator, tau=1.0)
    return losses.mean()

  def step(carry, rng):
    p, s = carry
    grads = jax.grad(objective)(p, rng)
    updates, s = opt.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), optax.tree.norm(grads)

  @jax.jit
  def train(p, s):
    keys = jax.random.split(jax.random.PRNGKey(1), STEPS)
    return jax.lax.scan(step, (p, s), keys)

  initial_pick = np.asarray(_rgn_apply(params, feats).argmax(-1))
  assert np.all(initial_pick != np.asarray(BEST)), "seed gives a right pick"
  (params, _), grad_norms = train(params, opt_state)
  assert float(grad_norms[0]) > 0, "zero gradient reaches the RGN"
  final_pick = np.asarray(_rgn_apply(params, feats).argmax(-1))
  initially_wrong = initial_pick != np.asarray(BEST)
  assert np.all(final_pick[initially_wrong] != initial_pick[initially_wrong])
  np.testing.assert_array_equal(final_pick, BEST)
