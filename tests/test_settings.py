"""Typed settings (lr_jax.method.settings): built once from a config, checked up front, and the
key lists of the workdir guards derived from them."""
import dataclasses

import pytest

from configs import maskgit_imagenet256, tiny
from lr_jax import checkpointing
from lr_jax import run_settings
from lr_jax.method import settings
from lr_jax.run_settings import parse as check_config


def test_defaults_are_the_papers_setup_and_hashable():
  m = settings.method(maskgit_imagenet256.get_config())
  assert m.region.num_anchors == 4 and m.region.sizes == (3, 5, 7, 9, 11, 13, 15)
  assert m.region.num_boxes == 7
  assert dict(m.loss.weights) == {"clip": 1.0, "dir": 1.0, "structure": 1.0}
  assert (m.score.alpha, m.score.beta, m.score.top_t2i) == (2.0, 1.0, 0)
  assert m.optim.learning_rate == 3e-3
  assert hash(m) == hash(settings.method(maskgit_imagenet256.get_config()))
  with pytest.raises(dataclasses.FrozenInstanceError):
    m.region.num_anchors = 3


@pytest.mark.parametrize("key,value,needle", [
    ("region.num_anchors", 0, "region.num_anchors must be an integer >= 1, got 0"),
    ("region.num_anchors", -2, "region.num_anchors"),
    ("region.num_anchors", 17, "at most 16"),            # the tiny 4x4 grid
    ("region.sizes", (1, 0), "region.sizes"),
    ("region.sizes", (1, 1), "free of repeats"),
    ("region.sizes", (2, 5), "at most 4 tokens"),        # larger than the grid
    ("region.roi_size", 0, "region.roi_size"),
    ("train.batch_size", -1, "train.batch_size"),
    ("train.checkpoint_every", 0, "train.checkpoint_every"),
    ("train.log_every", 0, "train.log_every"),
    ("train.max_to_keep", 0, "train.max_to_keep"),
    ("train.max_steps", -3, "train.max_steps"),
    ("selection.tau", 0.0, "selection.tau must be a finite number > 0"),
    ("selection.estimator", "reinforce", "selection.estimator"),
    ("optim.learning_rate", float("nan"), "optim.learning_rate"),
    ("optim.b2", 1.0, "optim.b2 must be in [0, 1)"),
    ("loss.clip", -1.0, "loss.clip"),
    ("score.top_t2i", -1, "score.top_t2i"),
    ("models", "huge", "config models must be one of"),
    ("editor.num_iter", 0, "config editor:"),
    ("editor.model", "imagenet1024", "config editor.model"),
    # Numbers at their limits: what the code does with them, not only "finite".
    ("region.roi_size", 65, "region.roi_size must be at most 64"),
    ("region.sampling_ratio", 10**6, "region.sampling_ratio must be at most 64"),
    ("rgn.conv_features", (256, 10**6), "rgn.conv_features"),
    ("loss.num_views", 10**4, "loss.num_views must be at most 256"),
    ("train.epochs", 2**40, "int32"),
    ("editor.num_iter", 2**70, "config editor.num_iter must be an integer in"),   # editor sections
    ("score.alpha", 1e39, "float32"),
    ("selection.tau", 1e-40, "float32"),
    ("optim.eps", 1e-45, "float32"),
    ("optim.b2", 0.99999999999, "also in float32"),
])
def test_out_of_range_values_are_one_clear_error(key, value, needle):
  c = tiny.get_config()
  if "." in key:
    section, field = key.split(".")
    c[section][field] = value
  else:
    c[key] = value
  with pytest.raises(settings.SettingsError) as e:
    check_config(c)
  assert needle in str(e.value)
  assert "\n" not in str(e.value)


def test_unknown_loss_term_is_an_error():
  c = tiny.get_config()
  c.loss.lpips = 1.0
  with pytest.raises(settings.SettingsError, match="no term 'lpips'"):
    settings.method(c)


def test_guard_keys_are_derived():
  c = tiny.get_config()
  assert checkpointing.rgn_keys(run_settings.parse(c)) == (
      "models", "editor.name", "region.sizes", "region.roi_size", "region.sampling_ratio",
      "region.canvas", "rgn.conv_features", "rgn.dense_features", "editor.model")
  assert checkpointing.resumable_keys(run_settings.parse(c)) == (
      "region.window", "region.window_scale", "train.max_steps", "train.log_every", "train.checkpoint_every", "train.max_to_keep",
      "infer.refine_steps", "infer.max_edits_per_device", "editor.cache_dir", "editor.dtype",
      "editor.cpu_matmul")


def test_score_weights_keep_s_finite_in_float32():
  c = tiny.get_config()
  c.score.alpha, c.score.beta = 3e38, -2e38   # each fits float32; S may not
  with pytest.raises(settings.SettingsError, match=r"\|alpha\| \+ \|beta\|"):
    check_config(c)


def test_window_scale_of_any_finite_size_is_the_whole_photo():
  from lr_jax.method import window as window_lib
  c = tiny.get_config()
  c.region.window_scale = 1e308
  check_config(c)   # host side, float64: allowed
  box, photo = (10, 20, 30, 40), (300, 451)
  assert window_lib.window_around(box, photo, 1e308, 64) == (0, 0, 300, 451)
  assert window_lib.window_around(box, photo, 1e308, 64) == window_lib.window_around(
      box, photo, 1000.0, 64)
  assert window_lib.window_around(box, photo, 2.0, 1) == (0, 0, 80, 80)


def test_seeds_of_any_size_are_their_own_key():
  import jax
  import numpy as np
  from lr_common import seeds
  data = lambda s: tuple(np.asarray(jax.random.key_data(seeds.prng_key(s))).tolist())
  for s in (0, 1, 2**32 - 1):   # the keys of every earlier run
    assert data(s) == tuple(np.asarray(jax.random.key_data(jax.random.PRNGKey(s))).tolist())
  given = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, -1, -2**32, 2**63, 2**64, -2**64, 10**40]
  assert len({data(s) for s in given}) == len(given)   # no two seeds share a key
  assert seeds.describe(7) == "PRNGKey(7)" and "prng_key(-1)" in seeds.describe(-1)
  assert (seeds.numpy_rng(5, 3).permutation(50) == np.random.default_rng([5, 3]).permutation(
      50)).all()   # training orders of earlier runs
  orders = {tuple(seeds.numpy_rng(s, 0).permutation(50)) for s in (-1, 2**32 - 1, 2**64, 0)}
  assert len(orders) == 4
  with pytest.raises(seeds.SeedError, match="--seed must be an integer"):
    seeds.check_seed(1.5, "--seed")
