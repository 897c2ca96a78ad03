r"""Trains the region generation network.

  python -m lr_jax.train --config configs/maskgit_imagenet256.py --workdir DIR \
      --config.data.manifest=path/to/manifest.json

Rerunning the same command resumes from the newest checkpoint in DIR.
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lr_jax import errors
from lr_jax import hosts
from lr_jax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and pictures go.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  with errors.cli(argv):
    hosts.join()   # a multi-host run: LR_JAX_DISTRIBUTED=1, or the JAX_* variables
    result = trainer.train(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
  last = result.metrics[-1] if result.metrics else {}
  steps = int(result.state.step)  # the metrics may be sparse (train.log_every, resumption)
  logging.info("Done: %d steps, last loss %s; see %s", steps, last.get("loss"), result.workdir)
  print(result.summary())


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
