"""Per-exam QC figure: native FLAIR with the brain-mask outline (before), and each modality on the
128³ MNI grid with the brain mask and the MNI template brain outlined (after). Every slice in
radiological view (the patient's left on the image's right), as msjax's other figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from msjax import figures  # noqa: E402
from msjax.data import nifti  # noqa: E402
from msjax.preprocess import grid as grid_lib  # noqa: E402


def _slices(vol, n=3):
  z = np.flatnonzero(vol.reshape(-1, vol.shape[2]).any(0)) if vol.any() else np.arange(vol.shape[2])
  return [int(z[int(len(z) * f)]) for f in np.linspace(0.3, 0.7, n)]


def template_mask_on_model_grid(shape=grid_lib.MODEL_SHAPE) -> np.ndarray:
  """The MNI152 template's brain mask on the model grid of `shape` (the MNI box resampled),
  canonical RAS order."""
  from msjax.preprocess import steps
  _, template_mask = steps.mni_template()
  img = steps.resample(sitk.Cast(template_mask, sitk.sitkFloat32),
                       grid_lib.reference_image(tuple(shape)))
  return grid_lib.canonical(img)[0] >= 0.5


def exam_figure(flair_native, brain_native, flair_coreg, paths: dict, brain_path: str,
                out_png: str, title: str) -> str:
  before, _ = grid_lib.canonical(flair_coreg)
  bmask = grid_lib.canonical(brain_native)[0] > 0
  brain = nifti.read_nifti(brain_path, kind="mask").data > 0
  tmask = template_mask_on_model_grid(brain.shape)
  mods = list(paths)
  rows = 1 + len(mods)
  fig, axes = plt.subplots(rows, 3, figsize=(9, 3.2 * rows), squeeze=False)
  whole = (slice(None), slice(None))
  for j, z in enumerate(_slices(bmask)):
    figures.draw_slice(axes[0, j], before, z, whole, figures.window(before),
                       [(bmask, "lime")])
    axes[0, j].set_title(f"before: FLAIR native, axial {z}", fontsize=8)
  for i, m in enumerate(mods):
    vol = nifti.read_nifti(paths[m]).data  # canonical RAS
    for j, z in enumerate(_slices(brain)):
      figures.draw_slice(axes[i + 1, j], vol, z, whole, figures.window(vol),
                         [(brain, "lime"), (tmask, "red")])
      axes[i + 1, j].set_title(f"after: {m} {'x'.join(map(str, vol.shape))}, axial {z}",
                               fontsize=8)
  brain_dice = 2 * (brain & tmask).sum() / (brain.sum() + tmask.sum())
  fig.suptitle(f"{title}: brain mask (green) vs MNI template brain (red), Dice {brain_dice:.3f}"
               "\nradiological view: the patient's left on the image's right", fontsize=9)
  return figures.save_figure(fig, out_png)
