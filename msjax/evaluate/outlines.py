"""Figures for looking at predictions: axial FLAIR slices with reference and predicted outlines."""
from __future__ import annotations

import numpy as np

from msjax.data import nifti
from msjax import figures


def lesion_slices(reference: np.ndarray, n: int, min_gap: int = 6) -> list[int]:
  """The n axial slices (last axis, RAS) with the most reference lesion, at least min_gap apart."""
  per_slice = reference.reshape(-1, reference.shape[-1]).sum(0)
  chosen: list[int] = []
  for z in np.argsort(-per_slice, kind="stable"):
    if per_slice[z] == 0 or len(chosen) == n:
      break
    if all(abs(int(z) - c) >= min_gap for c in chosen):
      chosen.append(int(z))
  return sorted(chosen)


def _brain_box(image: np.ndarray, pad: int = 4):
  nz = np.argwhere(image != 0)
  if not len(nz):
    return slice(None), slice(None)
  lo, hi = nz.min(0), nz.max(0) + 1
  return (slice(max(lo[0] - pad, 0), hi[0] + pad), slice(max(lo[1] - pad, 0), hi[1] + pad))


def outline_figure(flair_path: str, reference_path: str, predictions: dict[str, str], path: str,
                   title: str = "", n_slices: int = 4) -> str:
  """One row per method (predicted mask files, same grid as the reference), one column per slice:
  FLAIR, reference outline in green, prediction in red; each panel gives that slice's true
  positive / false positive / false negative voxel counts."""
  import matplotlib.pyplot as plt
  flair = nifti.read_nifti(flair_path).data
  ref = nifti.read_nifti(reference_path, kind="mask").data > 0
  preds = {k: nifti.read_nifti(p, kind="mask").data > 0 for k, p in predictions.items()}
  slices = lesion_slices(ref, n_slices)
  bx, by = _brain_box(flair)
  lo, hi = np.percentile(flair[flair != 0], [1, 99.5]) if (flair != 0).any() else (0, 1)
  fig, axes = plt.subplots(len(preds), len(slices), squeeze=False,
                           figsize=(3.1 * len(slices), 3.5 * len(preds)))
  for row, (name, pred) in enumerate(preds.items()):
    for col, z in enumerate(slices):
      ax = axes[row, col]
      # RAS arrays: x to the right of the image is patient right -> shown in radiological view
      # (patient left on the image right) by flipping x; anterior up
      img = flair[bx, by, z].T[::-1, ::-1]
      r, p = ref[bx, by, z].T[::-1, ::-1], pred[bx, by, z].T[::-1, ::-1]
      ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
      if r.any():
        ax.contour(r, levels=[0.5], colors="lime", linewidths=0.8)
      if p.any():
        ax.contour(p, levels=[0.5], colors="red", linewidths=0.8)
      tp, fp, fn = int((r & p).sum()), int((~r & p).sum()), int((r & ~p).sum())
      ax.set_title(f"z={z}  TP {tp} FP {fp} FN {fn}", fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
      if col == 0:
        ax.set_ylabel(name, fontsize=10)
  fig.suptitle((title + "\n" if title else "") + "FLAIR; reference outline green, prediction red "
               "(radiological view: patient left on the right)", fontsize=10)
  return figures.save_figure(fig, path)
