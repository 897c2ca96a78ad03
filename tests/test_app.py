"""The page behind `python -m lr_jax.app`: its functions directly, and through Gradio's
Python client against the page served on 127.0.0.1 (tiny config, one server shared with
tests/test_app_browser.py: tests/app_helpers.py)."""
import json
import pathlib
import threading

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason="the app extra is not installed")
pytest.importorskip("gradio_image_annotation", reason="the app extra is not installed")

from lr_jax.app import handlers  # noqa: E402
from tests import app_helpers  # noqa: E402


@pytest.fixture(scope="module")
def served():
  return app_helpers.served()


@pytest.fixture
def client(served):
  return gradio_client.Client(served.url, verbose=False)


@pytest.fixture
def edit_calls(served, monkeypatch):
  """Every `Editor.edit` the page makes: (strategy, box) and how many ran at once."""
  calls, running, lock = [], [0], threading.Lock()
  real = served.editor.edit

  def counted(image, prompt, **kwargs):
    with lock:
      running[0] += 1
      calls.append({"strategy": kwargs.get("strategy"), "box": kwargs.get("box"),
                    "at_once": running[0]})
    try:
      return real(image, prompt, **kwargs)
    finally:
      with lock:
        running[0] -= 1

  monkeypatch.setattr(served.editor, "edit", counted)
  return calls


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
  """A noise photo, a text file, a photo too tall for the limit."""
  folder = tmp_path_factory.mktemp("app_photos")
  rng = np.random.default_rng(1)
  Image.fromarray((rng.random((200, 320, 3)) * 255).astype(np.uint8)).save(folder / "noise.png")
  (folder / "notes.png").write_text("not a picture")
  Image.new("RGB", (64, handlers.MAX_SIDE + 1)).save(folder / "tall.png")
  return {p.stem: p for p in folder.iterdir()}


def _pixels(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _record(downloads) -> dict:
  [path] = [p for p in downloads if str(p).endswith(".json")]
  return json.loads(pathlib.Path(path).read_text())


def _box(annotator) -> tuple:
  [b] = annotator["boxes"]
  return (b["ymin"], b["xmin"], b["ymax"] - b["ymin"], b["xmax"] - b["xmin"])


def test_edit_pick_and_reedit_a_moved_box_through_the_client(client, served, edit_calls):
  _, photo, *_ = client.predict(api_name="/sample")
  original = _pixels(photo)
  annotator, result, sheet, gallery, table, downloads, status = client.predict(
      "maskgit", "a lion", "search", None, 0, api_name="/edit")
  record = _record(downloads)
  best = record["best_candidate"]
  # The kept result at the photo's own size, the same pixels as the download.
  assert _pixels(result).shape == original.shape
  [edited] = [p for p in downloads if str(p).endswith("_edited.png")]
  np.testing.assert_array_equal(_pixels(edited), _pixels(result))
  # Every candidate with its score; the sheet; the kept box ready to be moved.
  scores = record["scores"]["S"]
  assert len(gallery) == len(table["data"]) == len(scores) == 6
  assert [row[1] for row in table["data"]] == [round(s, 4) for s in scores]
  assert "(kept)" in gallery[best]["caption"] and f"S={scores[best]:.3f}" in status
  assert _pixels(sheet).shape[1] > 400
  assert _box(annotator) == tuple(record["boxes_tlhw_pixels_original"][best])
  assert [c["strategy"] for c in edit_calls] == ["search"]

  # Another candidate: its box, its picture, a record that says so.
  other = min(range(len(scores)), key=lambda i: record["boxes_tlhw_pixels_original"][i][2:])
  other = other if other != best else (best + 1) % len(scores)
  annotator, result, *_, downloads, status = client.predict(other, api_name="/pick")
  assert _box(annotator) == tuple(record["boxes_tlhw_pixels_original"][other])
  assert _record(downloads)["page"]["picked_candidate"] == other
  assert f"#{other}" in status
  previous = _pixels(result)

  # Move that box (down and right, inside the photo) and re-edit only it.
  top, left, height, width = _box(annotator)
  moved = (min(top + 60, original.shape[0] - height), min(left + 80, original.shape[1] - width),
           height, width)
  assert moved != (top, left, height, width)
  box = {"xmin": moved[1], "ymin": moved[0], "xmax": moved[1] + width,
         "ymax": moved[0] + height, "label": "#moved"}
  annotator, result, sheet, gallery, table, downloads, status = client.predict(
      "maskgit", "a lion", {"image": gradio_client.handle_file(annotator["image"]),
                            "boxes": [box]}, 3, "current result", api_name="/reedit")
  assert [c["strategy"] for c in edit_calls] == ["search", "box"]   # one edit, no search
  assert edit_calls[-1]["box"] == moved
  record = _record(downloads)
  assert record["strategy"] == "box" and record["given_boxes_as_asked"]["tlhw"] == [list(moved)]
  new = _pixels(result)
  assert new.shape == previous.shape and (new != previous).any()
  # Outside the box the editor regenerated (and its bounded feather) nothing changed.
  limit = record["feather_limit"].get("tlhw_pixels_original") or \
      record["window"]["window_tlhw_pixels_original"]
  t, l, h, w = limit
  outside = np.ones(new.shape[:2], bool)
  outside[t:t + h, l:l + w] = False
  np.testing.assert_array_equal(new[outside], previous[outside])
  ct, cl, ch, cw = record["changed_region_tlhw_pixels_original"]
  assert t <= ct and l <= cl and ct + ch <= t + h and cl + cw <= l + w
  assert len(gallery) == 1 and _box(annotator) == tuple(record["boxes_tlhw_pixels_original"][0])
  assert served.outbound == []   # nothing left this machine


@pytest.mark.parametrize("call, needle", [
    (("open", "notes"), "notes.png: not a recognised image file"),
    (("open", "tall"), f"each side must be between {handlers.MIN_SIDE} and {handlers.MAX_SIDE}"),
    (("edit", "", "search", None), "the prompt is empty"),
    (("edit", "?!", "search", None), "has no words"),
    (("edit", "a lion", "box", (10, 10, 10, 90)), "is empty"),
    (("edit", "a lion", "box", (400, 200, 480, 350)), "is not inside chelsea.png"),
    (("edit", "a lion", "box", None), "strategy box needs a box"),
    (("reedit", "a lion", None, None), "re-edit needs exactly one box"),
])
def test_bad_input_is_a_message_and_the_page_keeps_serving(client, photos, call, needle):
  def annotator(box):
    if box is None:
      return {"image": gradio_client.handle_file(photo), "boxes": []}
    xmin, ymin, xmax, ymax = box
    return {"image": gradio_client.handle_file(photo),
            "boxes": [{"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}]}

  _, photo, *_ = client.predict(api_name="/sample")
  kind, *args = call
  with pytest.raises(gradio_client.exceptions.AppError) as error:
    if kind == "open":
      client.predict(gradio_client.handle_file(photos[args[0]]), api_name="/open_photo")
    elif kind == "edit":
      prompt, strategy, box = args
      client.predict("maskgit", prompt, strategy, annotator(box), 0, api_name="/edit")
    else:
      client.predict("maskgit", args[0], annotator(args[1]), 0, "current result",
                     api_name="/reedit")
  assert needle in str(error.value)
  # Still serving, and this tab's photo is still there.
  *_, status = client.predict(gradio_client.handle_file(photos["noise"]), api_name="/open_photo")
  assert "noise.png" in status and "320x200" in status


def test_two_clients_at_once_are_served_one_after_the_other(served, photos, edit_calls):
  first, second = (gradio_client.Client(served.url, verbose=False) for _ in range(2))
  first.predict(api_name="/sample")
  second.predict(gradio_client.handle_file(photos["noise"]), api_name="/open_photo")
  jobs = [c.submit("maskgit", "a tiger", "search", None, seed, api_name="/edit")
          for seed, c in enumerate((first, second))]
  results = [job.result(timeout=300) for job in jobs]
  shapes = [_pixels(r[1]).shape for r in results]
  assert shapes == [(300, 451, 3), (200, 320, 3)]   # each tab got its own photo's edit
  assert [_record(r[5])["seed"] for r in results] == [0, 1]
  assert len(edit_calls) == 2 and max(c["at_once"] for c in edit_calls) == 1


def test_handlers_refuse_what_they_cannot_do(photos):
  session = handlers.Session()
  editors = {"maskgit": object()}   # no model is reached before these checks
  cases = [
      (lambda: handlers.open_photo(session, None), "no file"),
      (lambda: handlers.pick(session, 0), "no edit yet"),
      (lambda: handlers.edit(session, editors, "maskgit", "a lion", "search", None, 0),
       "no photo yet"),
  ]
  for call, needle in cases:
    with pytest.raises(handlers.PageError, match=needle):
      call()
  view = handlers.open_photo(session, photos["noise"])
  assert view.annotator["boxes"] == [] and "320x200" in view.status
  two = {"boxes": [{"xmin": 0, "ymin": 0, "xmax": 9, "ymax": 9}] * 2}
  for call, needle in [
      (lambda: handlers.reedit(session, editors, "maskgit", "a lion", two, 0), "got 2"),
      (lambda: handlers.reedit(session, editors, "maskgit", "a lion", two, "x"), "whole number"),
      (lambda: handlers.edit(session, editors, "amused", "a lion", "search", None, 0),
       "editor must be one of maskgit"),
      (lambda: handlers.edit(session, editors, "maskgit", "a lion", "rgn", None, 0),
       "--rgn_checkpoint DIR"),
      (lambda: handlers.edit(session, editors, "maskgit", "a lion", "bogus", None, 0),
       "strategy must be one of"),
      (lambda: handlers.edit(session, editors, "maskgit", "a lion", "box", {
          "boxes": two["boxes"][:1] * (handlers.MAX_BOXES + 1)}, 0), "at most 32 boxes"),
      (lambda: handlers.edit(session, editors, "maskgit", "a lion", "box", {"boxes": [
          {"xmin": 0, "ymin": 0, "xmax": float("inf"), "ymax": 9}]}, 0), "finite numbers"),
  ]:
    with pytest.raises(handlers.PageError, match=needle):
      call()
  handlers.forget(session)   # what Gradio calls when the tab's state expires
  assert not session.folder.exists()
