"""Per-exam QC figure: native FLAIR with the brain-mask outline (before), and each modality on the
128³ MNI grid with the brain mask and the MNI template brain outlined (after)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from msjax.data import nifti  # noqa: E402
from msjax.figures import save_figure  # noqa: E402
from msjax.preprocess import grid as grid_lib  # noqa: E402


def _slices(vol, n=3):
  z = np.flatnonzero(vol.reshape(-1, vol.shape[2]).any(0)) if vol.any() else np.arange(vol.shape[2])
  return [int(z[int(len(z) * f)]) for f in np.linspace(0.3, 0.7, n)]


def exam_figure(flair_native, brain_native, flair_coreg, paths: dict, brain_path: str,
                out_png: str, title: str) -> str:
  from msjax.preprocess import steps
  before = grid_lib.to_numpy(flair_coreg)
  bmask = grid_lib.to_numpy(brain_native) > 0
  brain = nifti.read_nifti(brain_path, kind="mask").data > 0
  _, template_mask = steps.mni_template()
  # template mask on the 128³ grid, in the written files' LAS order -> canonical RAS like `brain`
  tmask = grid_lib.to_numpy(steps.resample(sitk.Cast(template_mask, sitk.sitkFloat32),
                                           grid_lib.reference_image())) >= 0.5
  tmask = tmask[::-1]
  mods = list(paths)
  rows = 1 + len(mods)
  fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows))
  for j, z in enumerate(_slices(bmask)):
    ax = axes[0, j]
    ax.imshow(before[:, :, z].T, cmap="gray", origin="lower")
    ax.contour(bmask[:, :, z].T, levels=[0.5], colors="lime", linewidths=0.7)
    ax.set_title(f"before: FLAIR native z={z}", fontsize=8)
  for i, m in enumerate(mods):
    vol = nifti.read_nifti(paths[m])  # canonical RAS
    for j, z in enumerate(_slices(brain)):
      ax = axes[i + 1, j]
      ax.imshow(vol.data[:, :, z].T, cmap="gray", origin="lower")
      ax.contour(brain[:, :, z].T, levels=[0.5], colors="lime", linewidths=0.7)
      ax.contour(tmask[:, :, z].T, levels=[0.5], colors="red", linewidths=0.5)
      ax.set_title(f"after: {m} 128³ z={z}", fontsize=8)
  for ax in axes.ravel():
    ax.axis("off")
  brain_dice = 2 * (brain & tmask).sum() / (brain.sum() + tmask.sum())
  fig.suptitle(f"{title}: brain mask (green) vs MNI template brain (red), Dice {brain_dice:.3f}",
               fontsize=9)
  return save_figure(fig, out_png)
