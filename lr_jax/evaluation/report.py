"""The evaluation report: tables with bootstrap intervals, paired comparisons, pictures.

From the result lines of `lr_jax.evaluation.runner` it writes into the evaluation folder
  summary.csv   one row per (strategy, metric): n, mean, 95 % bootstrap interval;
  summary.md    the same as a table, and the paired tables "strategy A better than B,
                % of images" on S and on CLIP text similarity (the paper's Tables 1-2);
  summary.png   bars of the main metrics per strategy with their intervals;
  sheets/       per image, the strategies' results side by side with their boxes.
"""
from __future__ import annotations

import csv
import io
import pathlib
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import lines  # noqa: E402
from matplotlib import patches  # noqa: E402
from PIL import Image  # noqa: E402

from lr_common import output_files  # noqa: E402

BOOTSTRAP_SAMPLES = 2000
SHEET_SIDE = 320   # longest side of each panel of a comparison sheet, in pixels

# name: (what it is, higher is better)
METRICS = {
    "quality_S": ("quality score S = alpha S_t2i + beta S_i2i", True),
    "clip_t2i": ("CLIP similarity to the prompt", True),
    "clip_directional": ("CLIP directional similarity", True),
    "clip_i2i": ("CLIP similarity to the source", True),
    "structure_distance": ("DINO structure distance (x1000)", False),
    "bg_psnr": ("PSNR outside the editor's box (dB)", True),
    "bg_ssim": ("SSIM outside the editor's box", True),
    "bg_mse": ("MSE outside the editor's box", False),
    "bg_psnr_outside_object": ("PSNR outside the object mask (dB)", True),
    "bg_ssim_outside_object": ("SSIM outside the object mask", True),
    "bg_mse_outside_object": ("MSE outside the object mask", False),
    "edited_area_fraction": ("share of pixels changed", False),
    "box_iou_mask_bbox": ("IoU of the box with the mask's bounding box", True),
    "mask_covered": ("share of the mask inside the box", True),
    "box_on_mask": ("share of the box on the mask", True),
    "top_anchor_in_mask": ("DINO's top anchor on the mask", True),
    "chosen_anchor_in_mask": ("the chosen anchor on the mask", True),
    "seconds": ("seconds per image (compiles excluded)", False),
}
PAIRED = ("quality_S", "clip_t2i")
BARS = ("quality_S", "clip_t2i", "clip_directional", "clip_i2i", "structure_distance",
        "bg_ssim", "box_iou_mask_bbox", "mask_covered")
_SCALE = {"structure_distance": 1000.0}


def values(row: dict[str, Any]) -> dict[str, float]:
  """The numeric metrics of one result line (booleans as 0/1; missing ones left out)."""
  out = {}
  for group in ("metrics", "regions"):
    for name, value in (row.get(group) or {}).items():
      if value is not None:
        out[name] = float(value) * _SCALE.get(name, 1.0)
  if not row.get("includes_compile"):
    out["seconds"] = float(row["seconds"])
  return out


def bootstrap_interval(samples: Sequence[float], seed: int = 0,
                       resamples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
  """95 % percentile bootstrap interval of the mean (a single value: that value)."""
  x = np.asarray(samples, np.float64)
  if x.size == 1:
    return float(x[0]), float(x[0])
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: Iterable[dict[str, Any]], strategies: Sequence[str]) -> list[dict[str, Any]]:
  """One entry per (strategy, metric) with values: n, mean, lo, hi."""
  per = {s: {} for s in strategies}
  for row in rows:
    if row["strategy"] in per:
      for name, value in values(row).items():
        per[row["strategy"]].setdefault(name, []).append(value)
  table = []
  for strategy in strategies:
    for name in METRICS:
      samples = per[strategy].get(name)
      if samples:
        lo, hi = bootstrap_interval(samples)
        table.append({"strategy": strategy, "metric": name, "n": len(samples),
                      "mean": float(np.mean(samples)), "lo": lo, "hi": hi})
  return table


def paired_wins(rows: Iterable[dict[str, Any]], strategies: Sequence[str],
                metric: str) -> dict[tuple[str, str], tuple[float, int]]:
  """(A, B) -> (% of the images both were run on where A's metric beats B's, ties
  counting half; how many images)."""
  by_image: dict[str, dict[str, float]] = {}
  for row in rows:
    value = (row.get("metrics") or {}).get(metric)
    if value is not None:
      by_image.setdefault(f"{row['index']}|{row['image']}|{row['prompt']}", {})[
          row["strategy"]] = float(value)
  out = {}
  for a in strategies:
    for b in strategies:
      if a == b:
        continue
      pairs = [(v[a], v[b]) for v in by_image.values() if a in v and b in v]
      if pairs:
        wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs)
        out[(a, b)] = (100.0 * wins / len(pairs), len(pairs))
  return out


def _csv(table: list[dict[str, Any]]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, ["strategy", "metric", "n", "mean", "lo", "hi"],
                          lineterminator="\n")
  writer.writeheader()
  writer.writerows(table)
  return buffer.getvalue()


def _markdown(table: list[dict[str, Any]], rows: list[dict[str, Any]],
              strategies: Sequence[str]) -> str:
  lines = ["# Evaluation", "",
           f"{len({(r['index'], r['image'], r['prompt']) for r in rows})} edits (image, prompt); "
           "mean [95 % bootstrap interval] per strategy; arrows: which way is better.", ""]
  cells = {(t["strategy"], t["metric"]): t for t in table}
  lines += ["| metric | " + " | ".join(strategies) + " |",
            "|---|" + "---|" * len(strategies)]
  for name, (label, higher) in METRICS.items():
    if any((s, name) in cells for s in strategies):
      entries = []
      for s in strategies:
        t = cells.get((s, name))
        entries.append(f"{t['mean']:.4g} [{t['lo']:.4g}, {t['hi']:.4g}]" if t else "-")
      lines.append(f"| {label} {'↑' if higher else '↓'} | " + " | ".join(entries) + " |")
  for metric in PAIRED:
    wins = paired_wins(rows, strategies, metric)
    if not wins:
      continue
    lines += ["", f"## Row strategy better than column strategy on {metric}, % of images",
              "", "| | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for a in strategies:
      entries = ["-" if (a, b) not in wins else f"{wins[(a, b)][0]:.1f} (n={wins[(a, b)][1]})"
                 for b in strategies]
      lines.append(f"| {a} | " + " | ".join(entries) + " |")
  return "\n".join(lines) + "\n"


def bar_chart(path: str | pathlib.Path, table: list[dict[str, Any]],
              strategies: Sequence[str]) -> None:
  """One panel per main metric: a bar per strategy with its 95 % interval."""
  cells = {(t["strategy"], t["metric"]): t for t in table}
  names = [n for n in BARS if any((s, n) in cells for s in strategies)]
  if not names:
    return
  cols = min(4, len(names))
  fig_rows = -(-len(names) // cols)
  fig, axes = plt.subplots(fig_rows, cols, figsize=(3.2 * cols, 2.6 * fig_rows), squeeze=False)
  colours = plt.get_cmap("tab10").colors
  for ax, name in zip(axes.flat, names):
    present = [s for s in strategies if (s, name) in cells]
    means = [cells[(s, name)]["mean"] for s in present]
    errors = np.asarray([[cells[(s, name)]["mean"] - cells[(s, name)]["lo"] for s in present],
                         [cells[(s, name)]["hi"] - cells[(s, name)]["mean"] for s in present]])
    ax.bar(range(len(present)), means, yerr=errors, capsize=3,
           color=[colours[strategies.index(s) % 10] for s in present])
    ax.set_xticks(range(len(present)), present, rotation=30, fontsize=8)
    label, higher = METRICS[name]
    ax.set_title(f"{label} {'↑' if higher else '↓'}", fontsize=8)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.tight_layout()
  with output_files.atomic_path(path, overwrite=True) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


def _thumbnail(path: str) -> tuple[np.ndarray, float]:
  """The photo at most SHEET_SIDE on its longer side, and the scale applied."""
  with Image.open(path) as image:
    scale = min(1.0, SHEET_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS)), scale


def _draw(ax, box, scale, colour, style):
  top, left, height, width = (v * scale for v in box)
  ax.add_patch(patches.Rectangle((left - 0.5, top - 0.5), width, height, fill=False,
                                 edgecolor=colour, linewidth=2, linestyle=style))


def comparison_sheet(path: str | pathlib.Path, source: str, rows: list[dict[str, Any]],
                     strategies: Sequence[str]) -> None:
  """The source photo and each strategy's result, at the photo's own aspect, with the
  chosen box (solid) and the box the editor regenerated (dashed)."""
  by_strategy = {r["strategy"]: r for r in rows}
  present = [s for s in strategies if s in by_strategy]
  image, scale = _thumbnail(source)
  aspect = image.shape[1] / image.shape[0]
  fig, axes = plt.subplots(1, 1 + len(present), squeeze=False,
                           figsize=((1 + len(present)) * 2.6 * max(aspect, 0.5), 3.0))
  axes = axes[0]
  axes[0].imshow(image)
  axes[0].set_title(f"input\n{rows[0]['prompt'][:40]!r}", fontsize=8)
  for ax, strategy in zip(axes[1:], present):
    row = by_strategy[strategy]
    edited, edit_scale = _thumbnail(row["files"]["edited"])
    ax.imshow(edited)
    _draw(ax, row["chosen_box_tlhw_pixels"], edit_scale, "#ffe066", "-")
    _draw(ax, row["editor_box_tlhw_pixels"], edit_scale, "#ff4d4d", "--")
    m = {k: "-" if v is None else f"{v:.3f}" for k, v in row["metrics"].items()}
    ax.set_title(f"{strategy}\nS {m.get('quality_S', '-')}  t2i {m.get('clip_t2i', '-')}",
                 fontsize=8)
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  if present:   # which box is which
    fig.legend(handles=[
        lines.Line2D([], [], color="#ffe066", linewidth=2, label="chosen box"),
        lines.Line2D([], [], color="#ff4d4d", linewidth=2, linestyle="--",
                     label="regenerated by the editor")],
        loc="lower center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
  fig.tight_layout(rect=(0, 0.06 if present else 0, 1, 1))
  with output_files.atomic_path(path, overwrite=True) as tmp:
    fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
  plt.close(fig)


def sheet_name(row: dict[str, Any]) -> str:
  return f"{row['index']:03d}_{pathlib.Path(row['image']).stem}.png"


def write_report(out_dir: str | pathlib.Path, rows: list[dict[str, Any]],
                 strategies: Sequence[str], sheets_for: set[int] | None = None
                 ) -> dict[str, pathlib.Path]:
  """Writes the summary files and the comparison sheets (of the images `sheets_for`, or
  of those without one yet); returns the summary files."""
  out_dir = pathlib.Path(out_dir)
  table = summarize(rows, strategies)
  files = {"csv": out_dir / "summary.csv", "markdown": out_dir / "summary.md",
           "chart": out_dir / "summary.png"}
  output_files.write_text(files["csv"], _csv(table), overwrite=True)
  output_files.write_text(files["markdown"], _markdown(table, rows, strategies), overwrite=True)
  bar_chart(files["chart"], table, strategies)
  by_image: dict[int, list[dict[str, Any]]] = {}
  for row in rows:
    by_image.setdefault(row["index"], []).append(row)
  (out_dir / "sheets").mkdir(exist_ok=True)
  for index, image_rows in sorted(by_image.items()):
    path = out_dir / "sheets" / sheet_name(image_rows[0])
    if (sheets_for is None and not path.exists()) or (sheets_for and index in sheets_for):
      comparison_sheet(path, image_rows[0]["image"], image_rows, strategies)
  return files
