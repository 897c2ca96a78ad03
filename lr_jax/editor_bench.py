r"""Benchmark of the editors side by side: N boxes of one image in one call vs N calls.

  python -m lr_jax.editor_bench --editors maskgit,amused --ns 1,4,8,28 \
      --dtypes float32,bfloat16 --repeats 3 [--steps 12] [--json out.json]

Every editor runs through the contract of lr_jax/editors/base.py (`editor.edit`, jitted)
at its full size with random weights (`build(config, "random")`; nothing is downloaded),
from its paper config (the editor module's `CONFIGS`: configs/maskgit_imagenet256.py,
configs/amused.py, configs/stable_diffusion.py; `--config_arg 512` for the 512 MaskGIT and
aMUSEd models, `--config_arg 2` for SD-2). Per (editor, dtype, N): milliseconds per edited image when the
N boxes are edited in one call, the same for N separate one-box calls (measured, or with
`--noseparate` taken as N times the N=1 call, which is the same compiled function), the
first call (compile) time, peak memory, and for bfloat16 the largest pixel difference
from float32 with the same keys. `--tiny` uses the tiny configs (a quick check).
`--steps N` sets the decoding steps of the editors that have them (`editor.num_steps`).
On a 2-core CPU keep it small: `--ns 1,4 --repeats 1 --steps 2 --noseparate`.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from lr_common import benchmarking
from lr_common import output_files
from lr_jax import editors
from lr_jax import errors
from lr_jax import notebook

DTYPES = ("float32", "bfloat16")

_EDITORS = flags.DEFINE_list("editors", editors.available(), "Editors to time.")
_NS = flags.DEFINE_list("ns", ["1", "4", "8", "28"], "Boxes per call.")
_DTYPES = flags.DEFINE_list("dtypes", list(DTYPES), "Compute dtypes.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median).")
_SEPARATE = flags.DEFINE_bool("separate", True, "Time N separate one-box calls (else N x "
                              "the N=1 call).")
_STEPS = flags.DEFINE_integer("steps", None, "Decoding steps of the editors that have "
                              "them (editor.num_steps; default: each config's).")
_AMUSED_STEPS = flags.DEFINE_integer("amused_steps", None, "Old name of --steps.")
_RESOLUTION = flags.DEFINE_string("resolution", None, "Old name of --config_arg.")
_CONFIG_ARG = flags.DEFINE_string("config_arg", None, "The argument of every editor's paper "
                                  "config (configs/<name>.py:ARG, e.g. 512; default: none).")
_TINY = flags.DEFINE_bool("tiny", False, "The tiny configs instead of the full sizes.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")


def _paper_config(name: str, paper: str, arg: str | None):
  try:
    return notebook.load_config(paper, arg=arg)
  except ValueError as e:
    raise errors.UsageError(f"editor {name}: configs/{paper}.py does not take {arg!r} "
                            f"({e})") from None


def editor_config(name: str, dtype: str, resolution: str | None = None, tiny: bool = False,
                  steps: int | None = None):
  """The config of editor `name` with compute dtype `dtype` (and `steps` decoding
  steps, where the editor has them)."""
  paper, tiny_name = editors.configs(name)
  config = (notebook.load_config(tiny_name) if tiny
            else _paper_config(name, paper, resolution))
  config.editor.dtype = dtype
  if steps is not None and "num_steps" in config.editor:
    config.editor.num_steps = steps
  return config


MAX_BOXES = 1024   # boxes per call: all edited at once, in memory
MAX_STEPS = 1024   # aMUSEd decoding steps (its config: 12)


def check_flags(names: Sequence[str], ns: Sequence[Any], dtypes: Sequence[str],
                repeats: int, steps: int | None = None,
                json_path: str | None = None) -> list[int]:
  """The flags checked before anything is built or timed; returns --ns as integers.
  An empty selection (`--editors=`) is an error, not an empty table."""
  problems = []
  for flag, given, allowed in (("--editors", names, tuple(editors.available())),
                               ("--dtypes", dtypes, DTYPES)):
    unknown = [v for v in given if v not in allowed]
    if not given or unknown:
      problems.append(f"need {flag} in {', '.join(allowed)} (one or more), got "
                      f"{','.join(unknown) if unknown else '(none)'}")
  try:
    ns = [int(n) for n in ns]
  except (TypeError, ValueError):
    problems.append(f"--ns must be integers, got {','.join(map(str, ns))}")
    ns = []
  else:
    if not ns or not all(1 <= n <= MAX_BOXES for n in ns):
      problems.append(f"--ns takes boxes per call in [1, {MAX_BOXES}], got "
                      f"{','.join(map(str, ns)) or '(none)'}")
  if repeats < 1:
    problems.append(f"--repeats must be >= 1, got {repeats}")
  if steps is not None and not 1 <= steps <= MAX_STEPS:
    problems.append(f"--steps must be in [1, {MAX_STEPS}], got {steps}")
  if problems:
    raise errors.UsageError("; ".join(problems))
  if json_path:
    output_files.check_outputs([json_path], overwrite=True, flag="--json")
  return ns


def write_json(path: str, rows: list[dict[str, Any]]) -> None:
  """The rows to `path` (replaced atomically; its folder created if needed)."""
  output_files.write_text(path, json.dumps(rows, indent=1), overwrite=True)


def run(names: Sequence[str], ns: Sequence[int], dtypes: Sequence[str], repeats: int,
        separate: bool = True, resolution: str | None = None, tiny: bool = False,
        steps: int | None = None) -> list[dict[str, Any]]:
  """Times each (editor, dtype, N); returns one row each (printed as they come)."""
  ns = check_flags(names, ns, dtypes, repeats, steps)
  rows = []
  for name in names:
    reference = {}
    for dtype in dtypes:
      config = editor_config(name, dtype, resolution, tiny, steps)
      module = editors.named(name)
      editor, params = module.build(config, "tiny" if tiny else "random", jax.random.PRNGKey(0))
      params = jax.block_until_ready(params)
      edit = jax.jit(editor.edit)
      size = editor.image_size
      image = jax.random.uniform(jax.random.PRNGKey(1), (1, size, size, 3))
      cond = jax.tree.map(jnp.asarray, editor.dummy_condition(1))
      key = jax.random.PRNGKey(2)
      single_s = None
      for n in ns:
        boxes = jnp.asarray(benchmarking.bench_boxes(n, editor.box_grid, n))
        call = lambda b=boxes: edit(params, image, b, cond, key)
        start = time.perf_counter()
        first = jax.block_until_ready(call())
        first_s = time.perf_counter() - start
        batched = statistics.median(benchmarking.timed(call, repeats))
        row = dict(editor=name, model=editor.record().get(name, name), dtype=dtype, n=n,
                   image_size=size, grid=editor.box_grid, first_call_s=first_s,
                   batched_ms_per_call=1e3 * batched, batched_ms_per_image=1e3 * batched / n)
        if "num_steps" in config.editor:
          row["steps"] = config.editor.num_steps
        if n == 1:
          single_s = batched
        if n > 1 and separate:
          singles = [boxes[:, i:i + 1] for i in range(n)]
          jax.block_until_ready(call(singles[0]))
          loop = lambda: [call(b) for b in singles]
          separate_s = statistics.median(benchmarking.timed(loop, repeats))
          row.update(separate_ms_per_image=1e3 * separate_s / n, separate="measured")
        elif n > 1 and single_s is not None:
          row.update(separate_ms_per_image=1e3 * single_s, separate="N x the N=1 call")
        if "separate_ms_per_image" in row:
          row["speedup_vs_separate"] = row["separate_ms_per_image"] / row["batched_ms_per_image"]
        pixels = np.asarray(first.images)
        if dtype == "float32":
          reference[n] = pixels
        elif n in reference:
          row["max_pixel_diff_vs_float32"] = float(np.abs(pixels - reference[n]).max())
        row["finite"] = bool(np.isfinite(pixels).all())
        peak, kind = benchmarking.peak_memory_bytes()
        row.update(peak_memory_mib=peak / 2**20, memory_kind=kind,
                   device=str(jax.devices()[0].device_kind), backend=jax.default_backend())
        rows.append(row)
        print(format_row(row), flush=True)
  return rows


HEADER = (f"{'editor':>8} {'dtype':>9} {'N':>3} {'steps':>5} {'ms/img':>10} {'sep ms/img':>10} "
          f"{'speedup':>7} {'1st call s':>10} {'peak MiB':>9} {'max|dpx|':>8}")


def format_row(row: dict[str, Any]) -> str:
  fmt = lambda key, spec: format(row[key], spec) if key in row else "-"
  return (f"{row['editor']:>8} {row['dtype']:>9} {row['n']:>3} {fmt('steps', 'd'):>5} "
          f"{fmt('batched_ms_per_image', '10.1f'):>10} {fmt('separate_ms_per_image', '10.1f'):>10} "
          f"{fmt('speedup_vs_separate', '7.2f'):>7} {fmt('first_call_s', '10.1f'):>10} "
          f"{fmt('peak_memory_mib', '9.0f'):>9} {fmt('max_pixel_diff_vs_float32', '8.4f'):>8}")


def main(argv):
  with errors.cli(argv):
    steps = _STEPS.value if _STEPS.value is not None else _AMUSED_STEPS.value
    ns = check_flags(_EDITORS.value, _NS.value, _DTYPES.value, _REPEATS.value, steps,
                     _JSON.value)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}; "
          f"{'tiny' if _TINY.value else 'full sizes, random weights'}; "
          f"repeats {_REPEATS.value}", flush=True)
    print(HEADER, flush=True)
    rows = run(_EDITORS.value, ns, _DTYPES.value, _REPEATS.value, _SEPARATE.value,
               _CONFIG_ARG.value or _RESOLUTION.value, _TINY.value, steps)
    if _JSON.value:
      write_json(_JSON.value, rows)
      print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
