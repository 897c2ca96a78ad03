r"""bfloat16 on the CPU side by side: oneDNN (lr_common.cpu_matmul) vs XLA float32 and bf16.

  python -m lr_common.cpu_matmul.build      # once (needs g++ and oneDNN: libdnnl-dev)
  python tools/cpu_bf16_bench.py [--ks 1,4] [--repeats 3] [--config imagenet256]
  python tools/cpu_bf16_bench.py --matmul= --ks= --lr_jax_ks= --amused_ks=1,4   # aMUSEd only

1. One matmul (default 1028x768 @ 768x3072: a MaskGIT MLP layer at K=4), timed
   round-robin: oneDNN bf16, XLA float32, XLA bfloat16, and PyTorch bf16 when torch
   imports in this Python (optional; `--torch_python PATH` times it in that Python
   instead, not interleaved).
2. MaskGIT box editing at the config's full size with random weights, per K: float32,
   bfloat16 on XLA (`EditConfig(dtype="bfloat16", cpu_matmul="xla")`), and bfloat16 with
   the transformer's products on oneDNN (`cpu_matmul="onednn"`), again
   round-robin in one process. Reported: ms per edited image (median), the ratio to
   float32, and agreement with float32 on the same keys (share of identical edited
   tokens).
3. lr_jax's MaskGIT editor in float32 and with `editor.dtype=bfloat16` (oneDNN where
   built), round-robin, per K of `--lr_jax_ks`.
4. lr_jax's aMUSEd editor (aMUSEd-256 at full size, random weights), per K of
   `--amused_ks`: float32, bfloat16 with `editor.cpu_matmul=xla` and with
   `editor.cpu_matmul=onednn`, round-robin. Timed: `editor.decode_boxes` (text encoder,
   VQ encoding, the guided decoding steps: every transformer product; not the VQ
   decoding to pixels). Reported as in part 2.

An empty `--matmul`, `--ks`, `--lr_jax_ks` or `--amused_ks` skips that part.

The machine this was written on is shared, so only ratios from one run mean much.
"""
from __future__ import annotations

import functools
import subprocess
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from lr_common import cpu_matmul
from lr_common.benchmarking import bench_boxes, round_robin
from maskgit import checkpoints, configs, editing

FLAGS = flags.FLAGS
flags.DEFINE_string("matmul", "1028,768,3072", "M,K,N of the matmul; empty: skip it.")
flags.DEFINE_integer("matmul_repeats", 20, "Timed rounds of the matmul.")
flags.DEFINE_string("ks", "1,4", "Boxes per editing call; empty: skip the editing part.")
flags.DEFINE_integer("repeats", 3, "Timed rounds per K of the editing parts.")
flags.DEFINE_string("lr_jax_ks", "4", "Boxes per call of the lr_jax editor part; empty: skip.")
flags.DEFINE_string("amused_ks", "1,4", "Boxes per call of the aMUSEd part; empty: skip.")
flags.DEFINE_integer("amused_steps", None,
                     "Decoding steps of the aMUSEd part (default: configs/amused.py's).")
flags.DEFINE_string("config", "imagenet256", "MaskGIT config name.")
flags.DEFINE_integer("seed", 0, "Seed of weights, image, boxes and keys.")
flags.DEFINE_string("torch_python", None,
                    "A Python with torch for the PyTorch row when torch does not import here.")

TORCH_SNIPPET = """
import statistics, sys, time, torch
m, k, n, reps = map(int, sys.argv[1:5])
a = torch.randn(m, k).to(torch.bfloat16); b = torch.randn(k, n).to(torch.bfloat16)
a @ b
times = []
for _ in range(reps):
  t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
print(statistics.median(times), torch.__version__, torch.get_num_threads())
"""


def matmul_part(m: int, k: int, n: int, rounds: int, onednn: bool) -> None:
  rng = np.random.default_rng(FLAGS.seed)
  x = rng.standard_normal((m, k), np.float32)
  w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
  x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  x32, w32 = jnp.asarray(x), jnp.asarray(w)
  plain = jax.jit(lambda a, b: a @ b)
  calls = {"XLA float32": lambda: plain(x32, w32), "XLA bfloat16": lambda: plain(x16, w16)}
  if onednn:
    ours = jax.jit(lambda a, b: cpu_matmul.bf16_dot(a, b, jnp.bfloat16, mode="onednn"))
    calls["oneDNN bf16 (ours)"] = lambda: ours(x16, w16)
  try:
    import torch  # pylint: disable=import-outside-toplevel
    tx, tw = torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(w).to(torch.bfloat16)
    calls[f"PyTorch {torch.__version__} bf16"] = lambda: tx @ tw
  except ImportError:
    torch = None
  exact = np.asarray(x16, np.float32) @ np.asarray(w16, np.float32)
  errors = {}
  for name, call in calls.items():
    out = call()
    out = out.float().numpy() if torch is not None and hasattr(out, "float") else out
    errors[name] = float(np.abs(np.asarray(out, np.float32) - exact).max())
  medians = round_robin(calls, rounds)
  flop = 2.0 * m * k * n
  base = medians["XLA float32"]
  print(f"== matmul {m}x{k} @ {k}x{n}, {rounds} rounds, medians")
  print(f"{'variant':<24} {'ms':>8} {'GFLOP/s':>8} {'vs XLA f32':>10} {'max |err|':>10}"
        "  (err: vs the exact product of the bf16-rounded inputs)")
  for name, sec in medians.items():
    print(f"{name:<24} {1e3 * sec:8.2f} {flop / sec / 1e9:8.0f} {base / sec:9.2f}x "
          f"{errors[name]:10.2e}")
  if FLAGS.torch_python and torch is None:
    done = subprocess.run([FLAGS.torch_python, "-c", TORCH_SNIPPET, str(m), str(k), str(n),
                           str(rounds)], capture_output=True, text=True, check=False)
    if done.returncode == 0:
      sec, version, threads = done.stdout.split()
      sec = float(sec)
      print(f"PyTorch {version} bf16 ({threads} threads, separate process, not interleaved): "
            f"{1e3 * sec:.2f} ms, {flop / sec / 1e9:.0f} GFLOP/s")
    else:
      print(f"PyTorch row skipped: {done.stderr.strip().splitlines()[-1:]}")


def report(k: int, medians: dict[str, float], firsts: dict[str, float],
           outputs: dict[str, dict[str, Any]], onednn: bool) -> None:
  """One row per variant: ms per edited image, the ratio to float32, the first call's
  seconds, and the shares of edited and of all tokens equal to float32's."""
  ref = np.asarray(outputs["float32"]["tokens"])
  mask = np.asarray(outputs["float32"]["token_mask"]).reshape(ref.shape)
  for name, sec in medians.items():
    same = np.asarray(outputs[name]["tokens"]) == ref
    print(f"{k:>2} {name:<12} {1e3 * sec / k:9.0f} {medians['float32'] / sec:6.2f}x "
          f"{firsts[name]:10.1f} {same[mask].mean():19.4f} {same.mean():16.4f}", flush=True)
  if onednn:
    same = (np.asarray(outputs["bf16 oneDNN"]["tokens"])
            == np.asarray(outputs["bf16 XLA"]["tokens"]))
    print(f"{k:>2} bf16 oneDNN vs bf16 XLA: edited tokens equal {same[mask].mean():.4f}",
          flush=True)


def editing_part(config_name: str, ks: Sequence[int], rounds: int, onednn: bool) -> None:
  config = configs.get_config(config_name)
  tok, tr = checkpoints.init_params(config, jax.random.PRNGKey(FLAGS.seed))
  tr16 = jax.block_until_ready(editing.cast_params(tr, jnp.bfloat16))
  size, side = config.image_size, config.tokens_per_side
  image = jax.random.uniform(jax.random.PRNGKey(FLAGS.seed + 1), (1, size, size, 3))
  labels = jnp.array([1], jnp.int32)
  variants = {"float32": ("float32", tr, "xla"), "bf16 XLA": ("bfloat16", tr16, "xla")}
  if onednn:
    variants["bf16 oneDNN"] = ("bfloat16", tr16, "onednn")
  print(f"== MaskGIT editing, config {config_name} ({size}px, {side}x{side} tokens), "
        f"random weights, {rounds} rounds, medians")
  print(f"{'K':>2} {'variant':<12} {'ms/image':>9} {'vs f32':>7} {'1st call s':>10} "
        f"{'edited tokens = f32':>19} {'all tokens = f32':>16}")
  for k in ks:
    boxes = bench_boxes(k, side, FLAGS.seed + k)
    keys = editing.box_keys(jax.random.PRNGKey(FLAGS.seed + 2), 1, k)
    calls, firsts, outputs = {}, {}, {}
    for name, (dtype, params, matmul) in variants.items():
      editor = editing.make_editor(config, editing.EditConfig(dtype=dtype, cpu_matmul=matmul))
      call = functools.partial(editor, tok, params, image, boxes, labels, keys)
      if matmul == "onednn":
        text = jax.jit(functools.partial(
            editing.edit_images, config=config,
            edit=editing.EditConfig(dtype=dtype, cpu_matmul=matmul))).lower(
                tok, params, image, boxes, labels, keys).as_text()
        print(f"{k:>2} {name}: {text.count(cpu_matmul.matmul.TARGET)} oneDNN calls in the "
              "program", flush=True)
      start = time.perf_counter()
      outputs[name] = jax.block_until_ready(call())
      firsts[name] = time.perf_counter() - start
      calls[name] = call
    report(k, round_robin(calls, rounds), firsts, outputs, onednn)


def lr_jax_part(ks: Sequence[int], rounds: int) -> None:
  """lr_jax's MaskGIT editor (`editor.edit`, jitted) in float32 and in bfloat16, whose
  products run on oneDNN where it is built (`editor.dtype=bfloat16`, nothing else)."""
  from lr_jax import editors, notebook  # pylint: disable=import-outside-toplevel
  built = {}
  for dtype in ("float32", "bfloat16"):
    config = notebook.load_config("maskgit_imagenet256")
    config.editor.dtype = dtype
    editor, params = editors.of(config).build(config, "random", jax.random.PRNGKey(0))
    built[dtype] = (editor, jax.block_until_ready(params), jax.jit(editor.edit))
  editor = built["float32"][0]
  size = editor.image_size
  image = jax.random.uniform(jax.random.PRNGKey(1), (1, size, size, 3))
  cond = jax.tree.map(jnp.asarray, editor.dummy_condition(1))
  print(f"== lr_jax MaskGIT editor (editor.dtype), {rounds} rounds, medians")
  for k in ks:
    boxes = jnp.asarray(bench_boxes(k, editor.box_grid, k))
    calls = {dtype: functools.partial(edit, params, image, boxes, cond, jax.random.PRNGKey(2))
             for dtype, (_, params, edit) in built.items()}
    for call in calls.values():
      jax.block_until_ready(call())
    medians = round_robin(calls, rounds)
    print(" ".join(f"K={k} {dtype}: {1e3 * sec / k:.0f} ms/image "
                   f"({medians['float32'] / sec:.2f}x)" for dtype, sec in medians.items()),
          flush=True)


def _amused_variants(onednn: bool):
  """{name: (static editor, params)}: float32 and bfloat16 aMUSEd-256 with random weights
  (the bfloat16 params cast from the float32 ones, as the editor's `build` casts them)."""
  from lr_common import box_editing  # pylint: disable=import-outside-toplevel
  from lr_jax import editors, notebook  # pylint: disable=import-outside-toplevel
  config = notebook.load_config("amused")
  if FLAGS.amused_steps is not None:
    config.editor.num_steps = FLAGS.amused_steps
  module = editors.of(config)
  editor, params = module.build(config, "random", jax.random.PRNGKey(FLAGS.seed))
  params16 = dict(params)
  for part in ("transformer", "text_encoder"):
    params16[part] = box_editing.cast_params(params[part], jnp.bfloat16)
  modes = {"bf16 XLA": "xla", **({"bf16 oneDNN": "onednn"} if onednn else {})}
  variants = {"float32": (editor, params)}
  for name, mode in modes.items():
    config.editor.dtype, config.editor.cpu_matmul = "bfloat16", mode
    variants[name] = (module.make(config), params16)
  return jax.block_until_ready(variants)


def amused_part(ks: Sequence[int], rounds: int, onednn: bool) -> None:
  """aMUSEd box editing (`decode_boxes`) in float32, bf16 on XLA, bf16 on oneDNN."""
  variants = _amused_variants(onednn)
  editor = variants["float32"][0]
  size, side = editor.image_size, editor.box_grid
  image = jax.random.uniform(jax.random.PRNGKey(FLAGS.seed + 1), (1, size, size, 3))
  cond = jax.tree.map(jnp.asarray, editor.dummy_condition(1, FLAGS.seed))
  key = jax.random.PRNGKey(FLAGS.seed + 2)
  print(f"== aMUSEd editing ({editor.model_name} sizes, {size}px, {side}x{side} tokens, "
        f"{editor.settings.decode.num_steps} steps, guidance "
        f"{editor.settings.decode.guidance_scale}), random weights, decode_boxes timed, "
        f"{rounds} rounds, medians", flush=True)
  print(f"{'K':>2} {'variant':<12} {'ms/image':>9} {'vs f32':>7} {'1st call s':>10} "
        f"{'edited tokens = f32':>19} {'all tokens = f32':>16}")
  for k in ks:
    boxes = jnp.asarray(bench_boxes(k, side, FLAGS.seed + k))
    calls, firsts, outputs = {}, {}, {}
    for name, (variant, params) in variants.items():
      start = time.perf_counter()
      lowered = jax.jit(variant.decode_boxes).lower(params, image, boxes, cond, key)
      if name == "bf16 oneDNN":
        print(f"{k:>2} {name}: {lowered.as_text().count(cpu_matmul.matmul.TARGET)} oneDNN "
              "calls in the program", flush=True)
      call = functools.partial(lowered.compile(), params, image, boxes, cond, key)
      outputs[name] = jax.block_until_ready(call())
      firsts[name] = time.perf_counter() - start
      calls[name] = call
    report(k, round_robin(calls, rounds), firsts, outputs, onednn)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  ks = [int(v) for v in FLAGS.ks.split(",") if v]
  onednn, why = cpu_matmul.status()
  print(f"jax {jax.__version__}; backend {jax.default_backend()}; oneDNN path: "
        f"{why if onednn else 'unavailable: ' + why}", flush=True)
  if FLAGS.matmul:
    m, k, n = (int(v) for v in FLAGS.matmul.split(","))
    matmul_part(m, k, n, FLAGS.matmul_repeats, onednn)
  if ks:
    editing_part(FLAGS.config, ks, FLAGS.repeats, onednn)
  if FLAGS.lr_jax_ks:
    lr_jax_part([int(v) for v in FLAGS.lr_jax_ks.split(",") if v], FLAGS.repeats)
  if FLAGS.amused_ks:
    amused_part([int(v) for v in FLAGS.amused_ks.split(",") if v], FLAGS.repeats, onednn)


if __name__ == "__main__":
  app.run(main)
