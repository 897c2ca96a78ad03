"""Picture sheets: one PNG that explains an edit, and a plot of the losses.

Works headless (matplotlib's Agg backend is selected before pyplot loads).
Boxes are (top, left, height, width) and anchors (row, col), both in token
units of the attention grid; they are drawn in image pixels by scaling rows by
image_height / grid_height and columns by image_width / grid_width. An anchor
(r, c) names a token, so its marker sits at that token's centre (r + 0.5,
c + 0.5).
"""
from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
from matplotlib import lines  # noqa: E402
from matplotlib import patches  # noqa: E402

from lr_common import pixels as pixels_lib  # noqa: E402

_ANCHOR_COLOURS = plt.get_cmap("tab10").colors
_BEST_COLOUR = "#ffe066"  # highlight behind the best title


def _as_image(name: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, dtype=np.float32)
  if value.ndim != 3 or value.shape[-1] != 3:
    raise ValueError(f"{name} must have shape (H, W, 3), got {value.shape}")
  return np.clip(np.nan_to_num(value), 0.0, 1.0)


def _colour(k: int) -> tuple[float, float, float]:
  return _ANCHOR_COLOURS[k % len(_ANCHOR_COLOURS)]


def _plain(ax: plt.Axes, title: str) -> None:
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=9)


def _check_edit_inputs(image, attention, anchors, proposals, chosen,
                       candidates, scores, components, best):
  """Validates shapes; returns the arrays as numpy."""
  image = _as_image("image", image)
  attention = np.asarray(attention, dtype=np.float32)
  if attention.ndim != 2:
    raise ValueError(f"attention must have shape (h, w), got {attention.shape}")
  anchors = np.asarray(anchors, dtype=np.float32)
  if anchors.ndim != 2 or anchors.shape[1] != 2:
    raise ValueError(f"anchors must have shape (K, 2), got {anchors.shape}")
  k = anchors.shape[0]
  proposals = np.asarray(proposals, dtype=np.float32)
  if proposals.ndim != 3 or proposals.shape[0] != k or proposals.shape[2] != 4:
    raise ValueError(
        f"proposals must have shape (K={k}, M, 4), got {proposals.shape}")
  chosen = np.asarray(chosen)
  if chosen.shape != (k,) or not np.issubdtype(chosen.dtype, np.integer):
    raise ValueError(f"chosen must be integers of shape ({k},), got "
                     f"{chosen.dtype} {chosen.shape}")
  if np.any(chosen < 0) or np.any(chosen >= proposals.shape[1]):
    raise ValueError(f"chosen must index the M={proposals.shape[1]} proposals,"
                     f" got {chosen.tolist()}")
  candidates = np.asarray(candidates, dtype=np.float32)
  if candidates.ndim != 4 or candidates.shape[0] != k or (
      candidates.shape[-1] != 3):
    raise ValueError(
        f"candidates must have shape (K={k}, H, W, 3), got {candidates.shape}")
  candidates = np.clip(np.nan_to_num(candidates), 0.0, 1.0)
  scores = np.asarray(scores, dtype=np.float64)
  if scores.shape != (k,):
    raise ValueError(f"scores must have shape ({k},), got {scores.shape}")
  components = {name: np.asarray(v, dtype=np.float64)
                for name, v in (components or {}).items()}
  for name, v in components.items():
    if v.shape != (k,):
      raise ValueError(f"components[{name!r}] must have shape ({k},), got "
                       f"{v.shape}")
  if not 0 <= int(best) < k:
    raise ValueError(f"best must be in [0, {k}), got {best}")
  return (image, attention, anchors, proposals, chosen.astype(int), candidates,
          scores, components)


def _draw_box(ax, box, sy, sx, colour, linewidth, alpha, linestyle="-"):
  top, left, height, width = (float(v) for v in box)
  ax.add_patch(patches.Rectangle(
      (left * sx - 0.5, top * sy - 0.5), width * sx, height * sy,
      fill=False, edgecolor=colour, linewidth=linewidth, alpha=alpha, linestyle=linestyle))


def edit_sheet(path: str | pathlib.Path, *, image: np.ndarray,
               attention: np.ndarray, anchors: np.ndarray,
               proposals: np.ndarray, chosen: np.ndarray,
               candidates: np.ndarray, scores: np.ndarray,
               components: Mapping[str, np.ndarray] | None = None,
               best: int, result: np.ndarray, title: str = "",
               dpi: int = 100, view: Sequence[int] | None = None,
               pixel_aspect: float = 1.0,
               window: Sequence[int] | None = None,
               photo_hw: Sequence[int] | None = None) -> pathlib.Path:
  """Writes a PNG explaining one edit.

  Top row: the input; the attention map over the (dimmed) input with the K
  anchors marked; the input with all M proposals per anchor drawn faintly and
  the chosen one bold (one colour per anchor); the result. Below: the K
  candidate edits titled with their score (and components), the best framed.

  Args:
    image: (H, W, 3) input in [0, 1].
    attention: (h, w) attention grid (tokens).
    anchors: (K, 2) anchor tokens (row, col).
    proposals: (K, M, 4) boxes (top, left, height, width) in tokens.
    chosen: (K,) index of the chosen proposal per anchor.
    candidates: (K, H', W', 3) the K edits.
    scores: (K,) final quality scores; components: optional name -> (K,).
    best: index of the selected candidate; result: (H'', W'', 3) final image.
    view: (top, left, height, width) of `image` (and the candidates) to show, image
      pixels: the photo on a padded canvas (None: all of it).
    pixel_aspect: displayed height / width of one image pixel (a squeezed canvas is
      shown with the photo's aspect: H / W).
    window: (top, left, height, width) of the result framed as the window-mode window.
    photo_hw: (height, width) of the photo as given and as written (the panels show it at
      the editor's resolution, the result shrunk for the sheet); None: not named.
  """
  (image, attention, anchors, proposals, chosen, candidates, scores,
   components) = _check_edit_inputs(image, attention, anchors, proposals,
                                    chosen, candidates, scores, components,
                                    best)
  result = _as_image("result", result)
  best = int(best)
  k = anchors.shape[0]
  height, width = image.shape[:2]
  sy, sx = height / attention.shape[0], width / attention.shape[1]
  v_top, v_left, v_h, v_w = (0, 0, height, width) if view is None else (int(v) for v in view)
  xlim, ylim = (v_left - 0.5, v_left + v_w - 0.5), (v_top + v_h - 0.5, v_top - 0.5)

  def frame(ax):   # the photo's part of the canvas, at the photo's aspect
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect(pixel_aspect)

  ncols = max(4, min(k, 5))
  cand_rows = math.ceil(k / ncols)
  # Row heights follow the pictures' aspect ratios so wide photos leave no gaps.
  panel = 2.4  # inches per column
  view_aspect = pixel_aspect * v_h / v_w
  top_aspect = max(view_aspect, result.shape[0] / result.shape[1])
  cand_aspect = view_aspect
  row_heights = [panel * top_aspect] + [panel * cand_aspect] * cand_rows
  title_space = 0.5 if components else 0.3  # inches above each row
  top_margin = 0.3 + (0.35 if title else 0.05)  # top-row titles are one line
  bottom_margin = 0.08
  fig_height = (top_margin + sum(row_heights)
                + title_space * cand_rows + bottom_margin)
  fig = plt.figure(figsize=(ncols * panel * 1.04, fig_height), dpi=dpi)
  grid = fig.add_gridspec(
      1 + cand_rows, ncols, height_ratios=row_heights, left=0.01, right=0.99,
      bottom=bottom_margin / fig_height, top=1.0 - top_margin / fig_height,
      wspace=0.04, hspace=title_space / np.mean(row_heights))
  top_axes = [fig.add_subplot(grid[0, c]) for c in range(4)]

  ax = top_axes[0]
  ax.imshow(image)
  frame(ax)
  canvas = f"editor canvas {v_w}x{v_h}" + ("" if view is None else ", padding cut")
  _plain(ax, (f"input {int(photo_hw[1])}x{int(photo_hw[0])}\n" if photo_hw is not None
              else "input\n") + canvas)

  ax = top_axes[1]
  ax.imshow(image.mean(axis=-1), cmap="gray", vmin=0, vmax=1, alpha=1.0)
  ax.imshow(attention, cmap="inferno", alpha=0.7, interpolation="nearest",
            extent=(-0.5, width - 0.5, height - 0.5, -0.5))
  for i, (row, col) in enumerate(anchors):
    ax.plot((col + 0.5) * sx - 0.5, (row + 0.5) * sy - 0.5, marker="o",
            markersize=7, markeredgecolor="white", markeredgewidth=1.2,
            color=_colour(i), linestyle="none")
  frame(ax)
  _plain(ax, f"attention {attention.shape[0]}x{attention.shape[1]}, "
         f"{len(np.unique(anchors, axis=0))} anchors")

  ax = top_axes[2]
  ax.imshow(image)
  for i in range(k):   # one colour per anchor; the others dashed, the chosen one solid
    for m in range(proposals.shape[1]):
      if m != chosen[i]:
        _draw_box(ax, proposals[i, m], sy, sx, _colour(i), 1.4, 0.8, "--")
  for i in range(k):
    _draw_box(ax, proposals[i, chosen[i]], sy, sx, _colour(i), 3.0, 1.0)
  frame(ax)
  ax.legend(handles=[lines.Line2D([], [], color="white", linewidth=3.0, label="chosen"),
                     lines.Line2D([], [], color="white", linewidth=1.4, linestyle="--",
                              label="other proposals")],
            loc="lower left", fontsize=6, framealpha=0.6, facecolor="gray",
            labelcolor="white", handlelength=2.2)
  _plain(ax, f"proposals: {proposals.shape[1]} per anchor,\none colour per anchor")

  ax = top_axes[3]
  ax.imshow(result)
  if window is not None:
    _draw_box(ax, window, 1, 1, "white", 1.5, 1.0)
  shown = f"{result.shape[1]}x{result.shape[0]}"
  if photo_hw is not None:
    written = f"{int(photo_hw[1])}x{int(photo_hw[0])}"
    size = f"written {written}" + ("" if written == shown else f" (shown {shown})")
  else:
    size = shown
  _plain(ax, f"result: candidate {best}\n{size}"
         + (", window framed" if window is not None else ""))
  for c in range(4, ncols):
    fig.add_subplot(grid[0, c]).axis("off")

  for i in range(cand_rows * ncols):
    ax = fig.add_subplot(grid[1 + i // ncols, i % ncols])
    if i >= k:
      ax.axis("off")
      continue
    ax.imshow(candidates[i])
    frame(ax)
    parts = [f"candidate {i}: score {scores[i]:.3f}"]
    extra = "  ".join(f"{name} {v[i]:.3f}" for name, v in components.items())
    if extra:
      parts.append(extra)
    _plain(ax, "\n".join(parts))
    for spine in ax.spines.values():  # frame in the anchor's colour
      spine.set_edgecolor(_colour(i))
      spine.set_linewidth(6 if i == best else 2)
    if i == best:
      ax.title.set_text("best " + ax.title.get_text())
      ax.title.set_fontweight("bold")
      ax.title.set_bbox({"facecolor": _BEST_COLOUR, "edgecolor": "none",
                         "boxstyle": "round,pad=0.2"})
  if title:
    fig.suptitle(title, fontsize=11)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", dpi=dpi)
  plt.close(fig)
  return path


def inference_sheet(path: str | pathlib.Path, *, image: np.ndarray, outputs,
                    title: str = "", dpi: int = 100, layout=None,
                    result: np.ndarray | None = None,
                    window: Sequence[int] | None = None) -> pathlib.Path:
  """`edit_sheet` of one image's `step.Inference` (numpy, no batch axis).

  layout: the image's `canvas.Layout`: the panels show the photo's part of the canvas
  at the photo's aspect (None: the whole canvas as it is). result: the written photo
  (e.g. `preview(...)`; None: the kept candidate). window: the window-mode window in
  the result's original pixels, framed (scaled to `result`)."""
  best = int(outputs.best)
  view, aspect = None, 1.0
  if layout is not None and layout.canvas == "squeeze":
    aspect = layout.original_hw[0] / layout.original_hw[1]
  elif layout is not None:
    view = layout.image_tlhw
  final = outputs.edit.images[best] if result is None else result
  if window is not None and layout is not None:
    scale = final.shape[0] / layout.original_hw[0]
    window = [v * scale for v in window]
  return edit_sheet(
      path, image=image, attention=outputs.regions.attention, anchors=outputs.candidates.anchors,
      proposals=outputs.candidates.proposals, chosen=outputs.chosen, candidates=outputs.edit.images,
      scores=outputs.scores.score,
      components={"t2i": outputs.scores.t2i, "i2i": outputs.scores.i2i}, best=best,
      result=final, title=title, dpi=dpi, view=view, pixel_aspect=aspect,
      window=window, photo_hw=None if layout is None else layout.original_hw)


def preview(pixels: np.ndarray, max_side: int = 768) -> np.ndarray:
  """(H, W, 3) uint8 or float pixels -> float32 in [0, 1], shrunk (aspect kept) so that
  the longer side is at most `max_side`, for a sheet panel."""
  pixels = np.asarray(pixels)
  height, width = pixels.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  out_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
  if out_hw == (height, width):
    return pixels_lib.to_float(pixels)
  return pixels_lib.resize_image(pixels, out_hw)


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(
      value, bool)


def loss_curve(path: str | pathlib.Path, metrics: Sequence[dict],
               keys: Sequence[str] | None = None,
               title: str = "", dpi: int = 100) -> pathlib.Path:
  """Plots every numeric term of `metrics` (records with a 'step') over steps.

  One small panel per term (terms have different scales); `keys` restricts and
  orders the terms. Non-finite values are dropped from the line.
  """
  if not metrics:
    raise ValueError("metrics is empty: nothing to plot")
  for i, record in enumerate(metrics):
    if not isinstance(record, Mapping) or "step" not in record:
      raise ValueError(f"metrics[{i}] must be a dict with a 'step' key, got "
                       f"{record!r}")
  if keys is None:
    keys = []
    for record in metrics:
      keys += [k for k, v in record.items()
               if k != "step" and k not in keys and _is_number(v)]
  if not keys:
    raise ValueError("metrics hold no numeric terms besides 'step'")
  ncols = min(3, len(keys))
  nrows = math.ceil(len(keys) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 2.8 * nrows),
                           dpi=dpi, squeeze=False)
  for ax, key in zip(axes.ravel(), keys):
    pairs = [(float(r["step"]), float(r[key])) for r in metrics
             if key in r and _is_number(r[key]) and math.isfinite(r[key])]
    if pairs:
      steps, values = zip(*pairs)
      ax.plot(steps, values, linewidth=1.3, marker="." if len(pairs) < 50
              else None)
    else:
      ax.text(0.5, 0.5, "no finite values", ha="center", va="center",
              transform=ax.transAxes)
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
  for ax in axes.ravel()[len(keys):]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", dpi=dpi)
  plt.close(fig)
  return path
