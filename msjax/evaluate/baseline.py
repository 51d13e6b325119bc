"""A FLAIR-intensity threshold: the baseline a lesion network has to beat.

MS lesions are hyperintense on FLAIR, so "every brain voxel whose FLAIR z-score (in the brain)
exceeds t" is the classic first segmentation. `fit_threshold` picks t on labelled training exams
(the t with the best Dice over all their voxels together), `write_threshold_masks` applies it to
other exams and writes a mask per exam in the layout `predict` uses (BIDS derivatives), so the same
evaluation code scores both. Everything runs on each exam's own grid (no resampling).
"""
from __future__ import annotations

import os

import numpy as np

from msjax import errors, files
from msjax.data import exams as exams_lib
from msjax.data import lesions as lesions_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti
from msjax.infer import outputs

FLAIR = manifest_lib.MODALITIES.index("FLAIR")
CANDIDATES = np.round(np.arange(0.5, 8.0001, 0.05), 2)  # z-scores


def _flair(arrays: exams_lib.ExamArrays) -> np.ndarray:
  if not arrays.present[FLAIR]:
    raise errors.InvalidInputError(f"exam {arrays.exam.exam_id}: the FLAIR baseline needs a "
                                       "FLAIR image")
  return arrays.images[..., FLAIR]


def pooled_dice(pairs, candidates) -> np.ndarray:
  """Dice pooled over exams at every candidate threshold: pairs of (values in the brain, their
  reference flags); sorted values give every candidate's "how many >= t" by one binary search."""
  tp, n_pred, n_ref = np.zeros(len(candidates)), np.zeros(len(candidates)), 0
  for values, ref in pairs:
    all_sorted, ref_sorted = np.sort(values), np.sort(values[ref])
    n_pred += len(all_sorted) - np.searchsorted(all_sorted, candidates, side="left")
    tp += len(ref_sorted) - np.searchsorted(ref_sorted, candidates, side="left")
    n_ref += int(ref.sum())
  return 2 * tp / np.maximum(n_pred + n_ref, 1)


def fit_threshold(exams, candidates=CANDIDATES, allow_any_geometry: bool = False) -> dict:
  """The z-score threshold with the best pooled Dice on `exams` (labelled), and its curve."""
  def pairs():
    for exam in exams:
      arrays = exams_lib.load_exam(exam, allow_any_geometry=allow_any_geometry)
      if arrays.reference is None:
        raise errors.InvalidInputError(f"exam {exam.exam_id}: fitting the FLAIR threshold "
                                       "needs a reference mask")
      brain = arrays.brain > 0
      yield _flair(arrays)[brain], arrays.reference[brain] > 0

  dice = pooled_dice(pairs(), candidates)
  best = int(np.argmax(dice))
  return {"threshold_z": float(candidates[best]), "train_dice": float(dice[best]),
          "fitted_on": [e.exam_id for e in exams],
          "curve": {"threshold_z": candidates.tolist(), "dice": dice.round(5).tolist()}}


def write_threshold_masks(exams, threshold_z: float, out_dir: str,
                          allow_any_geometry: bool = False) -> list[dict]:
  """A mask per exam (FLAIR z ≥ threshold inside the brain), in the exam's source space."""
  rows = []
  for exam in exams:
    arrays = exams_lib.load_exam(exam, allow_any_geometry=allow_any_geometry)
    mask = ((_flair(arrays) >= threshold_z) & (arrays.brain > 0)).astype(np.uint8)
    path = nifti.write_in_source_space(mask, arrays.native_grid,
                                       outputs.paths(out_dir, exam)["mask"],
                                       np.uint8)
    _, ids = lesions_lib.lesions(mask, arrays.native_grid.voxel_ml * 1000)
    rows.append({"exam_id": exam.exam_id, "patient_id": exam.patient_id, "lesions": len(ids),
                 "volume_ml": round(float(mask.sum()) * arrays.native_grid.voxel_ml, 4),
                 "threshold_z": threshold_z, "mask": path})
  files.write_csv(rows, os.path.join(out_dir, "predictions.csv"))
  return rows
