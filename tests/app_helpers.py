"""One tiny editor and one page served on 127.0.0.1, shared by tests/test_app.py and
tests/test_app_browser.py (one load, one compile of each edit, one server per pytest run).

While it serves, every connection this process tries to a machine other than this one
is refused and written down (`Served.outbound`): the page must not phone home.
"""
from __future__ import annotations

import atexit
import functools
import os
import socket
import tempfile
from typing import Any, NamedTuple

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Served(NamedTuple):
  editor: Any          # the api.Editor behind the page
  page: Any            # the gr.Blocks
  url: str             # http://127.0.0.1:PORT/
  outbound: list       # connections tried to other machines (refused)


def _guard_network(outbound: list) -> None:
  real_connect = socket.socket.connect

  def local_only(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
      outbound.append(address)
      raise OSError(f"the app tests forbid network access (tried {address})")
    return real_connect(sock, address)

  socket.socket.connect = local_only


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


@functools.cache
def served() -> Served:
  """Loads the tiny config once and serves its page (queue: one job at a time)."""
  os.environ.setdefault("LR_JAX_SAMPLES_DIR", tempfile.mkdtemp(prefix="lr_jax_app_samples_"))
  outbound: list = []
  _guard_network(outbound)
  from lr_jax import api  # pylint: disable=g-import-not-at-top
  from lr_jax.app import page as page_lib  # pylint: disable=g-import-not-at-top
  editor = api.load("tiny")
  page = page_lib.build({editor.config.editor.name: editor})
  _, url, _ = page_lib.serve(page, "127.0.0.1", free_port(), block=False)
  atexit.register(page.close)
  return Served(editor, page, url, outbound)
