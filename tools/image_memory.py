"""Peak memory of one large photo through load, model input, composite and save.

  python tools/image_memory.py                      # this checkout's lr_common
  python tools/image_memory.py --before 21185a2     # and an older revision's, same inputs
  python tools/image_memory.py --side 4000 --formats png

Writes a synthetic SIDE x SIDE RGB photo as JPEG and PNG (default 10000, the
loader's limit) into a temporary folder, then, for each file and each version of
the code, runs a fresh Python process doing what `lr_jax.inference.edit_examples`
does with an image, without the models: load it, resize it to the model input
(--size), blend a model-size edit whose mask covers --box back at full resolution,
find the changed region, save the result as PNG. Each process reports its peak
resident memory (getrusage ru_maxrss) after each step; the first line is a process
that only imports lr_common (the interpreter, numpy and PIL).

--before REV takes lr_common from `git archive REV` (the pipeline of that code:
float32 pixels, float composite). Needs about 6 GB free for the old code at 10000.
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _write_inputs(folder: pathlib.Path, side: int, formats: list[str]) -> None:
  """A smooth photo with a little texture, built a strip at a time (child process)."""
  import numpy as np
  from PIL import Image
  data = np.empty((side, side, 3), np.uint8)
  rng = np.random.default_rng(0)
  x = np.arange(side, dtype=np.float32)[None, :]
  for top in range(0, side, 512):
    y = np.arange(top, min(top + 512, side), dtype=np.float32)[:, None]
    gx, gy = np.broadcast_arrays(x / side, y / side)
    rows = np.stack([gx, gy, (gx + gy) / 2], -1)
    rows = rows * 220 + rng.integers(0, 8, rows.shape[:2] + (1,))
    data[top:top + len(y)] = rows.astype(np.uint8)
  image = Image.fromarray(data)
  del data
  for fmt in formats:
    image.save(folder / f"photo.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))


def _child(path: str, out: str, size: int, box: list[int]) -> None:
  """The measured pipeline; prints one JSON line."""
  import numpy as np
  from lr_common import image_files, pixels
  steps = {"imports": _peak_mb()}
  start = time.perf_counter()
  loaded = image_files.load_image(path)
  compact = hasattr(loaded, "original")   # this change; else the float32 code
  original = loaded.original if compact else loaded.pixels
  steps["load"] = _peak_mb()
  model_input = pixels.to_model_input(original, size)
  steps["model input"] = _peak_mb()
  edited = 1.0 - model_input   # stands in for the editor's output
  mask = np.zeros((size, size), np.float32)
  top, left, height, width = box
  mask[top:top + height, left:left + width] = 1.0
  if compact:
    result = pixels.composite_to_original(original, edited, mask, dtype=np.uint8)
    region = pixels.changed_region(result, original)
  else:
    result = pixels.composite_to_original(original, edited, mask)
    changed = np.any(result != original, axis=-1)   # the old inference._changed_region
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    region = [int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1),
              int(cols[-1] - cols[0] + 1)]
  steps["composite"] = _peak_mb()
  image_files.save_image(out, result)
  steps["save"] = _peak_mb()
  print(json.dumps({"steps": steps, "seconds": time.perf_counter() - start,
                    "dtype": str(original.dtype), "region": region}))


def _run_child(code: pathlib.Path, args: list[str]) -> dict:
  env = dict(os.environ, PYTHONPATH=str(code))
  done = subprocess.run([sys.executable, __file__, "--child", *args], env=env,
                        capture_output=True, text=True, check=False)
  if done.returncode:
    raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--side", type=int, default=10000)
  parser.add_argument("--formats", default="jpg,png")
  parser.add_argument("--size", type=int, default=256, help="model input side")
  parser.add_argument("--box", default="64,64,128,128",
                      help="edited box top,left,height,width in model pixels")
  parser.add_argument("--before", default=None, help="git revision to compare with")
  parser.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
  parser.add_argument("--write_inputs", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  box = [int(v) for v in args.box.split(",")]
  formats = args.formats.split(",")
  if args.child:
    _child(*args.child, args.size, box)
    return
  if args.write_inputs:
    _write_inputs(pathlib.Path(args.write_inputs), args.side, formats)
    return
  with tempfile.TemporaryDirectory(prefix="image_memory_") as tmp:
    tmp = pathlib.Path(tmp)
    versions = {"this checkout": REPO}
    if args.before:
      old = tmp / "before"
      old.mkdir()
      archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before,
                                "lr_common"], capture_output=True, check=True).stdout
      subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
      versions = {f"before ({args.before})": old, **versions}
    subprocess.run([sys.executable, __file__, "--write_inputs", str(tmp),
                    "--side", str(args.side), "--formats", args.formats], check=True)
    baseline = subprocess.run(
        [sys.executable, "-c", "import resource, numpy, PIL.Image, lr_common.pixels; "
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        check=True)
    print(f"{args.side}x{args.side} RGB, model input {args.size}, box {args.box}; "
          f"peak RSS in MB after each step (imports alone: "
          f"{float(baseline.stdout):.0f} MB)")
    for fmt in formats:
      for name, code in versions.items():
        report = _run_child(code, [str(tmp / f"photo.{fmt}"), str(tmp / "out.png"),
                                   "--size", str(args.size), "--box", args.box])
        steps = "  ".join(f"{k} {v:6.0f}" for k, v in report["steps"].items()
                          if k != "imports")
        print(f"{fmt:4s} {name:24s} peak {report['steps']['save']:6.0f} MB | {steps} "
              f"| {report['dtype']}, {report['seconds']:.1f} s")


if __name__ == "__main__":
  main()
