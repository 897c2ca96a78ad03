"""Turns the project's expected errors into one clear message and exit code 1 on the command line."""
import ast
import contextlib
import sys

from lr_common.errors import UserError


@contextlib.contextmanager
def friendly_errors():
  """Prints user errors (`UserError`, a missing file) as one `error:` line, no traceback, and
  exits with status 1."""
  try:
    yield
  except (UserError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _clean(message: str) -> str:
  """ml_collections wraps KeyError texts in quotes; undo that."""
  message = message.strip()
  if message[:1] in "'\"":
    try:
      message = ast.literal_eval(message)
    except (ValueError, SyntaxError):
      pass
  return str(message).replace("\n", " ").strip()


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags parser, with one `error:` line (no traceback) for unknown
  flags, bad values and `--config.x.y=` overrides naming no config field."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_clean(str(e))}\nRun with --helpfull to list the flags.", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = _clean(e.args[0] if e.args and isinstance(e.args[0], str) else str(e))
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    word = message.split()[0].strip("'\"") if message else ""
    culprit = [a for a in overrides if word and word in a.split("=")[0]] or overrides
    where = f" {culprit[0]}" if culprit else ""
    if word and message.startswith(("'", '"')):   # an unknown field name
      rest = message.split(None, 1)[1] if " " in message else ""
      message = f"the config has no field {word!r}. {rest}".strip()
    print(f"error: bad config override{where}: {message}", file=sys.stderr)
  sys.exit(1)
