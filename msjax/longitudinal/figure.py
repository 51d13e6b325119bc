"""The side-by-side change figure: the same axial slices of both visits on the baseline's grid (the
follow-up brought there by the rigid transform, linear, for display only), radiological view with
R/L marks (msjax.figures.draw_slice), new lesions outlined in red and enlarging ones in orange,
each numbered as in the change table; shrinking and disappearing lesions in blue."""
from __future__ import annotations

import numpy as np

from msjax import figures

COLOURS = {1: "red", 2: "orange", 4: "deepskyblue", 5: "deepskyblue"}  # change.CLASSES codes
NUMBERED = (1, 2)  # new, enlarging


def _slices(classes: np.ndarray, n: int, slice_mm: float) -> list[int]:
  """The slices with the most new/enlarging change (else any change), 9 mm apart at least."""
  gap = max(1, int(round(9.0 / slice_mm)))
  for mask in (np.isin(classes, NUMBERED), classes > 0):
    chosen = figures.lesion_slices(mask, n, min_gap=gap)
    if chosen:
      return chosen
  depth = classes.shape[-1]
  return sorted({int(depth * f) for f in np.linspace(0.35, 0.65, n)})


def _numbers(ax, ids: np.ndarray, classes: np.ndarray, box, z: int) -> None:
  """The change-table id of every new or enlarging lesion in slice z, beside its outline."""
  bx, by = box
  shown = np.where(np.isin(classes[bx, by, z], NUMBERED), ids[bx, by, z], 0).T[::-1, ::-1]
  for lesion in np.unique(shown[shown > 0]):
    rows, cols = np.nonzero(shown == lesion)
    ax.text(cols.max() + 3, rows.mean(), str(int(lesion)), color="yellow", fontsize=7,
            va="center", ha="left")


def change_overlay(baseline_flair: str, followup_flair: str, transform: str, classes: str,
                   lesions: str, path: str, title: str = "", n_slices: int = 4,
                   sessions=("baseline", "follow-up"), table=None, checks=(),
                   model: str = "") -> str:
  """The change page: the same slices at both visits, the change lesions outlined by class and
  numbered as in the change table; with `table` (the change table's rows), its lesions with class
  and volume at each visit; `checks`: lines on the visits' QC and the registration between them;
  `model`: what made the masks. transform maps baseline points to follow-up points (run_patient's
  followup_to_baseline); classes / lesions: the change classes and change-table ids on the
  baseline's grid."""
  import matplotlib.pyplot as plt
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  base = sitk.ReadImage(baseline_flair, sitk.sitkFloat32)
  follow = sitk.Resample(sitk.ReadImage(followup_flair, sitk.sitkFloat32), base,
                         sitk.ReadTransform(transform), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
  images = [grid_lib.canonical(img)[0] for img in (base, follow)]
  cls, affine = grid_lib.canonical(sitk.ReadImage(classes))
  ids = grid_lib.canonical(sitk.ReadImage(lesions))[0]
  if cls.shape != images[0].shape or ids.shape != cls.shape:
    raise ValueError(f"{classes} / {lesions}: not on the grid of {baseline_flair}")
  slices = _slices(cls, n_slices, float(np.linalg.norm(affine[:3, 2])))
  box = figures.brain_box(images[0])
  outlines = [(cls == code, colour) for code, colour in COLOURS.items() if (cls == code).any()]
  page = table is not None
  width = max(3.0 * len(slices), 5.0)
  fig = plt.figure(figsize=(max(width, 8.5), 6.6 + (4.2 if page else 0.0)))
  grid = fig.add_gridspec(3 if page else 2, len(slices),
                          height_ratios=[1, 1, 1.35] if page else [1, 1])
  axes = np.array([[fig.add_subplot(grid[r, k]) for k in range(len(slices))] for r in range(2)])
  for row, (image, session) in enumerate(zip(images, sessions)):
    limits = figures.window(image)
    for ax, z in zip(axes[row], slices):
      figures.draw_slice(ax, image, z, box, limits, outlines)
      _numbers(ax, ids, cls, box, z)
      ax.set_title(f"{session}, axial {z}", fontsize=8)
  counts = {name: len(np.unique(ids[cls == code])) for code, name in
            ((1, "new"), (2, "enlarging"), (4, "shrinking"), (5, "disappearing"))}
  if page:
    _draw_table(fig.add_subplot(grid[2, :]), table, checks, model)
  fig.suptitle((title + "\n" if title else "") + "new (red) and enlarging (orange) lesions "
               "numbered as in the change table, shrinking/disappearing in blue: "
               + ", ".join(f"{v} {k}" for k, v in counts.items()) +
               "\nthe follow-up on the baseline's grid; radiological view: the patient's left on "
               "the image's right", fontsize=8)
  return figures.save_figure(fig, path)


def _draw_table(ax, rows, checks, model: str, most: int = 14) -> None:
  """The change table's lesions (class, volume at each visit, what appeared or vanished), the
  checks and the model, as text a clinic reads beside the slices."""
  ax.axis("off")
  changed = [r for r in rows if r["class"] != "stable"]
  changed.sort(key=lambda r: -(float(r["appeared_ml"]) + float(r["vanished_ml"])))
  cells = [[str(r["lesion_id"]), r["class"], f"{float(r['volume_baseline_ml']):.3f}",
            f"{float(r['volume_followup_ml']):.3f}",
            f"{float(r['appeared_ml']) - float(r['vanished_ml']):+.3f}"] for r in changed[:most]]
  if cells:
    t = ax.table(cellText=cells, colLabels=["lesion", "class", "mL baseline", "mL follow-up",
                                            "change mL"],
                 loc="upper left", bbox=[0.0, 0.28, 0.55, 0.72])
    t.auto_set_font_size(False)
    t.set_fontsize(7)
  else:
    ax.text(0.0, 0.9, "no new, enlarging, shrinking or disappearing lesion", fontsize=9,
            transform=ax.transAxes)
  more = f" (the {len(changed) - most} smaller ones in the change table)" if len(
      changed) > most else ""
  lines = [f"{len(changed)} changed lesion(s){more}"] + list(checks) + [
      f"Made with: {model}" if model else "",
      "A research tool, not a medical device: every finding needs a reader's check."]
  import textwrap
  ax.text(0.58, 1.0, "\n".join(textwrap.fill(t, 62) for t in lines if t), fontsize=6.8,
          va="top", transform=ax.transAxes)
