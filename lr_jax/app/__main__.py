r"""Serves the editor as a web page (Gradio): upload or pick the sample, type a prompt,
edit, pick another candidate, move the box and re-edit it, download the result.

  python -m lr_jax.app --config configs/maskgit_imagenet256.py      # http://127.0.0.1:7860
  python -m lr_jax.app --config configs/tiny.py --port 8000 --share # and a public link

The models load once (`api.load`) and every request reuses them and their compiled
functions; one edit runs at a time. `--extra_config amused` offers a second editor on
the page (loaded once too); `--rgn_checkpoint DIR` adds the "rgn" strategy.
"""
import os
import socket
import tempfile

from absl import app
from absl import flags

from lr_jax import editors
from lr_jax import errors
from lr_jax.files import config_files

_CONFIG = config_files.define_config_flag(editors.DEFAULT_CONFIG)
_EXTRA = flags.DEFINE_multi_string(
    "extra_config", None, "More configs (a name in configs/ or a path) whose editors the "
    "page also offers; each is loaded once.")
_CKPT = flags.DEFINE_string("rgn_checkpoint", None, "A training workdir: adds the rgn strategy.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0: every "
                            "interface of this machine).")
_PORT = flags.DEFINE_integer("port", 7860, "Port to serve on (0: any free port).",
                             lower_bound=0, upper_bound=65535)
_SHARE = flags.DEFINE_bool("share", False, "Also open a public link through Gradio's share "
                           "service (needs the network).")


def free_port(host: str, port: int) -> int:
  """`port` (0: one the system picks) once it is known to be free on `host`; a port that is
  taken or an address this machine cannot serve on is refused before any model loads."""
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
      probe.bind((host, port))
      return probe.getsockname()[1]
  except OSError as e:
    raise errors.UsageError(f"cannot serve on --host {host} --port {port}: "
                            f"{e.strerror or e}") from None


def main(argv):
  with errors.cli(argv):
    from lr_jax import checkpointing  # pylint: disable=g-import-not-at-top
    port = free_port(_HOST.value, _PORT.value)
    if _CKPT.value:   # a missing checkpoint fails before any model loads
      checkpointing.resolve_rgn_checkpoint(_CKPT.value)
    # Gradio keeps uploads under one folder per machine by default, and a server that
    # stops deletes the files it made there, those another server shares by content
    # included: this server gets a folder of its own (unless one is set).
    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="lr_jax_app_"))
    from lr_jax import api  # pylint: disable=g-import-not-at-top
    from lr_jax.app import page  # pylint: disable=g-import-not-at-top
    loaded = {}
    for config in [_CONFIG.value, *(_EXTRA.value or [])]:
      editor = api.load(config)
      name = editor.config.editor.name
      if name in loaded:
        raise errors.UsageError(f"two configs use the editor {name!r}: give each editor once")
      loaded[name] = editor
    print(f"editors: {', '.join(loaded)}; serving on {_HOST.value}:{port}", flush=True)
    page.serve(page.build(loaded, _CKPT.value), _HOST.value, port, _SHARE.value)


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
