"""The editor in the browser: a Gradio page on `lr_jax.api` (`python -m lr_jax.app`).

  handlers.py  what the page does, plain functions (no Gradio): testable directly
  page.py      the Blocks: components, events, errors shown on the page, launch
  __main__.py  the command: loads the models once and serves the page

Gradio is told here, before it is imported anywhere, never to phone home (no usage
analytics, no version check).
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
