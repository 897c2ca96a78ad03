"""Turns the project's expected errors into one clear message and exit code 1 on the command line."""
import ast
import contextlib
import os
import sys

from lr_common.errors import UserError


class UsageError(UserError, ValueError):
  """Flags that do not go together, or a missing one."""


@contextlib.contextmanager
def friendly_errors():
  """Prints user errors (`UserError`, a missing file) as one `error:` line, no traceback, and
  exits with status 1."""
  try:
    yield
  except (UserError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


@contextlib.contextmanager
def cli(argv: list[str]):
  """The common start of every command's `main`: quiet logs unless --verbosity is given
  (orbax logs every save at INFO), `friendly_errors`, and no stray arguments."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with friendly_errors():
    if len(argv) > 1:
      raise UsageError(f"unexpected arguments {argv[1:]}")
    yield


def _clean(message: str) -> str:
  """ml_collections wraps KeyError texts in quotes; undo that."""
  message = message.strip()
  if message[:1] in "'\"":
    try:
      message = ast.literal_eval(message)
    except (ValueError, SyntaxError):
      pass
  return str(message).replace("\n", " ").strip()


def _with_config_found(argv: list[str]) -> list[str]:
  """argv with its `--config PATH[:ARG]` found from any folder (defaults are found when
  the flag is defined: `config_files.resolve`)."""
  from lr_jax.files import config_files  # pylint: disable=g-import-not-at-top
  out, i = [argv[0]], 1
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config=") or (arg == "--config" and i + 1 < len(argv)):
      value = arg[len("--config="):] if arg.startswith("--config=") else argv[i + 1]
      i += 1 if arg.startswith("--config=") else 2
      out.append("--config=" + config_files.resolve(value)[0])
      continue
    out.append(arg)
    i += 1
  return out


def _load_config_or_exit(argv: list[str]) -> None:
  """Loads `--config` now, so a missing or broken file is one `error:` line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lr_jax.files import config_files  # pylint: disable=g-import-not-at-top
  if "config" not in flags.FLAGS:
    return
  try:
    flags.FLAGS.config.keys()   # a file that failed to load raises on first use
  except Exception as e:  # pylint: disable=broad-except  (config_flags wraps many kinds)
    given = [a[len("--config="):] for a in argv if a.startswith("--config=")]
    path = given[-1] if given else _flag_default("config")
    if not path or path == "None":   # a command with no default config, and none given
      print("error: --config FILE is required (configs/*.py)", file=sys.stderr)
      sys.exit(1)
    _, tried = config_files.resolve(path)
    reason = _clean(str(e).splitlines()[-1]) if str(e) else type(e).__name__
    if any(os.path.isfile(t) for t in tried):
      print(f"error: cannot load config {path}: {reason}", file=sys.stderr)
    else:
      print(f"error: config file {path!r} not found (looked for {', '.join(tried)}); run "
            f"from the repository folder, or set $LR_JAX_REPO to it", file=sys.stderr)
    sys.exit(1)


def _flag_default(name: str) -> str | None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  text = flags.FLAGS[name].default_as_str
  return ast.literal_eval(text) if text else None


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags parser, with one `error:` line (no traceback) for unknown
  flags, bad values, a config file that cannot be found or loaded, and `--config.x.y=`
  overrides naming no config field. A relative `--config` path is also looked up in
  the repository checkout, so the CLIs work from any folder."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  asked = [a for a in argv[1:] if a.split("=")[0] in HELP_FLAGS]
  argv = [a for a in argv if a.split("=")[0] not in HELP_FLAGS]
  if "config" in flags.FLAGS:
    argv = _with_config_found(list(argv))
  if asked:
    _help_and_exit(argv, full=any(a.startswith("--helpfull") for a in asked))
  try:
    rest = flags.FLAGS(argv)
  except (OSError, SyntaxError, ImportError) as e:   # the config file itself
    print(f"error: cannot load the config file: {_clean(str(e).splitlines()[0])}",
          file=sys.stderr)
  except flags.Error as e:
    print(f"error: {_clean(str(e))} (run with --helpfull to list the flags)", file=sys.stderr)
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
  else:
    _load_config_or_exit(argv)
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      _fit_editor_section(flags.FLAGS.config)
    return rest
  sys.exit(1)


HELP_FLAGS = ("--help", "-help", "-h", "--h", "-?", "--helpshort", "--helpfull")


def _help_and_exit(argv: list[str], full: bool) -> None:
  """Prints the command's usage and flags, then every field of the `--config` file (or of
  the default one) with its value, and exits 0; flags still missing do not matter here."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    flags.FLAGS(argv)
  except flags.Error:   # a required flag not given: the help is what was asked for
    pass
  except Exception as e:  # pylint: disable=broad-except  (a config that does not load)
    print(f"(the config could not be loaded: {_clean(str(e).splitlines()[0])})")
  app.usage(shorthelp=not full, writeto_stdout=True)
  config = None
  if "config" in flags.FLAGS:
    try:
      config = flags.FLAGS["config"].value
    except Exception:  # pylint: disable=broad-except
      config = None
  if config is None:
    if "config" in flags.FLAGS:
      print("\nAdd --config FILE (configs/*.py) to --help to list that config's fields "
            "and their defaults.")
    sys.exit(0)
  print(f"\nconfig fields of {flags.FLAGS['config'].config_filename} with their values "
        f"(change any with --config.FIELD=VALUE):")
  for name, value in config_fields(config):
    print(f"  --config.{name}={value!r}")
  sys.exit(0)


def config_fields(config) -> list[tuple[str, object]]:
  """(dotted name, value) of every leaf of a ConfigDict, in its order."""
  out = []
  for key, value in config.items():
    if hasattr(value, "items"):
      out += [(f"{key}.{k}", v) for k, v in config_fields(value)]
    else:
      out.append((key, value))
  return out


def _fit_editor_section(config) -> None:
  """After `--config.editor.name=X`, the editor section holds X's settings only."""
  from lr_jax import editors  # pylint: disable=g-import-not-at-top
  if "editor" in config and "name" in config.editor:
    with friendly_errors():
      editors.fit(config)
