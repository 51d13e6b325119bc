"""The baseline a change method must beat: segment each visit on its own, difference the masks.

Each visit: N4, the fast brain mask (align.brain_mask_otsu), FLAIR z-score inside the brain
(mean/SD, msjax.evaluate.baseline's score), voxels at or above a threshold, lesions under the
evaluator's 3 mm³ dropped. The threshold is fitted on other, labelled exams (best pooled Dice, as
msjax.evaluate.baseline.fit_threshold does), never on the change reference. The two masks are
mapped onto a common grid (linear, then >= 0.5) and the voxels in exactly one of them are the
naive change.
"""
from __future__ import annotations

import numpy as np

from msjax.data.lesions import lesion_labels
from msjax.evaluate import baseline

CANDIDATES = np.round(np.arange(0.5, 8.0001, 0.05), 2)


def brain_z(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
  v = image[brain]
  return ((image - v.mean()) / max(float(v.std()), 1e-6)).astype(np.float32)


def fit_threshold(images, brains, references, candidates=CANDIDATES) -> dict:
  """The z threshold with the best pooled Dice over labelled exams (arrays)."""
  dice = baseline.pooled_dice(((brain_z(image, brain)[brain], ref[brain] > 0)
                               for image, brain, ref in zip(images, brains, references)),
                              candidates)
  best = int(np.argmax(dice))
  return {"threshold_z": float(candidates[best]), "train_dice": float(dice[best])}


def segment_visit(flair_path: str, threshold_z: float, n4: bool = True):
  """A lesion mask (sitk uint8) on the visit's native FLAIR grid."""
  import SimpleITK as sitk

  from msjax.longitudinal import align
  from msjax.preprocess import grid as grid_lib
  img = align.read_image(flair_path, n4)
  brain = grid_lib.to_numpy(align.brain_mask_otsu(img)) > 0
  image = grid_lib.to_numpy(img)
  mask = (brain_z(image, brain) >= threshold_z) & brain
  labels, _ = lesion_labels(mask, float(np.prod(img.GetSpacing())))
  return sitk.Cast(grid_lib.from_numpy((labels > 0).astype(np.uint8), img), sitk.sitkUInt8)


def naive_change(masks, transforms, common_img) -> np.ndarray:
  """masks: the visits' sitk masks; transforms: common -> each visit's native points. The
  voxels of the common grid in exactly one mask (linear, then >= 0.5)."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  on = [grid_lib.to_numpy(sitk.Resample(sitk.Cast(m, sitk.sitkFloat32), common_img, t,
                                        sitk.sitkLinear, 0.0, sitk.sitkFloat32)) >= 0.5
        for m, t in zip(masks, transforms)]
  return (on[0] ^ on[1]).astype(np.uint8)
