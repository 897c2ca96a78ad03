"""The one base class of mistakes a user can fix (a file, a flag, a config value)."""


class UserError(Exception):
  """A problem with what the user gave, not a bug; the command-line tools print its
  message as one `error: ...` line, without a traceback, and exit with status 1.

  Each module defines its own subclasses (also deriving from the builtin type that
  fits, e.g. ValueError), so a catch of `UserError` lists nothing by hand.
  """


class SettingsError(UserError, ValueError):
  """A config value is out of range or of the wrong kind."""


class PromptError(UserError, ValueError):
  """A prompt the editor cannot condition on (empty, no class, no text)."""
