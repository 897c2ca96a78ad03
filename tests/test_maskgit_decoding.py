"""MaskGIT parallel decoding against the official code's outputs (tiny fixture)."""
import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgit import decoding
from maskgit.configs import get_config
from maskgit.transformer import Transformer

CODEBOOK = 64


@pytest.fixture(scope="module")
def official(fixtures_dir):
  directory = fixtures_dir / "maskgit_official_tiny"
  outputs = dict(np.load(directory / "outputs_tiny.npz"))
  params = flax.serialization.msgpack_restore(
      (directory / "transformer_tiny.msgpack").read_bytes())["params"]
  model = Transformer(get_config("tiny").transformer)
  logits_fn = lambda ids: model.apply({"params": params}, ids, deterministic=True)
  return outputs, logits_fn


@functools.lru_cache(maxsize=None)
def _jitted(logits_fn, start_iter, num_iter):
  return jax.jit(lambda x, r: decoding.decode(
      x, r, logits_fn, num_iter=num_iter, start_iter=start_iter,
      choice_temperature=4.5, codebook_size=CODEBOOK))


def _decode(inputs, rng, logits_fn, start_iter, num_iter):
  return np.asarray(_jitted(logits_fn, start_iter, num_iter)(inputs, rng))


@pytest.mark.parametrize("start_iter,num_iter,name", [
    (0, 8, "decoded_start0_iters8"), (2, 12, "decoded_start2_iters12")])
def test_matches_official_decoding(official, start_iter, num_iter, name):
  outputs, logits_fn = official
  got = _decode(outputs["edit_input"], jax.random.PRNGKey(3), logits_fn,
                start_iter, num_iter)
  np.testing.assert_array_equal(got, outputs[name])


def test_per_row_keys_equal_batch_of_one(official):
  outputs, logits_fn = official
  inputs = outputs["edit_input"]
  keys = jax.random.split(jax.random.PRNGKey(7), inputs.shape[0])
  batched = _decode(inputs, keys, logits_fn, 2, 12)
  for row in range(inputs.shape[0]):
    alone = _decode(inputs[row:row + 1], keys[row], logits_fn, 2, 12)
    np.testing.assert_array_equal(batched[row:row + 1], alone)


def test_known_tokens_kept_and_all_masks_filled(official):
  outputs, logits_fn = official
  inputs = outputs["edit_input"]
  got = _decode(inputs, jax.random.PRNGKey(0), logits_fn, 2, 12)
  known = inputs != -1
  np.testing.assert_array_equal(got[known], inputs[known])
  assert np.all((got[~known] >= 0) & (got[~known] < CODEBOOK))


def test_start_iter_at_end_returns_input(official):
  outputs, logits_fn = official
  got = decoding.decode(jnp.asarray(outputs["edit_input"]), jax.random.PRNGKey(0),
                        logits_fn, num_iter=4, start_iter=4, codebook_size=CODEBOOK)
  np.testing.assert_array_equal(got, outputs["edit_input"])


def test_schedules():
  ratios = np.array([0.25, 0.5, 1.0], np.float32)
  np.testing.assert_allclose(decoding.mask_ratio(ratios, 256., "cosine"),
                             np.clip(np.cos(math.pi / 2 * ratios), 1e-6, 1), rtol=1e-6)
  np.testing.assert_allclose(decoding.mask_ratio(ratios, 256., "linear"),
                             np.clip(1 - ratios, 1e-6, 1), rtol=1e-6)
  np.testing.assert_allclose(decoding.mask_ratio(ratios, 256., "square"),
                             np.clip(1 - ratios**2, 1e-6, 1), rtol=1e-6)
  with pytest.raises(ValueError, match="schedule"):
    decoding.mask_ratio(ratios, 256., "bogus")


def test_bad_arguments(official):
  outputs, logits_fn = official
  inputs = jnp.asarray(outputs["edit_input"])
  with pytest.raises(ValueError, match="keys"):
    decoding.decode(inputs, jax.random.split(jax.random.PRNGKey(0), 2), logits_fn,
                    num_iter=4)
  with pytest.raises(ValueError, match="batch"):
    decoding.decode(inputs[0], jax.random.PRNGKey(0), logits_fn, num_iter=4)


def test_unrolled_loop_matches_official(official):
  outputs, logits_fn = official
  got = jax.jit(lambda x, r: decoding.decode(
      x, r, logits_fn, num_iter=12, start_iter=2, choice_temperature=4.5,
      codebook_size=CODEBOOK, unroll=True))(outputs["edit_input"], jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(got), outputs["decoded_start2_iters12"])
