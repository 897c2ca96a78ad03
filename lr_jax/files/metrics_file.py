"""The training run's metrics file: JSON lines, one object per logged step."""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Iterable


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads a JSON-lines metrics file (one object per line, with its integer "step");
  other lines (e.g. half a line written by a killed run) are skipped with a warning."""
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
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):   # JSON, but not a step's line
      logging.warning("Skipping line %d of %s: not a step's metrics: %r", line_no, path,
                      line[:80])
      continue
    records.append(record)
  return records


def read_upto(path: pathlib.Path, step: int) -> list[dict[str, Any]]:
  """Metrics already logged, without steps past `step` (a killed run may have logged
  steps whose checkpoint was never written)."""
  if not path.exists():
    return []
  return [r for r in read_metrics(path) if r["step"] <= step]


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Replaces `path` with `text` through a temp file: never half written."""
  partial = path.with_name(path.name + ".partial")
  partial.write_text(text)
  os.replace(partial, path)


def rewrite(path: pathlib.Path, records: Iterable[dict[str, Any]]) -> None:
  """Rewrites the file with exactly `records` (atomically)."""
  write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))
