"""Figures for looking at predictions: axial FLAIR slices with reference and predicted outlines."""
from __future__ import annotations

from msjax import figures
from msjax.data import nifti


def outline_figure(flair_path: str, reference_path: str, predictions: dict[str, str], path: str,
                   title: str = "", n_slices: int = 4) -> str:
  """One row per method (predicted mask files, same grid as the reference), one column per slice:
  FLAIR, reference outline in green, prediction in red; each panel gives that slice's true
  positive / false positive / false negative voxel counts."""
  import matplotlib.pyplot as plt
  flair = nifti.read_nifti(flair_path).data
  ref = nifti.read_nifti(reference_path, kind="mask").data > 0
  preds = {k: nifti.read_nifti(p, kind="mask").data > 0 for k, p in predictions.items()}
  slices = figures.lesion_slices(ref, n_slices)
  bx, by = figures.brain_box(flair)
  lo, hi = figures.window(flair)
  fig, axes = plt.subplots(len(preds), len(slices), squeeze=False,
                           figsize=(3.1 * len(slices), 3.5 * len(preds)))
  for row, (name, pred) in enumerate(preds.items()):
    for col, z in enumerate(slices):
      ax = axes[row, col]
      figures.draw_slice(ax, flair, z, (bx, by), (lo, hi), [(ref, "lime"), (pred, "red")])
      r, p = ref[bx, by, z], pred[bx, by, z]
      tp, fp, fn = int((r & p).sum()), int((~r & p).sum()), int((r & ~p).sum())
      ax.set_title(f"z={z}  TP {tp} FP {fp} FN {fn}", fontsize=8)
      if col == 0:
        ax.set_ylabel(name, fontsize=10)
  fig.suptitle((title + "\n" if title else "") + "FLAIR; reference outline green, prediction red "
               "(radiological view: patient left on the right)", fontsize=10)
  return figures.save_figure(fig, path)
