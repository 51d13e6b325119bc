"""Scores of a change mask against a reference change mask, and the reference on other grids.

Voxel Dice of change and lesion-wise change sensitivity / precision / F1 are msjax's MSSEG-2016
evaluator (msjax.evaluate.metrics.evaluate_masks: 6-connected lesions over 3 mm³, α/β/γ walk);
change volumes in mL. Both directions of change count: a reference marking new and vanished
lesion tissue alike (Lesjak's) is scored against the unsigned change mask.

A reference in a common space with one ITK transform per visit (fixed = common space, moving =
that visit's native FLAIR, the convention of the Lesjak longitudinal database) comes onto a visit's
grid by Resample(reference, visit, T.GetInverse(), nearest); a mask of a visit's grid goes onto the
common grid by Resample(mask, reference, T, nearest).
"""
from __future__ import annotations

import numpy as np

from msjax.evaluate import metrics

KEYS = ("dice", "sensitivity", "precision", "lesion_sensitivity", "lesion_precision", "lesion_f1",
        "ref_lesions", "pred_lesions", "detected_lesions", "confirmed_lesions", "ref_volume_ml",
        "pred_volume_ml")


def change_scores(pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
  """pred, ref: change masks (any non-zero = change) on one grid, spacing in mm."""
  out = metrics.evaluate_masks((pred != 0).astype(np.uint8), (ref != 0).astype(np.uint8), spacing)
  out = {k: out[k] for k in KEYS}
  out["false_lesions"] = out["pred_lesions"] - out["confirmed_lesions"]
  return out


def mask_onto(mask_img, target_img, transform=None) -> np.ndarray:
  """A mask (sitk image) resampled onto target's grid, nearest; transform maps target points into
  the mask's space. Returns the array in the target file's voxel order."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  out = sitk.Resample(sitk.Cast(mask_img, sitk.sitkUInt8), target_img,
                      transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
  return grid_lib.to_numpy(out)


def reference_on_visit(reference_img, visit_img, common_to_visit) -> np.ndarray:
  """The common-space reference on a visit's native grid (the database README's direction)."""
  return mask_onto(reference_img, visit_img, common_to_visit.GetInverse())
