"""Segmentation metrics against a reference mask (SPEC "Evaluation").

Voxel-wise: Dice = 2TP/(2TP+FP+FN), sensitivity = TP/P, precision = TP/(TP+FP).
Lesion-wise, as the MSSEG-2016 evaluator (Anima animaSegPerfAnalyzer): lesions are 6-connected
components; components of 3 mm³ or less are dropped; a reference lesion is detected when the
prediction covers more than α = 0.10 of it and, taking the overlapping predicted components from
the largest overlap down, none has more than β = 0.70 of its voxels outside the reference before
their combined coverage reaches γ = 0.65. Lesion-wise precision applies the same rule with the
roles swapped. Also absolute volume difference and the 95th-percentile Hausdorff distance.

Empty masks give defined values: a quantity with nothing to find or nothing claimed is vacuously
perfect (sensitivity 1 with an empty reference, precision 1 with an empty prediction), Dice is 1
when both are empty, HD95 is 0 when both are empty and the field-of-view diagonal when exactly
one is.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

ALPHA, BETA, GAMMA = 0.10, 0.70, 0.65
MIN_LESION_MM3 = 3.0
SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def voxel_metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
  p, r = pred > 0, ref > 0
  tp = int(np.count_nonzero(p & r))
  fp = int(np.count_nonzero(p & ~r))
  fn = int(np.count_nonzero(~p & r))
  denom = 2 * tp + fp + fn
  return {"dice": 1.0 if denom == 0 else 2 * tp / denom,
          "sensitivity": 1.0 if tp + fn == 0 else tp / (tp + fn),
          "precision": 1.0 if tp + fp == 0 else tp / (tp + fp),
          "tp": tp, "fp": fp, "fn": fn}


def lesions(mask: np.ndarray, voxel_mm3: float, min_mm3: float = MIN_LESION_MM3):
  """6-connected components larger than min_mm3; returns (label volume, list of labels)."""
  labels, n = ndimage.label(mask > 0, structure=SIX_CONNECTED)
  if n == 0:
    return labels, []
  sizes = np.bincount(labels.ravel(), minlength=n + 1)
  keep = [k for k in range(1, n + 1) if sizes[k] * voxel_mm3 > min_mm3 + 1e-9]
  return labels, keep


def _detected(target_labels, target_ids, other_labels, other_ids,
              alpha=ALPHA, beta=BETA, gamma=GAMMA) -> int:
  """How many components of `target` are detected by `other` under the α/β/γ rule."""
  other_sizes = np.bincount(other_labels.ravel(), minlength=other_labels.max() + 1)
  kept_other = set(other_ids)
  target_mask = np.isin(target_labels, target_ids)
  # voxels of each "other" component lying outside the target segmentation (all its lesions)
  outside = np.bincount(other_labels[~target_mask].ravel(), minlength=other_labels.max() + 1)
  count = 0
  for t in target_ids:
    region = target_labels == t
    size = int(region.sum())
    overlap_ids, overlaps = np.unique(other_labels[region], return_counts=True)
    pairs = [(int(o), int(c)) for o, c in zip(overlap_ids, overlaps) if o != 0 and o in kept_other]
    covered = sum(c for _, c in pairs)
    if covered / size <= alpha:
      continue
    ok, cumulative = True, 0
    for o, c in sorted(pairs, key=lambda oc: -oc[1]):
      if cumulative / size >= gamma:
        break
      if outside[o] / other_sizes[o] > beta:
        ok = False
        break
      cumulative += c
    count += ok
  return count


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, voxel_mm3: float) -> dict:
  ref_labels, ref_ids = lesions(ref, voxel_mm3)
  pred_labels, pred_ids = lesions(pred, voxel_mm3)
  detected = _detected(ref_labels, ref_ids, pred_labels, pred_ids)
  confirmed = _detected(pred_labels, pred_ids, ref_labels, ref_ids)
  sens = 1.0 if not ref_ids else detected / len(ref_ids)
  prec = 1.0 if not pred_ids else confirmed / len(pred_ids)
  f1 = 0.0 if sens + prec == 0 else 2 * sens * prec / (sens + prec)
  return {"lesion_sensitivity": sens, "lesion_precision": prec, "lesion_f1": f1,
          "ref_lesions": len(ref_ids), "pred_lesions": len(pred_ids),
          "detected_lesions": detected}


def _surface(mask):
  return mask & ~ndimage.binary_erosion(mask, structure=SIX_CONNECTED, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
  """95th-percentile symmetric surface distance in mm (MedPy's hd95)."""
  p, r = pred > 0, ref > 0
  if not p.any() and not r.any():
    return 0.0
  if not p.any() or not r.any():
    return float(np.sqrt(np.sum((np.array(p.shape) * np.array(spacing)) ** 2)))
  sp, sr = _surface(p), _surface(r)
  dist_to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
  dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
  return float(max(np.percentile(dist_to_r[sp], 95), np.percentile(dist_to_p[sr], 95)))


def evaluate_masks(pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
  """All metrics of one predicted mask against one reference on the same grid."""
  if pred.shape != ref.shape:
    raise ValueError(f"prediction {pred.shape} and reference {ref.shape} are on different grids")
  voxel_mm3 = float(np.prod(spacing))
  out = voxel_metrics(pred, ref)
  out.update(lesion_metrics(pred, ref, voxel_mm3))
  vp, vr = np.count_nonzero(pred) * voxel_mm3 / 1000, np.count_nonzero(ref) * voxel_mm3 / 1000
  out.update({"pred_volume_ml": vp, "ref_volume_ml": vr, "abs_volume_diff_ml": abs(vp - vr),
              "avd_percent": 0.0 if vr == 0 and vp == 0 else
              (None if vr == 0 else 100.0 * abs(vp - vr) / vr),
              "hd95_mm": hd95(pred, ref, spacing)})
  return out
