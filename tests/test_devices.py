"""Editing over several devices: 8 simulated CPU devices give one device's edits.

The comparisons run in subprocesses (`python -m tests.test_devices GROUP`): XLA_FLAGS
must make the 8 CPU devices before JAX starts. Each prints one JSON line of measured
differences that the tests below judge; the two groups run side by side (compiling
is most of their time, on one core each).
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PIXEL_TOL = 5e-5   # edits of other batch shapes: float32 sums in another order
SCORE_TOL = 1e-5


def _examples(tmp: pathlib.Path, count: int):
  import numpy as np
  from PIL import Image
  from lr_jax.files import manifest
  rng = np.random.default_rng(0)
  examples = []
  for i in range(count):   # two sizes: one compiled inference serves both
    path = tmp / f"photo{i}.png"
    Image.fromarray((rng.random((64 + 12 * i, 80, 3)) * 255).astype(np.uint8)).save(path)
    examples.append(manifest.Example(path, "a lion", "a cat", None))
  return examples


def _differences(one, many) -> dict:
  """How far the outcomes on several devices are from those on one."""
  import numpy as np
  diff = lambda a, b: float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
  pairs = [(a.outputs, b.outputs) for a, b in zip(one, many)]
  return {
      "candidates": [int(a.boxes.shape[0]) for a, _ in pairs],
      "boxes_equal": all(np.array_equal(a.boxes, b.boxes) for a, b in pairs),
      "masked_equal": all(np.array_equal(a.edit.masked_boxes, b.edit.masked_boxes)
                          for a, b in pairs),
      "best_equal": all(int(a.best) == int(b.best) for a, b in pairs),
      "pixels": max(diff(a.edit.images, b.edit.images) for a, b in pairs),
      "masks": max(diff(a.edit.pixel_mask, b.edit.pixel_mask) for a, b in pairs),
      "scores": max(diff(a.scores.score, b.scores.score) for a, b in pairs),
      "edits_differ": all(diff(a.edit.images[0], a.edit.images[-1]) > 0 for a, _ in pairs),
  }


def _cases(group: str):
  """(name, config, strategy, refine steps, cap, images) of a group."""
  from configs import amused_tiny, stable_diffusion_tiny, tiny
  def config(module, anchors, sizes, **editor):
    c = module.get_config()
    c.region.num_anchors, c.region.sizes, c.region.window = anchors, sizes, "off"
    c.editor.update(editor)
    return c
  if group == "maskgit":   # K = 3, M = 3: 9 search candidates and 3 RGN ones on 8 devices
    c = config(tiny, 3, (1, 2, 3))
    # search: 2 chunks of 1 box on each device; refine: 2 steps (K x M edits each), then
    # the RGN's 3 boxes, the strategy "rgn" on refined parameters; "box": the search's
    # boxes given on 8 devices edit as the search on one (same keys, box by box).
    return [("search", c, "search", 0, 1, 1), ("refine", c, "refine", 2, 0, 2)]
  sizes = tuple(range(1, 8))   # K x M = 3 x 7 = 21 search candidates
  return [("amused_search", config(amused_tiny, 3, sizes, num_steps=2), "search", 0, 0, 1),
          ("sd_search", config(stable_diffusion_tiny, 3, sizes, num_steps=1), "search",
           0, 2, 1)]   # SD also in chunks: 2 chunks of 2 boxes on each device


def spread_images_and_boxes() -> dict:
  """`map_candidates` on 8 devices, 4 images x 5 boxes capped at 2 (a 4 x 2 mesh, the
  boxes padded to 8, 2 chunks of 2 on each device): each box's value and random draw
  against the same function on the whole batch at once."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lr_jax.method import sharding
  from lr_jax.method import step as step_lib
  def per_box(shared, local, boxes, keys):   # (B', C, ...) -> (B', C)
    draws = jax.vmap(jax.vmap(lambda k: jax.random.uniform(jax.random.wrap_key_data(k))))(keys)
    return draws + boxes.sum(-1) * shared + local[:, None]
  boxes = np.arange(4 * 5 * 4, dtype=np.float32).reshape(4, 5, 4)
  offsets = np.arange(4, dtype=np.float32) * 1000
  keys = lambda rng: step_lib.candidate_keys(rng, 4, 5)
  whole = jax.jit(lambda b, o, r: per_box(2.0, o, b, keys(r)))(boxes, offsets,
                                                                jax.random.PRNGKey(5))
  split = sharding.candidate_split(2)
  lay = split.layout(4, 5)
  spread = jax.jit(lambda b, o, r: sharding.map_candidates(per_box, split, 2.0, o, b, keys(r)),
                   in_shardings=split.replicated(), out_shardings=split.replicated())
  parts = spread(boxes, offsets, jax.random.PRNGKey(5))
  return {"equal": bool(np.array_equal(np.asarray(whole), np.asarray(parts))),
          "shape": list(parts.shape),
          "layout": [lay.image_shards, lay.box_shards, lay.padded, lay.chunks, lay.per_chunk]}


def compare(group: str) -> dict:
  """Each case of `group` edited on one device and on all eight; their differences."""
  import jax
  from lr_jax import inference
  from lr_jax import run_settings
  from lr_jax.method import sharding
  from lr_jax.method import step as step_lib
  from lr_jax.models import build_models
  assert jax.device_count() == 8, jax.devices()
  tmp = pathlib.Path(tempfile.mkdtemp())
  examples = _examples(tmp, 2)
  built, results = {}, {}
  if group == "free_text":
    results["spread"] = spread_images_and_boxes()
  for name, c, strategy, refine_steps, cap, count in _cases(group):
    key = c.editor.name
    built.setdefault(key, build_models(c))
    b = built[key]
    method = run_settings.parse(c).method
    rgn = step_lib.init_train_state(b.models, method, jax.random.PRNGKey(1)).params
    edit = lambda devices: inference.edit_examples(
        b, rgn, examples[:count], c, seed=3, refine_steps=refine_steps, progress=False,
        strategy=strategy, devices=devices)
    one = edit(jax.devices()[:1])
    c.infer.max_edits_per_device = cap
    many = edit(None)
    c.infer.max_edits_per_device = 0
    results[name] = _differences(one, many)
    if strategy == "search" and group == "maskgit":   # the search's boxes given: "box"
      given = [[tuple(map(float, box)) for box in o.outputs.boxes] for o in one]
      boxed = inference.edit_examples(b, rgn, examples[:count], c, seed=3, progress=False,
                                      strategy="box", boxes=given, devices=None)
      results["box"] = _differences(one, boxed)
    split = sharding.candidate_split(cap)
    results[name]["compiles"] = step_lib.make_infer(
        b.models, method, "rgn" if strategy == "refine" else strategy, split)._cache_size()
    if refine_steps:
      results[name]["step_compiles"] = step_lib.make_train_step(
          b.models, method, donate=False, split=split)._cache_size()
  return results


@pytest.fixture(scope="module")
def measured() -> dict:
  # Cheaper code generation (a quarter less compile time): the same for 1 and 8 devices.
  flags = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
           "--xla_llvm_disable_expensive_passes=true")
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  runs = []
  for group in ("maskgit", "free_text"):
    log = tempfile.TemporaryFile("w+")   # a file, not a pipe: neither run waits on a reader
    runs.append((log, subprocess.Popen([sys.executable, "-m", "tests.test_devices", group],
                                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log,
                                       text=True)))
  out = {}
  for log, proc in runs:
    stdout, _ = proc.communicate(timeout=600)
    log.seek(0)
    assert proc.returncode == 0, log.read()[-4000:]
    out.update(json.loads(stdout.splitlines()[-1]))
  return out


@pytest.mark.parametrize("case", ["search", "refine", "box", "amused_search", "sd_search"])
def test_eight_devices_edit_as_one(measured, case):
  m = measured[case]
  assert m["boxes_equal"] and m["masked_equal"] and m["best_equal"], m
  assert m["pixels"] <= PIXEL_TOL and m["masks"] <= PIXEL_TOL, m
  assert m["scores"] <= SCORE_TOL, m
  assert m["edits_differ"], m   # the comparison is between real, different edits
  if case != "box":
    assert m["compiles"] == 1, m   # photos of other sizes share one compiled inference


def test_candidate_counts_that_do_not_divide_the_devices(measured):
  assert measured["search"]["candidates"] == [9]     # 9 = 3 x 3 over 8 devices
  assert measured["refine"]["candidates"] == [3, 3]   # K = 3
  assert measured["amused_search"]["candidates"] == [21]   # 3 x 7
  assert measured["refine"]["step_compiles"] == 1   # 2 photos x 2 steps, one compile


def test_images_and_boxes_split_keep_each_box_and_key(measured):
  assert measured["spread"] == {"equal": True, "shape": [4, 5], "layout": [4, 2, 8, 2, 2]}


def test_layout_pads_to_whole_chunks():
  from lr_jax.method import sharding
  def layout(batch, boxes, cap=0):   # on 8 devices
    lay = sharding.candidate_layout(batch, boxes, 8, cap)
    return (lay.image_shards, lay.box_shards), lay.padded, lay.chunks, lay.per_chunk
  assert layout(1, 21) == ((1, 8), 24, 1, 3)
  assert layout(1, 21, cap=2) == ((1, 8), 32, 2, 2)
  assert layout(1, 21, cap=1) == ((1, 8), 24, 3, 1)
  assert layout(1, 3) == ((1, 8), 8, 1, 1)    # K = 3 RGN boxes: 5 pads
  assert layout(8, 4) == ((8, 1), 4, 1, 4)    # 8 images: one per device, no pads
  assert layout(2, 28, cap=8) == ((2, 4), 28, 1, 7)
  assert layout(2, 28, cap=6) == ((2, 4), 32, 2, 4)   # 7 boxes a device: 2 chunks of 4
  assert layout(16, 3, cap=4) == ((8, 1), 4, 2, 2)    # 2 images a device: 2 boxes each
  assert layout(16, 3, cap=1) == ((8, 1), 3, 3, 1)    # under one box per image: one
  for empty in ((0, 21), (1, 0)):   # nothing to lay out is a clear error, not a division
    with pytest.raises(ValueError, match="at least one image, box and device"):
      layout(*empty)


def test_bad_cap_is_a_settings_error():
  from configs import tiny
  from lr_jax import run_settings
  from lr_jax.method import settings
  c = tiny.get_config()
  for bad in (-1, 2**20):
    c.infer.max_edits_per_device = bad
    with pytest.raises(settings.SettingsError, match="infer.max_edits_per_device"):
      run_settings.parse(c)
  for bad in (2.5, True):   # a ConfigDict refuses these itself; the settings too
    with pytest.raises(settings.SettingsError, match="an integer >= 0"):
      settings.InferSettings(max_edits_per_device=bad)


if __name__ == "__main__":
  print(json.dumps(compare(sys.argv[1])))
