"""The jitted steps (lr_jax.method.step) on the tiny models: regions, the objective's two
estimators and augmented views, inference and its final pick."""
import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.method import anchors as anchors_lib
from lr_jax import dataset
from lr_jax.files import manifest as manifest_lib
from lr_jax import samples
from lr_jax.method import settings
from lr_jax.method import step as step_lib
from lr_jax.models import build_models
from tests.tiny_setup import tiny_config


@pytest.fixture(scope="module")
def built():
  return build_models(tiny_config())


@pytest.fixture(scope="module")
def batch(built, tmp_path_factory):
  d = tmp_path_factory.mktemp("samples")
  examples = manifest_lib.read_manifest(samples.write_samples(d))
  return dataset.prepare(built, examples[:1], dataset.load_images(examples[:1])).batch(np.asarray([0]))


@pytest.mark.parametrize("estimator,views", [("straight_through", 2), ("expected", 0)])
def test_estimators_and_augmented_views_give_rgn_gradients(built, batch, estimator, views):
  method = settings.method(tiny_config(**{"selection.estimator": estimator,
                                          "loss.num_views": views}))
  state = step_lib.init_train_state(built.models, method, jax.random.PRNGKey(0))
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, r: step_lib.loss_fn(p, built.models, built.frozen, batch, r, method),
      has_aux=True))
  (loss, metrics), grads = grad_fn(state.params, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads)) > 0
  if views:
    # Crops change the guidance term but not the structure term.
    plain = settings.method(tiny_config(**{"selection.estimator": estimator}))
    (_, m0), _ = jax.value_and_grad(
        lambda p, r: step_lib.loss_fn(p, built.models, built.frozen, batch, r, plain),
        has_aux=True)(state.params, jax.random.PRNGKey(1))
    assert float(metrics["loss_clip"]) != float(m0["loss_clip"])
    np.testing.assert_allclose(float(metrics["loss_structure"]),
                               float(m0["loss_structure"]), rtol=1e-6)


def test_expected_estimator_is_the_softmax_weighted_loss_of_every_candidate(built, batch):
  """The expected loss equals sum_j softmax_j L_j, with each L_j recomputed from the
  edit of that one proposal and the tested loss terms."""
  method = settings.method(tiny_config(**{"selection.estimator": "expected"}))
  models, frozen = built.models, built.frozen
  state = step_lib.init_train_state(models, method, jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(5)
  loss, _ = jax.jit(functools.partial(step_lib.loss_fn, models=models, frozen=frozen,
                                      batch=batch, method=method))(state.params, rng=rng)
  rng_edit, _, rng_views = jax.random.split(rng, 3)
  regions = step_lib.find_regions(models, frozen, batch["images"], method.region)
  k, m = regions.boxes.shape[1:3]
  edits = step_lib.edit_boxes(models, frozen, batch["images"],
                              regions.boxes.reshape(1, k * m, 4), batch["cond"],
                              rng_edit).images.reshape((1, k, m) + (64, 64, 3))
  per = np.asarray(step_lib.edit_losses(models, frozen, batch, edits, rng_views,
                                        method.loss)[0])                 # (1, K, M)
  logits = np.asarray(step_lib.rgn_network(method).apply({"params": state.params},
                                                        regions.pooled), np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(float(loss), float((probs * per).sum(-1).mean()), rtol=1e-5)


def test_infer_picks_by_the_score_setting(built, batch):
  models, frozen = built.models, built.frozen
  plain = settings.method(tiny_config())
  params = step_lib.init_train_state(models, plain, jax.random.PRNGKey(0)).params
  out = step_lib.make_infer(models, plain)(params, frozen, batch, jax.random.PRNGKey(2))
  s = np.asarray(out.scores.score[0])
  assert int(out.best[0]) == int(np.argmax(s))
  np.testing.assert_allclose(s, 2 * np.asarray(out.scores.t2i[0]) + np.asarray(out.scores.i2i[0]),
                             rtol=1e-6)
  by_t2i = settings.method(tiny_config(**{"score.top_t2i": 1}))
  out1 = step_lib.make_infer(models, by_t2i)(params, frozen, batch, jax.random.PRNGKey(2))
  assert int(out1.best[0]) == int(np.argmax(np.asarray(out1.scores.t2i[0])))
  # The K candidates are the editor's edits of the chosen boxes.
  chosen = np.asarray(out.chosen[0])
  np.testing.assert_array_equal(np.asarray(out.boxes[0]),
                                np.asarray(out.candidates.proposals[0])[np.arange(len(chosen)), chosen])


def test_dino_grid_must_be_a_multiple_of_the_token_grid():
  fake = SimpleNamespace(dino=None, editor=SimpleNamespace(box_grid=4))
  with pytest.raises(ValueError, match=r"DINO patch grid \(6x6\).*token grid \(4x4\)"):
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(step_lib.dino_lib, "dino_features",
                 lambda model, params, images: (jnp.zeros((1, 6, 6, 8)), jnp.zeros((1, 6, 6))))
      step_lib.find_regions(fake, {"dino": None}, jnp.zeros((1, 64, 64, 3)),
                            settings.method(tiny_config()).region)


def test_search_edits_every_proposal_and_keeps_the_best_score(built, batch):
  models, frozen = built.models, built.frozen
  method = settings.method(tiny_config())
  params = step_lib.init_train_state(models, method, jax.random.PRNGKey(0)).params
  out = step_lib.make_infer(models, method, "search")(params, frozen, batch,
                                                      jax.random.PRNGKey(2))
  regions = step_lib.find_regions(models, frozen, batch["images"], method.region)
  k, m = regions.boxes.shape[1:3]
  np.testing.assert_array_equal(np.asarray(out.boxes[0]),
                                np.asarray(regions.boxes[0]).reshape(k * m, 4))
  s = np.asarray(out.scores.score[0])
  assert s.shape == (k * m,) and int(out.best[0]) == int(np.argmax(s))
  # Each candidate is the edit of its own box (tiny config: boxes are not grown).
  np.testing.assert_array_equal(np.asarray(out.edit.masked_boxes), np.asarray(out.boxes))
  assert out.candidates.anchors.shape == (1, k * m, 2) and out.chosen.shape == (1, k * m)


@pytest.mark.parametrize("strategy", ["random", "dino_random"])
def test_baseline_boxes_follow_the_papers_definition(strategy):
  """Sec. 4.4: centres uniform over the image (or at the DINO anchors), height and width
  uniform in [0, H] and [0, W], clamped to the image."""
  from scipy import stats
  grid, shape = 16, (400, 4)
  anchors = jax.random.randint(jax.random.PRNGKey(1), shape + (2,), 0, grid)
  centres, sizes, boxes = anchors_lib.random_boxes(
      jax.random.PRNGKey(0), shape, grid, anchors if strategy == "dino_random" else None)
  centres, sizes, boxes = (np.asarray(x) for x in (centres, sizes, boxes))
  if strategy == "dino_random":
    np.testing.assert_array_equal(centres, np.asarray(anchors) + 0.5)
  else:
    for axis in range(2):
      assert stats.kstest(centres[..., axis].ravel() / grid, "uniform").pvalue > 1e-3
  for axis in range(2):
    assert stats.kstest(sizes[..., axis].ravel() / grid, "uniform").pvalue > 1e-3
  top_left, extent = boxes[..., :2], boxes[..., 2:]
  assert (extent >= 1).all() and (top_left >= 0).all() and (top_left + extent <= grid).all()
  # The whole-token box holds the drawn one, clipped to the grid, and its centre.
  lo = np.clip(centres - sizes / 2, 0, grid)
  hi = np.clip(centres + sizes / 2, 0, grid)
  assert (top_left <= lo + 1e-6).all() and (top_left + extent >= hi - 1e-6).all()
  assert ((top_left <= centres) & (centres <= top_left + extent)).all()
  # Unclamped boxes are as large as drawn, up to the rounding outward.
  inside = ((centres - sizes / 2) >= 0).all(-1) & ((centres + sizes / 2) <= grid).all(-1)
  assert inside.sum() > 50
  assert (extent[inside] - sizes[inside] <= 2 + 1e-6).all()
  assert (extent[inside] >= sizes[inside] - 1e-6).all()


def test_baselines_edit_their_random_boxes_reproducibly(built, batch):
  models, frozen = built.models, built.frozen
  method = settings.method(tiny_config())
  params = step_lib.init_train_state(models, method, jax.random.PRNGKey(0)).params
  run = step_lib.make_infer(models, method, "dino_random")
  a = run(params, frozen, batch, jax.random.PRNGKey(2))
  b = run(params, frozen, batch, jax.random.PRNGKey(2))
  c = run(params, frozen, batch, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(a.boxes), np.asarray(b.boxes))
  assert not np.array_equal(np.asarray(a.boxes), np.asarray(c.boxes))
  regions = step_lib.find_regions(models, frozen, batch["images"], method.region)
  np.testing.assert_array_equal(np.asarray(a.candidates.anchors), np.asarray(regions.anchors))
  assert int(a.best[0]) == int(np.argmax(np.asarray(a.scores.score[0])))
