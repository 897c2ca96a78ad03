"""The Gradio page: components and events around `handlers`, and how it is served.

Every event runs a handler with the tab's `handlers.Session` (a `gr.State`); a
`UserError` becomes a `gr.Error` shown on the page (the server goes on serving), and
what the user should know but need not fix a `gr.Warning`. The queue runs one edit at
a time (`concurrency 1`): the models and their compiled functions are shared by every
tab. Named endpoints (`api_name`) are the same functions for `gradio_client`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import lr_jax.app  # noqa: F401  (sets Gradio's environment before it is imported)
import gradio as gr
from gradio_image_annotation import image_annotator

from lr_common.errors import UserError
from lr_jax import api
from lr_jax.app import handlers

MAX_UPLOAD = "200mb"     # Gradio refuses larger uploads before any handler runs
TITLE = "lr_jax: text-driven image editing via learnable regions"
QUEUE = "lr_jax"         # the one concurrency group of the page's events
SESSION_TTL_S = 3600     # a tab's state and Gradio's copies of its files live this long
_TABLE_HEADERS = ["#", "S", "t2i", "i2i", "box (top, left, height, width)"]


def _shown(fn: Callable[..., handlers.View]) -> Callable[..., tuple]:
  """A handler as a Gradio event: the session first (made on first use) and back out
  first, the `View` spread over the outputs, errors and warnings on the page."""
  @functools.wraps(fn)
  def event(session: handlers.Session | None, *args, **kwargs) -> tuple:
    session = session or handlers.Session()
    try:
      view = fn(session, *args, **kwargs)
    except UserError as e:
      raise gr.Error(str(e), print_exception=False) from None
    for note in view.notes:
      gr.Warning(note)
    return (session, view.annotator, view.result, view.sheet, view.gallery, view.table,
            view.downloads, view.status)
  return event


def build(editors: Mapping[str, api.Editor], rgn_checkpoint: str | None = None) -> gr.Blocks:
  """The page for these loaded editors (name -> `api.Editor`; the first is the default)."""
  if not editors:
    raise ValueError("the page needs at least one loaded editor")
  strategies = list(handlers.STRATEGIES) + (["rgn"] if rgn_checkpoint else [])

  def edit(session, editor, prompt, strategy, annotator, seed, progress=gr.Progress()):
    return handlers.edit(session, editors, editor, prompt, strategy, annotator, seed,
                         rgn_checkpoint, progress=progress)

  def reedit(session, editor, prompt, annotator, seed, base, progress=gr.Progress()):
    return handlers.reedit(session, editors, editor, prompt, annotator, seed, base,
                           progress=progress)

  def selected(event: gr.SelectData) -> int:
    return int(event.index)

  with gr.Blocks(title=TITLE, delete_cache=(SESSION_TTL_S, SESSION_TTL_S)) as page:
    # A tab's files go when the tab has been gone for an hour (or the server stops).
    session = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=handlers.forget)
    gr.Markdown(
        f"## {TITLE}\nUpload a photo ({handlers.limits_text()}) or use the sample, type what "
        "it should show and press **Edit**: DINO picks anchors, boxes around them are edited "
        "and scored with CLIP, the best kept. Then pick another candidate, or move, resize "
        "or draw the box and **Re-edit this box** (one edit of that box, no search).")
    with gr.Row():
      with gr.Column(scale=1):
        upload = gr.File(label="Photo", type="filepath", elem_id="photo_upload")
        sample = gr.Button("Use the sample", elem_id="sample")
        prompt = gr.Textbox(label="Prompt", value="a lion", elem_id="prompt")
        strategy = gr.Radio(strategies, value="search", label="Strategy",
                            info="search: every proposal edited and scored; box: your "
                                 "boxes; rgn: the trained RGN")
        editor = gr.Dropdown(list(editors), value=next(iter(editors)), label="Editor",
                             interactive=len(editors) > 1)
        seed = gr.Number(0, precision=0, label="Seed")
        edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
      with gr.Column(scale=2):
        annotator = image_annotator(
            label="Photo and box: drag the box, its corners resize it, draw a new one",
            single_box=True, sources=[], image_type="filepath", show_clear_button=False,
            elem_id="annotator")
        with gr.Row():
          base = gr.Radio(list(handlers.BASES), value=handlers.BASES[0], label="Re-edit on")
          reedit_button = gr.Button("Re-edit this box", elem_id="reedit")
    status = gr.Markdown(elem_id="status")
    with gr.Row():
      result = gr.Image(label="Result at the photo's own size", type="filepath",
                        format="png", interactive=False, elem_id="result")
      downloads = gr.File(label="Download: the edited photo and its JSON record",
                          file_count="multiple", interactive=False, elem_id="downloads")
    gallery = gr.Gallery(label="Candidates with their scores (click one to use it)",
                         columns=6, height=300, format="png", allow_preview=False, fit_columns=False,
                         elem_id="candidates")
    with gr.Row():
      candidate = gr.Number(label="Candidate", precision=0, minimum=0)
      pick_button = gr.Button("Use this candidate", elem_id="pick")
    table = gr.Dataframe(headers=_TABLE_HEADERS, label="Candidates", interactive=False)
    sheet = gr.Image(label="Sheet: DINO attention and anchors, every proposal, the candidates "
                           "with their scores, the result", type="filepath", format="png",
                     interactive=False, elem_id="sheet")

    shown = [session, annotator, result, sheet, gallery, table, downloads, status]
    # One queue for every event that reads or writes a session or runs the models: one
    # job at a time over the whole page (Gradio otherwise limits each event on its own).
    one = dict(concurrency_id=QUEUE, concurrency_limit=1)
    upload.upload(_shown(handlers.open_photo), [session, upload], shown, api_name="open_photo",
                  **one)
    sample.click(_shown(handlers.open_sample), [session], shown, api_name="sample", **one)
    edit_button.click(_shown(edit), [session, editor, prompt, strategy, annotator, seed], shown,
                      api_name="edit", **one)
    pick_button.click(_shown(handlers.pick), [session, candidate], shown, api_name="pick", **one)
    gallery.select(selected, None, candidate, api_name=False).then(
        _shown(handlers.pick), [session, candidate], shown, api_name=False, **one)
    reedit_button.click(_shown(reedit), [session, editor, prompt, annotator, seed, base], shown,
                        api_name="reedit", **one)
  return page


def serve(page: gr.Blocks, host: str = "127.0.0.1", port: int | None = None,
          share: bool = False, block: bool = True) -> tuple[Any, str, str]:
  """Queues the page (one job at a time) and serves it; returns Gradio's (app, local
  URL, share URL). block=False returns at once (the server runs in a thread)."""
  page.queue(default_concurrency_limit=1)
  return page.launch(server_name=host, server_port=port, share=share,
                     max_file_size=MAX_UPLOAD, ssr_mode=False, prevent_thread_lock=not block,
                     quiet=not block, show_error=True, footer_links=["api"])
