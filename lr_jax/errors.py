"""Turns the project's expected errors into one clear message and exit code 1 on the command line."""
import contextlib
import sys


def _expected_errors() -> tuple[type[BaseException], ...]:
  # Imported lazily: each module owns its error type.
  from lr_jax import checkpointing, hf_weights, imagenet, images, manifest, trainer  # pylint: disable=g-import-not-at-top
  from maskgit import checkpoints, editing  # pylint: disable=g-import-not-at-top
  return (checkpoints.CheckpointError, hf_weights.WeightsError, images.ImageError,
          manifest.ManifestError, imagenet.PromptError, checkpointing.WorkdirError,
          trainer.NonFiniteLossError, editing.BoxError, FileNotFoundError)


@contextlib.contextmanager
def friendly_errors():
  """Prints expected errors without a traceback and exits with status 1."""
  try:
    yield
  except _expected_errors() as e:  # pylint: disable=catching-non-exception
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
