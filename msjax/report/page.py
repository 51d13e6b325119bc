"""One page per exam that says what was found: axial FLAIR slices (radiological view, R/L marked)
with every lesion outlined in the colour of its location class and numbered as in the lesion
table, counts and volumes per class, the QC verdict with its reasons, and the model with its
version. Written as PNG (and PDF, through matplotlib's PdfPages, when asked)."""
from __future__ import annotations

import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from msjax import figures, files  # noqa: E402
from msjax.report import locations as locations_lib  # noqa: E402

VERDICT_COLOURS = {"ok": "#1a8f3a", "check": "#d88a00", "fail": "#c0201b"}


def choose_slices(labels: np.ndarray, classes: dict[int, str], n: int = 6,
                  min_gap: int = 4) -> list[int]:
  """Axial slices (last axis): for each class present, the slice with most of its lesion
  voxels; then the slices with the most lesion, at least min_gap apart; the middle of the
  brain's extent when there is no lesion."""
  lesion = labels > 0
  chosen: list[int] = []
  for c in locations_lib.CLASSES:
    ids = [k for k, v in classes.items() if v == c]
    if ids and len(chosen) < n:
      per_slice = np.isin(labels, ids).reshape(-1, labels.shape[-1]).sum(0)
      z = int(per_slice.argmax())
      if all(abs(z - k) >= min_gap for k in chosen):
        chosen.append(z)
  for z in figures.lesion_slices(lesion, n, min_gap):
    if len(chosen) < n and all(abs(z - k) >= min_gap for k in chosen):
      chosen.append(z)
  return sorted(chosen)


def _slices_without_lesions(flair: np.ndarray, n: int) -> list[int]:
  z = np.flatnonzero(flair.reshape(-1, flair.shape[-1]).any(0))
  if not len(z):
    return [flair.shape[-1] // 2]
  return sorted({int(z[int(len(z) * f)]) for f in np.linspace(0.3, 0.75, n)})


def draw_page(path: str, flair: np.ndarray, labels: np.ndarray,
              locations: locations_lib.Locations, summary: dict, *, title: str,
              qc: dict | None = None, model: str = "", version: str = "", n_slices: int = 6,
              regions: bool = False, pdf: bool = False, note: str = "") -> dict:
  """Writes the page. flair and labels: canonical RAS arrays (nibabel/msjax order) on one grid;
  summary: msjax.report.table.class_summary; qc: msjax.report.qc.verdict; regions: outline the
  ventricles and cortex the classes were computed from (for checking the rule). Returns
  {"png": path, "pdf": path or None}."""
  flair = np.asarray(flair, np.float32)
  labels = np.asarray(labels)
  if flair.shape != labels.shape:
    raise ValueError(f"FLAIR {flair.shape} and lesion labels {labels.shape}: not one grid")
  slices = choose_slices(labels, locations.classes, n_slices) or _slices_without_lesions(
      flair, n_slices)
  by_class = {c: np.isin(labels, [k for k, v in locations.classes.items() if v == c])
              for c in locations_lib.CLASSES}
  fig = plt.figure(figsize=(8.27, 11.69))
  cols = 3
  rows = int(np.ceil(len(slices) / cols))
  grid = fig.add_gridspec(rows + 2, cols, height_ratios=[1.0] * rows + [0.5, 0.32],
                          hspace=0.12, wspace=0.03, top=0.885, bottom=0.02, left=0.02, right=0.98)
  _draw_slices(fig, grid, cols, flair, labels, slices, by_class, locations, regions)

  handles = [Line2D([], [], color=locations_lib.COLOURS[c], lw=2,
                    label=f"{locations_lib.DISPLAY[c]}") for c in locations_lib.CLASSES]
  fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=7, frameon=False,
             bbox_to_anchor=(0.5, 0.925))

  _draw_class_table(fig.add_subplot(grid[rows, :2]), summary)
  _draw_qc(fig.add_subplot(grid[rows, 2]), qc)
  _draw_provenance(fig.add_subplot(grid[rows + 1, :]), locations, model, version, note)
  stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  fig.suptitle(f"{title}\nMS lesions by location: {summary['lesions']} lesion(s), "
               f"{summary['lesion_volume_ml']:.2f} mL   ({stamp})", fontsize=11, y=0.985)
  out = {"png": path, "pdf": None}
  if pdf:
    pdf_path = path[:-4] + ".pdf" if path.endswith(".png") else path + ".pdf"
    with files.atomic(pdf_path) as tmp:
      with PdfPages(tmp) as doc:
        doc.savefig(fig)
    out["pdf"] = pdf_path
  figures.save_figure(fig, path, dpi=130)
  return out


def _draw_slices(fig, grid, cols, flair, labels, slices, by_class, locations, regions):
  """The axial slices, lesions outlined by class and numbered by lesion_id."""
  box, limits = figures.brain_box(flair), figures.window(flair)
  bx, by = box
  for i, z in enumerate(slices):
    ax = fig.add_subplot(grid[i // cols, i % cols])
    outlines = [(by_class[c], locations_lib.COLOURS[c]) for c in locations_lib.CLASSES]
    if regions:
      outlines = [(locations.ventricles, "#7fdfff"), (locations.cortex, "#9be37a")] + outlines
    figures.draw_slice(ax, flair, z, box, limits, outlines)
    here = labels[bx, by, z]
    for lid in (int(v) for v in np.unique(here) if v):  # numbered as in the lesion table
      xi, yi = np.nonzero(here == lid)
      ax.text(here.shape[0] - 1 - xi.mean() + 2.5, here.shape[1] - 1 - yi.mean() - 2.5, str(lid),
              color="white", fontsize=6.5, fontweight="bold", ha="left", va="bottom",
              path_effects=[patheffects.withStroke(linewidth=1.6, foreground="black")])
    n_here = len({int(v) for v in np.unique(labels[..., z]) if v})
    ax.set_title(f"axial {z}: {n_here} lesion(s)", fontsize=7)


def _draw_class_table(ax, summary):
  """Counts and volumes per location class."""
  ax.axis("off")
  cell = [[locations_lib.DISPLAY[c], str(summary["classes"][c]["count"]),
           f"{summary['classes'][c]['volume_ml']:.2f}"] for c in locations_lib.CLASSES]
  cell.append(["total", str(summary["lesions"]), f"{summary['lesion_volume_ml']:.2f}"])
  table = ax.table(cellText=cell, colLabels=["location (McDonald 2017)", "lesions", "mL"],
                   loc="upper left", cellLoc="left", colWidths=[0.55, 0.2, 0.2])
  table.auto_set_font_size(False)
  table.set_fontsize(7.5)
  table.scale(1, 1.2)
  for r, c in enumerate(locations_lib.CLASSES, start=1):
    table[r, 0].get_text().set_color(locations_lib.COLOURS[c])
  ax.set_title("lesions of more than 3 mm³ (MSSEG-2016); whole mask "
               f"{summary['mask_volume_ml']:.2f} mL", fontsize=7, loc="left")


def _draw_qc(ax, qc):
  """The scan QC verdict and its reasons."""
  ax.axis("off")
  if qc:
    colour = VERDICT_COLOURS.get(qc["verdict"], "black")
    ax.text(0.0, 0.95, f"scan QC: {qc['verdict'].upper()}", fontsize=11, fontweight="bold",
            color=colour, transform=ax.transAxes, va="top")
    reasons = qc["reasons"] or ["every check within what the model saw"]
    ax.text(0.0, 0.72, "\n".join(_wrap(r, 48) for r in reasons[:6]), fontsize=5.8,
            transform=ax.transAxes, va="top")
  else:
    ax.text(0.0, 0.95, "scan QC: not run", fontsize=10, transform=ax.transAxes, va="top")


def _draw_provenance(ax, locations, model, version, note):
  """How the page was made: model, location rule, how to read it."""
  ax.axis("off")
  lines = [f"Model: {model or 'not given'}" + (f"  (msjax {version})" if version else ""),
           f"Locations (McDonald 2017 / MAGNIMS 2016) from {locations.method}. "
           f"{locations.rule[:1].upper() + locations.rule[1:]}.",
           "Numbers on the slices are the lesion_id of the lesion table; its columns give each "
           "lesion's class, distances, probability and confidence.",
           "Radiological view: the patient's left on the image's right. A research tool, not a "
           "medical device: every finding needs a reader's check."]
  if note:
    lines.insert(1, note)
  ax.text(0.0, 1.0, "\n".join(_wrap(t, 130) for t in lines), fontsize=6.5,
          transform=ax.transAxes, va="top")


def _wrap(text: str, width: int) -> str:
  import textwrap
  return "\n".join(textwrap.wrap(text, width)) or text
