"""One command on several processes (the hosts of a TPU pod slice, several GPU machines).

Every process runs the same command. `join()` connects them through `jax.distributed`
when the environment asks for it (`LR_JAX_DISTRIBUTED=1` on Cloud TPU, where JAX finds
its peers itself; elsewhere JAX_COORDINATOR_ADDRESS=host:port of process 0 with
JAX_NUM_PROCESSES and JAX_PROCESS_ID) and returns this process's `Share`. Each process
then works on its own part of the items (`block`, `pair_process`) on its own local
devices: the edits need no collectives. Before any work the processes `agree`: each says
what it found wrong (a bad flag, a busy folder) and what must be the same everywhere (the
settings, the manifest), and all stop together, with one message, if anything is off.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, TypeVar

import numpy as np

from lr_common.errors import UserError


T = TypeVar("T")


class HostsError(UserError, ValueError):
  """Processes of one job that were started inconsistently, or a peer that failed."""


@dataclasses.dataclass(frozen=True)
class Share:
  """This process's place in the job: process `index` of `count`."""
  index: int = 0
  count: int = 1

  @property
  def several(self) -> bool:
    return self.count > 1

  @property
  def main(self) -> bool:
    """The process that merges and reports (process 0)."""
    return self.index == 0

  def __str__(self) -> str:
    return f"process {self.index} of {self.count}"


SINGLE = Share()


def _env_int(name: str, lowest: int, highest: int | None = None) -> int | None:
  text = os.environ.get(name, "").strip()
  if not text:
    return None
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < lowest or (highest is not None and value > highest):
    limits = f">= {lowest}" if highest is None else f"in {lowest}..{highest}"
    raise HostsError(f"{name} must be an integer {limits}, got {text!r}")
  return value


def requested() -> dict[str, Any] | None:
  """The multi-process job the environment describes (checked; None: a single process)."""
  address = os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip()
  count = _env_int("JAX_NUM_PROCESSES", 1)
  index = _env_int("JAX_PROCESS_ID", 0, None if count is None else count - 1)
  if (count is None) != (index is None):
    raise HostsError("set JAX_NUM_PROCESSES and JAX_PROCESS_ID together (with "
                     "JAX_COORDINATOR_ADDRESS), or neither")
  if count is not None and not address:
    raise HostsError("JAX_NUM_PROCESSES and JAX_PROCESS_ID need JAX_COORDINATOR_ADDRESS "
                     "(host:port of process 0, the same on every process)")
  if address and ":" not in address:
    raise HostsError(f"JAX_COORDINATOR_ADDRESS must be host:port, got {address!r}")
  if not address and os.environ.get("LR_JAX_DISTRIBUTED", "") != "1":
    return None
  return {"coordinator_address": address or None, "num_processes": count,
          "process_id": index}


def join() -> Share:
  """Joins the job the environment describes (nothing to do for a single process) and
  returns this process's share. Bad variables are a HostsError before anything starts."""
  import jax  # pylint: disable=g-import-not-at-top
  wanted = requested()
  if wanted is not None and not jax.distributed.is_initialized():
    # Small agreements between processes go through collectives; on CPUs JAX needs gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      if wanted["num_processes"] is None:   # Cloud TPU and clusters JAX detects itself
        jax.distributed.initialize()
      else:   # JAX itself does not read JAX_NUM_PROCESSES / JAX_PROCESS_ID
        jax.distributed.initialize(**wanted)
    except ValueError as e:   # what JAX could not find out by itself
      raise HostsError(f"cannot join the multi-process job ({e}); outside Cloud TPU set "
                       "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID") from None
  return current()


def current() -> Share:
  """This process's share of the job it has joined (SINGLE when it joined none)."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized():
    return SINGLE
  return Share(jax.process_index(), jax.process_count())


def block(count: int, share: Share) -> range:
  """This process's items of `count` in order: a contiguous block, the blocks' sizes
  differing by at most one."""
  return range(share.index * count // share.count, (share.index + 1) * count // share.count)


def pair_process(image: int, strategy: int, processes: int) -> int:
  """The process that does (image, strategy): the diagonal (image + strategy) mod
  processes, so every process gets its part of every strategy (they cost differently)."""
  return (image + strategy) % processes


# ---------------------------------------------------------------- agreeing

def all_texts(text: str, share: Share) -> list[str]:
  """Every process's `text`, in process order (a collective: all processes call it)."""
  if not share.several:
    return [text]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(text.encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()) or 1, np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(row[:n]).decode("utf-8") for row, n in zip(gathered, sizes)]


def agree(problem: Exception | None, share: Share, same: dict[str, Any] | None = None,
          facts: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """Before any work, on every process: raises on all processes if one of them found a
  `problem` (its own exception here, a HostsError naming the process elsewhere) or if
  a value of `same` differs from process 0's; returns every process's `facts`.

  A single process raises its problem, if any, and returns its facts."""
  facts = dict(facts or {})
  if not share.several:
    if problem is not None:
      raise problem
    return [facts]
  mine = {"problem": None if problem is None else str(problem), "same": same or {},
          "facts": facts}
  everyone = [json.loads(t) for t in all_texts(json.dumps(mine, sort_keys=True), share)]
  if problem is not None:
    raise problem
  for k, other in enumerate(everyone):
    if other["problem"] is not None:
      raise HostsError(f"process {k} of {share.count} stopped: {other['problem']}")
  first = everyone[0]["same"]
  for k, other in enumerate(everyone[1:], 1):
    differ = sorted(n for n in first.keys() | other["same"].keys()
                    if first.get(n) != other["same"].get(n))
    if differ:
      raise HostsError(
          f"process {k} of {share.count} was started differently from process 0: other "
          f"{' and '.join(differ)}; start the same command, with the same files, on every "
          "process")
  return [e["facts"] for e in everyone]


def on_every_process(share: Share, function: Callable[..., T], *args, **kwargs) -> T:
  """`function(*args, **kwargs)` on every process; an error it raises on any process (a
  UserError, or another such as an OSError of a shared file system) stops all of them
  (`agree`) instead of leaving the others waiting for it."""
  problem, value = None, None
  try:
    value = function(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  (re-raised here by `agree`)
    if not share.several:
      raise
    problem = e
  agree(problem, share)
  return value
