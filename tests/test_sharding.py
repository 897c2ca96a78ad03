"""Data parallelism: 8 simulated CPU devices give the losses and parameters of one device."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, pathlib, sys, tempfile
    import jax, numpy as np
    from PIL import Image
    from configs import tiny
    from lr_jax.files import manifest
    from lr_jax.method import sharding
    from lr_jax import trainer
    from lr_jax.models import build_models

    assert jax.device_count() == 8, jax.devices()
    c = tiny.get_config()
    c.train.batch_size = 8
    c.train.epochs = 2
    c.train.checkpoint_every = 100
    # Adam turns gradient entries near 0 into +-lr steps whose sign depends on the
    # summation order; a larger eps keeps that noise from hiding the comparison.
    c.optim.eps = 1e-3
    built = build_models(c)
    tmp = pathlib.Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    examples = []
    for i in range(8):
      path = tmp / f"img{i}.png"
      Image.fromarray((rng.random((64 + 8 * i, 80, 3)) * 255).astype(np.uint8)).save(path)
      examples.append(manifest.Example(path, "a lion", "a cat", None))
    out = {}
    for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
      r = trainer.train(c, tmp / name, built=built, examples=examples,
                        progress=False, devices=devices)
      out[name] = {"loss": [m["loss"] for m in r.metrics],
                   "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(r.state.params)]}
    mesh = sharding.make_mesh()
    batch = sharding.put_batch({"x": np.zeros((8, 3))}, mesh)
    out["shards"] = len(batch["x"].addressable_shards)
    print("RESULT" + json.dumps(out))
""")


def test_eight_devices_match_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  out = json.loads(line[len("RESULT"):])
  assert out["shards"] == 8
  assert len(out["one"]["loss"]) == 2
  for a, b in zip(out["one"]["loss"], out["eight"]["loss"]):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (a, b)
  for a, b in zip(out["one"]["params"], out["eight"]["params"]):
    diff = max(abs(x - y) for x, y in zip(a, b))
    assert diff <= 1e-5, diff
