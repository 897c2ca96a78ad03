"""The page in a real headless browser (Debian's chromium driven by Playwright): upload
the sample, edit, pick a candidate, drag its box, re-edit, download, and a screenshot.

Skips when /usr/bin/chromium or Playwright is missing (.ci/run installs both).
`LR_JAX_APP_SCREENSHOT=PATH` also writes the screenshot there (docs/app.png).
"""
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
  if os.environ.get("CI"):   # .ci/run installs it: a CI run without it is a failure
    raise RuntimeError(f"no chromium at {CHROMIUM}: .ci/run should have installed it")
  pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytest.importorskip("gradio_image_annotation", reason="the app extra is not installed")

from lr_jax import samples  # noqa: E402
from tests import app_helpers  # noqa: E402

# Nothing but the page: no updates, no sync, no QUIC, no first-run pages.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 240_000


def _box_in_status(page, words: str) -> list[int]:
  """The box (top, left, height, width) the status line names after `words`."""
  text = page.locator("#status").inner_text()
  found = re.search(re.escape(words) + r"[^\[]*\[([\d, ]+)\]", text)
  assert found, text
  return [int(v) for v in found.group(1).split(",")]


def _wait(page, words: str) -> None:
  """Waits until the status line says `words`; an error on the page fails at once with
  its message."""
  status = page.locator("#status").get_by_text(words)
  error = page.locator(".toast-body.error")
  status.or_(error).first.wait_for(timeout=WAIT_MS)
  if error.count():
    page.screenshot(path="/tmp/app_browser_error.png")
    pytest.fail(f"the page showed an error: {error.first.inner_text()}")


def _drag_box(page, box_tlhw, photo_hw, by_rows: int, by_cols: int) -> None:
  """Drags the annotator's box by (rows, cols) of photo pixels: the canvas shows the photo
  scaled to fit and centred."""
  canvas = page.locator("#annotator canvas")
  rect = canvas.bounding_box()
  width, height = canvas.evaluate("c => [c.width, c.height]")
  css = rect["width"] / width                       # CSS pixels per canvas pixel
  scale = min(width / photo_hw[1], height / photo_hw[0])
  left0 = (width - photo_hw[1] * scale) / 2
  top0 = (height - photo_hw[0] * scale) / 2
  t, l, h, w = box_tlhw

  def screen(row, col):
    return rect["x"] + (left0 + col * scale) * css, rect["y"] + (top0 + row * scale) * css

  page.locator("#annotator button[aria-label='Drag boxes']").click()
  x, y = screen(t + h / 2, l + w / 2)
  page.mouse.move(x, y)
  page.mouse.down()
  for step in range(1, 11):   # in steps, as a hand moves
    page.mouse.move(x + by_cols * scale * css * step / 10, y + by_rows * scale * css * step / 10)
  page.mouse.up()


def test_upload_edit_pick_drag_reedit_download(tmp_path):
  served = app_helpers.served()
  [sample, *_] = samples.sample_examples()
  with Image.open(sample.image_path) as im:
    photo_hw = (im.height, im.width)
  requests = []
  with playwright.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    try:
      page = browser.new_page(viewport={"width": 1280, "height": 1500}, accept_downloads=True)
      page.on("request", lambda r: requests.append(r.url))
      page.goto(served.url)
      page.locator("#photo_upload input[type=file]").set_input_files(str(sample.image_path))
      _wait(page, "Opened")
      page.locator("#prompt textarea").fill("a tiger")
      page.locator("#edit").click()
      _wait(page, "candidates, kept")
      rows = page.locator("#candidates img")
      assert rows.count() == 6
      # Pick candidate 3 from the gallery; its box comes up in the annotator.
      rows.nth(3).click()
      _wait(page, "Showing candidate #3")
      box = _box_in_status(page, "Showing candidate #3")
      # Drag it 100 photo pixels to the left, and re-edit only that box.
      _drag_box(page, box, photo_hw, 0, -100)
      page.locator("#reedit").click()
      _wait(page, "Re-edited box")
      moved = _box_in_status(page, "Re-edited box")
      assert moved[0] == box[0] and moved[2:] == box[2:]
      assert box[1] - 110 <= moved[1] <= box[1] - 90
      page.wait_for_timeout(1500)   # the outputs fade in after the status line
      page.screenshot(path=str(tmp_path / "app.png"), full_page=False)
      # Download the edited photo: the photo's own size.
      link = page.locator("#downloads a[download$='_edited.png']")
      with page.expect_download() as download:
        link.click()
      saved = tmp_path / download.value.suggested_filename
      download.value.save_as(saved)
    finally:
      browser.close()
  assert "_box_seed0_edited.png" in saved.name
  with Image.open(saved) as edited:
    assert (edited.height, edited.width) == photo_hw
    assert np.asarray(edited).std() > 0
  local = served.url.rstrip("/")
  assert [u for u in requests if not u.startswith((local, "data:", "blob:"))] == []
  assert served.outbound == []
  if os.environ.get("LR_JAX_APP_SCREENSHOT"):
    shutil.copyfile(tmp_path / "app.png", pathlib.Path(os.environ["LR_JAX_APP_SCREENSHOT"]))
