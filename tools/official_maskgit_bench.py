r"""The official google-research/maskgit code vs lr_jax: box editing on the CPU, side by side.

  git clone https://github.com/google-research/maskgit /some/where/maskgit
  flock /tmp/lr_bench.lock python tools/official_maskgit_bench.py \
      --official_repo /some/where/maskgit [--ks 1,4] [--repeats 3]

At the full ImageNet-256 sizes (VQGAN tokenizer, 24-layer transformer) with random weights,
one process times, round-robin per K (boxes per call, one image, class 1):

  official f32     the official edit as its demo runs it: `create_latent_mask_and_input_
                   tokens_for_image_editing` per box (eager tokenizer, batch 1), the K
                   inputs in one call of `p_edit_samples()` (its pmap, one CPU device,
                   start_iter 2 of 12), `composite_outputs` per box. The row under it is
                   the `p_edit_samples` call alone (decoding and pixels, no encoding).
  lr_jax f32       `maskgit.editing.make_editor`, float32.
  lr_jax bf16 oneDNN  the same with `EditConfig(dtype="bfloat16", cpu_matmul="onednn")`
                   (skipped with a note where `lr_common.cpu_matmul` is not built).

Both sides run the same weights: the official modules' own random init, handed to lr_jax
through `maskgit.checkpoints.load_params` (written once as a msgpack file in the released
checkpoints' layout, to a temporary folder). Image, boxes, label and keys are shared too.
The official decoder draws one key for a whole batch, lr_jax one key per box, so token
agreement is measured with the official decoder run once per box (batch 1, that box's key,
untimed): the share of edited tokens equal to lr_jax float32 and bf16 is printed per K.

The official code is imported from --official_repo, never edited. Both projects name their
package `maskgit`, so the official one is imported while lr_jax's modules are set aside in
`sys.modules`, and set aside itself afterwards. Fixes applied at run time for this jax/flax:
  1. `tensorflow` (only its checkpoint reader is used, not here) is an empty stub module
     when it does not import.
  2. `jax.numpy.DeviceArray` (removed from jax; `parallel_decode.State` annotates with it)
     is set to `jax.Array`.
  3. `ImageNet_class_conditional_generator._load_checkpoints` is replaced: instead of
     reading ./checkpoints, it inits the official Transformer and VQVAE with their own
     initializers (VQVAE through its encode_to_indices and decode_from_indices).
Only ratios from one run mean much: the machine this was written on is shared.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pathlib
import statistics
import sys
import tempfile
import time
import types
from typing import Callable, Sequence

from absl import app
from absl import flags
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from lr_common import cpu_matmul
from lr_common.benchmarking import bench_boxes, round_robin
from lr_common.errors import UserError
from lr_jax import errors
from maskgit import checkpoints, configs, editing

FLAGS = flags.FLAGS
flags.DEFINE_string("official_repo", None, "A checkout of google-research/maskgit.")
flags.DEFINE_string("ks", "1,4", "Boxes per editing call, comma-separated.")
flags.DEFINE_integer("repeats", 3, "Timed rounds per K.")
flags.DEFINE_integer("seed", 0, "Seed of weights, image, boxes and keys.")

LABEL = 1
START_ITER, NUM_ITER = 2, 12   # the official p_edit_samples defaults (and EditConfig's)
OFFICIAL_FILES = ("maskgit/inference.py", "maskgit/libml/parallel_decode.py",
                  "maskgit/nets/maskgit_transformer.py", "maskgit/nets/vqgan_tokenizer.py",
                  "maskgit/configs/maskgit_class_cond_config.py")


class OfficialRepoError(UserError, ValueError):
  """--official_repo is not a checkout of google-research/maskgit."""


def check_official_repo(path: str | None) -> pathlib.Path:
  if not path:
    raise OfficialRepoError("--official_repo is required: a checkout of "
                            "https://github.com/google-research/maskgit")
  root = pathlib.Path(path).expanduser().resolve()
  missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
  if missing:
    raise OfficialRepoError(
        f"--official_repo {path} is not a checkout of google-research/maskgit: it lacks "
        f"{', '.join(missing)} (clone https://github.com/google-research/maskgit)")
  return root


def _is_maskgit(name: str) -> bool:
  return name == "maskgit" or name.startswith("maskgit.")


class _OfficialFinder(importlib.abc.MetaPathFinder):
  """Finds `maskgit` and `maskgit.*` under the official checkout only (its folders have no
  __init__.py, so a plain sys.path entry would lose to lr_jax's regular package)."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
    if not _is_maskgit(name):
      return None
    base = self.root.joinpath(*name.split("."))
    if base.is_dir():
      spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
      spec.submodule_search_locations = [str(base)]
      return spec
    source = base.with_suffix(".py")
    return importlib.util.spec_from_file_location(name, source) if source.is_file() else None


@contextlib.contextmanager
def _own_maskgit_set_aside(root: pathlib.Path):
  """While inside, `import maskgit...` reaches the official package under `root`; lr_jax's
  modules of that name come back afterwards (the official ones keep their references)."""
  ours = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_maskgit(name)}
  finder = _OfficialFinder(root)
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)
    for name in [name for name in sys.modules if _is_maskgit(name)]:
      del sys.modules[name]
    sys.modules.update(ours)


def _stub_tensorflow() -> None:
  """Fix 1: inference.py and utils.py import tensorflow.compat.v1 for a reader not used."""
  try:
    import tensorflow.compat.v1  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    top, compat, v1 = (types.ModuleType(n) for n in
                       ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1"))
    top.compat, compat.v1 = compat, v1
    sys.modules.update({"tensorflow": top, "tensorflow.compat": compat,
                        "tensorflow.compat.v1": v1})


def _random_variables(generator) -> None:
  """Fix 3: the official models' own random init instead of reading ./checkpoints."""
  cf = generator.maskgit_cf
  key = jax.random.PRNGKey(FLAGS.seed)
  tokens = jnp.zeros((1, generator.transformer_block_size), jnp.int32)
  generator.transformer_variables = jax.jit(
      lambda k: generator.transformer_model.init(k, tokens, deterministic=True))(
          jax.random.fold_in(key, 1))

  def through_both(module, images):   # every tokenizer parameter is touched
    return module.decode_from_indices(module.encode_to_indices(images))

  side = cf.image_size // cf.transformer.patch_size
  images = jnp.zeros((1, cf.image_size // side, cf.image_size // side, 3), jnp.float32)
  generator.tokenizer_variables = generator.tokenizer_model.init(
      jax.random.fold_in(key, 0), images, method=through_both)


def import_official(root: pathlib.Path) -> types.SimpleNamespace:
  """The official inference, parallel_decode and utils modules, imported from `root`."""
  _stub_tensorflow()
  if not hasattr(jnp, "DeviceArray"):
    jnp.DeviceArray = jax.Array   # fix 2
  with _own_maskgit_set_aside(root):
    try:
      # pylint: disable=import-outside-toplevel
      import maskgit.inference as inference
      import maskgit.libml.parallel_decode as parallel_decode
      import maskgit.utils as utils
      # pylint: enable=import-outside-toplevel
    except ImportError as e:
      raise OfficialRepoError(f"importing the official code from {root} failed: {e}") from e
  inference.ImageNet_class_conditional_generator._load_checkpoints = _random_variables
  return types.SimpleNamespace(inference=inference, parallel_decode=parallel_decode,
                               utils=utils)


def lr_jax_params(generator, config: configs.MaskGITConfig, folder: str):
  """The official variables read back by lr_jax's checkpoint reader (shape-checked)."""
  tok_shapes, tr_shapes = checkpoints.param_shapes(config)
  loaded = []
  for name, variables, shapes in (("tokenizer", generator.tokenizer_variables, tok_shapes),
                                  ("maskgit", generator.transformer_variables, tr_shapes)):
    path = pathlib.Path(folder) / f"{name}_imagenet{config.image_size}_random"
    path.write_bytes(flax.serialization.to_bytes({"params": variables["params"]}))
    loaded.append(checkpoints.load_params(str(path), shapes, verbose=False))
    path.unlink()
  return tuple(loaded)


def official_tokens_fn(official, generator) -> Callable:
  """Jitted (variables, (1, L) inputs, key) -> (1, h*w) tokens of the official decoder,
  called as the official generate_samples calls it (for the agreement check only)."""
  cf = generator.maskgit_cf

  def tokens(variables, inputs, key):
    logits_fn = lambda seq: generator.transformer_model.apply(
        variables, seq, deterministic=True)[..., :cf.vqvae.codebook_size]
    seqs = official.parallel_decode.decode(
        inputs, key, logits_fn, num_iter=NUM_ITER, start_iter=START_ITER,
        choice_temperature=cf.sample_choice_temperature,
        mask_token_id=cf.transformer.mask_token_id)
    return seqs[:, -1, 1:]

  return jax.jit(tokens)


def main(argv: Sequence[str]) -> None:
  with errors.cli(argv):
    root = check_official_repo(FLAGS.official_repo)
    try:
      ks = [int(v) for v in FLAGS.ks.split(",") if v.strip()]
    except ValueError:
      ks = []
    if not ks or min(ks) < 1 or FLAGS.repeats < 1:
      raise errors.UsageError(f"--ks needs positive integers and --repeats >= 1, got "
                              f"{FLAGS.ks!r} and {FLAGS.repeats}")
    official = import_official(root)
    run(official, ks, FLAGS.repeats)


def run(official, ks: Sequence[int], rounds: int) -> None:
  onednn, why = cpu_matmul.status()
  print(f"jax {jax.__version__}, flax {flax.__version__}; {jax.device_count()} "
        f"{jax.default_backend()} device(s); oneDNN: {why if onednn else 'unavailable: ' + why}",
        flush=True)
  config = configs.get_config("imagenet256")
  size, side = config.image_size, config.tokens_per_side
  start = time.perf_counter()
  generator = official.inference.ImageNet_class_conditional_generator(image_size=size)
  generator.maskgit_cf.eval_batch_size = 1     # one box per official input
  with tempfile.TemporaryDirectory(prefix="official_") as folder:
    tok, tr = lr_jax_params(generator, config, folder)
  tr16 = jax.block_until_ready(editing.cast_params(tr, jnp.bfloat16))
  print(f"official random init, read back by maskgit.checkpoints.load_params: "
        f"{time.perf_counter() - start:.0f} s", flush=True)

  p_edit = generator.p_edit_samples(start_iter=START_ITER, num_iterations=NUM_ITER)
  tokens_of = official_tokens_fn(official, generator)
  image = jax.random.uniform(jax.random.PRNGKey(FLAGS.seed + 1), (1, size, size, 3))
  image_np = np.asarray(image[0])
  labels = jnp.array([LABEL], jnp.int32)
  variants = {"lr_jax f32": (editing.EditConfig(), tr)}
  if onednn:
    variants["lr_jax bf16 oneDNN"] = (
        editing.EditConfig(dtype="bfloat16", cpu_matmul="onednn"), tr16)

  table = {}
  for k in ks:
    boxes = bench_boxes(k, side, FLAGS.seed + k)
    keys = editing.box_keys(jax.random.PRNGKey(FLAGS.seed + 2), 1, k)
    raw_keys = np.asarray(keys[0])
    bboxes = [official.utils.Bbox("_".join(str(v * config.tokenizer.downsample_factor)
                                           for v in box)) for box in boxes[0]]
    stage = {"encode": [], "p_edit": []}

    def official_edit(bboxes=bboxes, key=raw_keys[0], stage=stage):
      t0 = time.perf_counter()
      masks, inputs = zip(*(
          generator.create_latent_mask_and_input_tokens_for_image_editing(
              image_np, bbox, LABEL) for bbox in bboxes))
      batch = jax.block_until_ready(jnp.concatenate(inputs)[None])   # (1 device, K, L)
      t1 = time.perf_counter()
      results = np.asarray(p_edit(batch, key[None])).reshape(-1, size, size, 3)
      t2 = time.perf_counter()
      stage["encode"].append(t1 - t0)
      stage["p_edit"].append(t2 - t1)
      composites = [generator.composite_outputs(image_np, m, r[None])
                    for m, r in zip(masks, results)]
      return dict(raw=results, images=np.concatenate(composites), masks=np.stack(masks))

    calls = {"official f32": official_edit}
    for name, (edit, params) in variants.items():
      calls[name] = functools.partial(editing.make_editor(config, edit), tok, params,
                                      image, boxes, labels, keys)
    firsts, outputs = {}, {}
    for name, call in calls.items():
      t = time.perf_counter()
      outputs[name] = jax.block_until_ready(call())
      firsts[name] = time.perf_counter() - t
    for values in stage.values():
      values.clear()
    load = os.getloadavg()[0]
    medians = round_robin(calls, rounds)
    table[k] = {"official f32": medians.pop("official f32"),
                "  of which p_edit_samples": statistics.median(stage["p_edit"]), **medians}

    # Agreement: the official decoder per box (batch 1, that box's key) vs lr_jax's rows.
    mask = np.asarray(outputs["lr_jax f32"]["token_mask"])[0].reshape(k, -1)
    same_mask = bool((outputs["official f32"]["masks"].reshape(k, -1) == mask).all())
    ref = []
    for i, bbox in enumerate(bboxes):
      _, inputs = generator.create_latent_mask_and_input_tokens_for_image_editing(
          image_np, bbox, LABEL)
      ref.append(np.asarray(tokens_of(generator.transformer_variables, inputs, raw_keys[i]))[0])
    ref = np.stack(ref)
    print(f"K={k}: load {load:.1f}; first calls (s): " +
          ", ".join(f"{n} {s:.1f}" for n, s in firsts.items()), flush=True)
    print(f"K={k}: official box masks = lr_jax token masks: {same_mask}; edited tokens "
          f"({int(mask.sum())}) equal to official f32: " +
          ", ".join(f"{n} {(np.asarray(outputs[n]['tokens'])[0] == ref)[mask].mean():.4f}"
                    for n in variants), flush=True)
    if k == 1:   # the timed official call used the same key: compare its pixels too
      diff = np.abs(outputs["official f32"]["raw"] - np.asarray(outputs["lr_jax f32"]["raw"][0]))
      print(f"K=1: max |official - lr_jax f32| of the decoded pixels: {diff.max():.2e}",
            flush=True)

  print(f"== MaskGIT box editing, ImageNet-256 ({size} px, {side}x{side} tokens), random "
        f"weights shared, {rounds} rounds, medians; ms per edited image (x: official f32 "
        f"time / this)")
  print(f"{'variant':<26}" + "".join(f" {'K=' + str(k) + ' ms':>10} {'vs off.':>7}"
                                     for k in ks))
  for name in table[ks[0]]:
    print(f"{name:<26}" + "".join(
        f" {1e3 * table[k][name] / k:10.0f} {table[k]['official f32'] / table[k][name]:6.2f}x"
        for k in ks), flush=True)


if __name__ == "__main__":
  app.run(main)
