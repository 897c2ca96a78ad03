"""The training run's metrics file: JSON lines, one object per logged step."""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Iterable


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads a JSON-lines metrics file (one object per line); lines that do not parse
  (e.g. half a line written by a killed run) are skipped with a warning."""
  path = pathlib.Path(path)
  records = []
  for line_no, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      logging.warning("Skipping unreadable line %d of %s: %r", line_no, path, line[:80])
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


def read_upto(path: pathlib.Path, step: int) -> list[dict[str, Any]]:
  """Metrics already logged, without steps past `step` (a killed run may have logged
  steps whose checkpoint was never written)."""
  if not path.exists():
    return []
  return [r for r in read_metrics(path) if r.get("step", step + 1) <= step]


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Replaces `path` with `text` through a temp file: never half written."""
  partial = path.with_name(path.name + ".partial")
  partial.write_text(text)
  os.replace(partial, path)


def rewrite(path: pathlib.Path, records: Iterable[dict[str, Any]]) -> None:
  """Rewrites the file with exactly `records` (atomically)."""
  write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))
