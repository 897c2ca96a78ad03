"""Reading the JSON files the commands wrote earlier (settings, records): a file that
cannot be read, is not JSON, or is JSON of another shape is one clear error naming the
file and what it should hold, never a KeyError or AttributeError later on."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from lr_common.errors import UserError


class JsonFileError(UserError, ValueError):
  """A JSON file that cannot be used (the message names it and what to do)."""


_KINDS = {dict: "a JSON object", list: "a JSON list"}


def read_json(path: str | os.PathLike, expect: type = dict, what: str = "",
              fix: str = "") -> Any:
  """The JSON value in `path`, which must be of type `expect` (dict or list). `what`
  names the file's role in messages ("the saved training config"), `fix` says what
  the user can do."""
  path = pathlib.Path(path)
  role = f" ({what})" if what else ""
  advice = f"; {fix}" if fix else ""
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError:
    raise JsonFileError(f"{path}{role} is not UTF-8 text{advice}") from None
  except OSError as e:
    raise JsonFileError(f"{path}{role} cannot be read ({e.strerror or e}){advice}") from None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise JsonFileError(f"{path}{role} is not valid JSON ({e}){advice}") from None
  if not isinstance(value, expect):
    raise JsonFileError(f"{path}{role} should hold {_KINDS.get(expect, expect.__name__)}, "
                        f"not {type(value).__name__}{advice}")
  return value
