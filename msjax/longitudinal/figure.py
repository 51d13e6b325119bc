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
                   sessions=("baseline", "follow-up")) -> str:
  """transform maps baseline points to follow-up points (run_patient's followup_to_baseline);
  classes / lesions: the change classes and change-table ids on the baseline's grid."""
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
  fig, axes = plt.subplots(2, len(slices), squeeze=False,
                           figsize=(max(3.0 * len(slices), 5.0), 6.6))
  for row, (image, session) in enumerate(zip(images, sessions)):
    limits = figures.window(image)
    for ax, z in zip(axes[row], slices):
      figures.draw_slice(ax, image, z, box, limits, outlines)
      _numbers(ax, ids, cls, box, z)
      ax.set_title(f"{session}, axial {z}", fontsize=8)
  counts = {name: len(np.unique(ids[cls == code])) for code, name in
            ((1, "new"), (2, "enlarging"), (4, "shrinking"), (5, "disappearing"))}
  fig.suptitle((title + "\n" if title else "") + "new (red) and enlarging (orange) lesions "
               "numbered as in the change table, shrinking/disappearing in blue: "
               + ", ".join(f"{v} {k}" for k, v in counts.items()) +
               "\nthe follow-up on the baseline's grid; radiological view: the patient's left on "
               "the image's right", fontsize=8)
  return figures.save_figure(fig, path)
