"""Segmentation metrics against a reference mask, as the MSSEG-2016 evaluator computes them.

Voxel-wise: Dice = 2TP/(2TP+FP+FN), sensitivity = TP/(TP+FN), precision = TP/(TP+FP).

Lesion-wise, Anima's `animaSegPerfAnalyzer` (`animaSegPerfCAnalyzer.cxx`: getOverlapTab,
getTruePositiveLesions, falsePositiveRatioTester, getDetectionMarks), step for step:
- lesions are 6-connected components of each image; components of fewer than
  floor(3 mm³ / voxel volume) + 1 voxels are removed from both images first (they become
  background). Kept components are numbered as ITK does: by size, largest first, equal sizes in
  the order a raster scan of the file (x fastest) meets them;
- an overlap table counts voxels per (reference label, predicted label), label 0 = background;
- a reference lesion i with tp_i voxels covered by kept predicted components is missed if
  tp_i / |i| <= α = 0.10. Otherwise the predicted components are sorted by decreasing overlap with
  i (libstdc++'s std::sort, ties included, see cxx_sort.py) and walked, at most (number of
  reference lesions + 1) of them: a component with more than β = 0.70 of its voxels outside every
  kept reference lesion ends the walk and i is missed; otherwise overlap / tp_i is added, and the
  walk stops once the sum reaches γ = 0.65. A lesion whose walk was not ended by a β failure is
  detected (also when the bound stopped it below γ: the evaluator returns `!bExit`);
- lesion precision is the same rule with the two images' roles swapped.

Undefined is undefined: a ratio whose denominator is 0 (sensitivity with an empty reference,
precision with an empty prediction, Dice with both empty, lesion F1 when either lesion score is
undefined) is `None`: an empty CSV cell, `null` in JSON, left out of means. One departure from
Anima's floating point: when both lesion scores are 0 (lesions on both sides, none matched),
Anima's 2·0·0/(0+0) gives NaN; msjax reports F1 = 0, the value of 2TP/(2TP+FP+FN) with TP = 0,
because dropping a total miss from a mean would flatter it.

HD95 is MedPy's `hd95`: the 95th percentile of the surface distances of both directions pooled
(surfaces = mask minus its 6-connected erosion), undefined when either mask is empty. MONAI's
`compute_hausdorff_distance(percentile=95)` takes the larger of the two directed 95th
percentiles instead and gives equal or larger values.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from msjax.data.lesions import SIX_CONNECTED, lesion_labels
from msjax.evaluate.cxx_sort import std_sort

ALPHA, BETA, GAMMA = 0.10, 0.70, 0.65


def ratio(num: float, den: float) -> float | None:
  return None if den == 0 else num / den


def voxel_metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
  p, r = pred > 0, ref > 0
  tp = int(np.count_nonzero(p & r))
  fp = int(np.count_nonzero(p & ~r))
  fn = int(np.count_nonzero(~p & r))
  return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": ratio(tp, tp + fn),
          "precision": ratio(tp, tp + fp), "tp": tp, "fp": fp, "fn": fn}


def overlap_table(row_labels: np.ndarray, n_rows: int, col_labels: np.ndarray, n_cols: int
                  ) -> np.ndarray:
  """(n_rows + 1, n_cols + 1) voxel counts; [i, j] = voxels of row label i in column label j."""
  flat = row_labels.ravel().astype(np.int64) * (n_cols + 1) + col_labels.ravel()
  return np.bincount(flat, minlength=(n_rows + 1) * (n_cols + 1)).reshape(n_rows + 1, n_cols + 1)


def detected_lesions(table: np.ndarray, alpha=ALPHA, beta=BETA, gamma=GAMMA) -> list[bool]:
  """Anima's getTruePositiveLesions on an overlap table whose rows are the lesions being tested
  and whose columns are the other image's components. Returns one flag per row label 1..n."""
  n_rows, n_cols = table.shape  # labels including the background
  tp_row = table[:, 1:].sum(axis=1)
  col_size = table.sum(axis=0)
  out = []
  for i in range(1, n_rows):
    tp = int(tp_row[i])
    if not tp / (tp + int(table[i, 0])) > alpha:
      out.append(False)
      continue
    column = [(j, int(table[i, j])) for j in range(1, n_cols)]
    std_sort(column, lambda f, s: f[1] > s[1])
    weight, k, exited = 0.0, 0, False
    # k < len(column) never binds (all overlaps summed is a weight of 1 >= γ); Anima reads past
    # its vector there
    while weight < gamma and k < n_rows and k < len(column) and not exited:
      j, overlap = column[k]
      exited = int(table[0, j]) / int(col_size[j]) > beta
      if not exited:
        weight += overlap / tp
      k += 1
    out.append(not exited)
  return out


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, voxel_mm3: float) -> dict:
  ref_labels, n_ref = lesion_labels(ref, voxel_mm3)
  pred_labels, n_pred = lesion_labels(pred, voxel_mm3)
  detected = confirmed = 0
  if n_ref and n_pred:  # getDetectionMarks computes nothing unless both have lesions
    table = overlap_table(ref_labels, n_ref, pred_labels, n_pred)
    detected = sum(detected_lesions(table))
    confirmed = sum(detected_lesions(table.T))
  sens, prec = ratio(detected, n_ref), ratio(confirmed, n_pred)
  if sens is None or prec is None:
    f1 = None
  else:
    f1 = 0.0 if sens + prec == 0 else 2 * sens * prec / (sens + prec)
  return {"lesion_sensitivity": sens, "lesion_precision": prec, "lesion_f1": f1,
          "ref_lesions": n_ref, "pred_lesions": n_pred, "detected_lesions": detected,
          "confirmed_lesions": confirmed}


def _surface(mask):
  return mask & ~ndimage.binary_erosion(mask, structure=SIX_CONNECTED, border_value=0)


def _surface_distances(a, b, spacing):
  """Distance (mm) from every surface voxel of a to the nearest surface voxel of b."""
  return ndimage.distance_transform_edt(~_surface(b), sampling=spacing)[_surface(a)]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float | None:
  """MedPy's hd95 (both directions' surface distances pooled, 95th percentile), in mm; None when
  either mask is empty."""
  p, r = pred > 0, ref > 0
  if not p.any() or not r.any():
    return None
  pooled = np.concatenate([_surface_distances(p, r, spacing), _surface_distances(r, p, spacing)])
  return float(np.percentile(pooled, 95))


def evaluate_masks(pred: np.ndarray, ref: np.ndarray, spacing, surface: bool = True) -> dict:
  """All metrics of one predicted mask against one reference on the same grid. Arrays in the
  file's own voxel order give Anima's tie order exactly (see lesion_labels). surface=False
  leaves out the surface distance (hd95_mm None), most of the time of a sweep."""
  if pred.shape != ref.shape:
    raise ValueError(f"prediction {pred.shape} and reference {ref.shape} are on different grids")
  voxel_mm3 = float(np.prod(spacing))
  out = voxel_metrics(pred, ref)
  out.update(lesion_metrics(pred, ref, voxel_mm3))
  vp, vr = np.count_nonzero(pred) * voxel_mm3 / 1000, np.count_nonzero(ref) * voxel_mm3 / 1000
  avd = ratio(100.0 * abs(vp - vr), vr)
  out.update({"pred_volume_ml": vp, "ref_volume_ml": vr, "abs_volume_diff_ml": abs(vp - vr),
              "avd_percent": avd,
              "hd95_mm": hd95(pred, ref, spacing) if surface else None})
  return out


def mean_over_defined(rows: list[dict], keys) -> tuple[dict, dict]:
  """(mean, n) per key over the rows where the value is defined (not None): undefined values
  never enter a mean, and every mean says how many values it averages."""
  means, counts = {}, {}
  for k in keys:
    vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r[k], bool)
            and r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
    counts[k] = len(vals)
    means[k] = float(np.mean(vals)) if vals else None
  return means, counts


def numeric_keys(rows: list[dict]) -> list[str]:
  keys = dict.fromkeys(k for r in rows for k, v in r.items()
                       if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
  return [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]


def mean_of(rows: list[dict]) -> tuple[dict, dict]:
  """(mean, number of exams with a defined value) of every numeric measure."""
  return mean_over_defined(rows, numeric_keys(rows))


def fmt(value, spec: str = ".3f", undefined: str = "undef") -> str:
  """A measure for printing: undefined values (None) are shown as such, never as a number."""
  return undefined if value is None else format(value, spec)
