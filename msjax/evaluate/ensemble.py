"""An ensemble's leave-one-out, read from its members' runs, and the threshold chosen on it.

Each member is one leave-one-out workdir of the same recipe at its own seed (configs/lesjak.py
--config.seed=k). Each left-out exam's saved probability maps, for every input the runs
evaluated (all sequences and each sequence-subset or thick-slice variant), are averaged over the
members as `segment` averages a shipped ensemble's members, then thresholded and scored. With one
run this is that run's own leave-one-out. Nothing is trained or predicted again.
"""
from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np

from msjax import errors
from msjax.data import lesions
from msjax.evaluate import metrics
from msjax.infer import outputs

ALL = "all"  # the input with every sequence: the fold's own metrics.csv
# the thresholds a leave-one-out's calibration curves are read at
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def metrics_csv(run: str, fold: str, strategy: str, variant: str) -> str:
  base = os.path.join(run, "folds", fold, strategy)
  return os.path.join(base, "metrics.csv") if variant == ALL else os.path.join(
      base, "variants", variant, "metrics.csv")


def recorded(run: str, fold: str, strategy: str, variant: str) -> dict:
  """The leave-one-out's own row for the left-out exam (one exam per fold)."""
  path = metrics_csv(run, fold, strategy, variant)
  if not os.path.exists(path):
    raise errors.InvalidInputError(f"{path}: missing (is {run} a finished leave-one-out of "
                                   f"{strategy}?)")
  with open(path) as f:
    rows = list(csv.DictReader(f))
  if len(rows) != 1:
    raise errors.InvalidInputError(f"{path}: {len(rows)} rows, one left-out exam expected")
  return rows[0]


def probability_path(mask_path: str) -> str:
  """The probability map written beside a predicted mask (msjax.infer.outputs.paths); a mask not
  named so is refused rather than read as its own probability map."""
  suffix = outputs.MASK_SUFFIX
  if not mask_path.endswith(suffix):
    raise errors.InvalidInputError(f"{mask_path}: not a mask msjax predicted (its name does not "
                                   f"end in {suffix}), so no probability map beside it")
  return mask_path[:-len(suffix)] + outputs.PROBABILITY_SUFFIX


def folds(runs: list[str]) -> list[str]:
  """The left-out folds every run holds (test_<patient>), refused when the runs differ."""
  found = []
  for run in runs:
    top = os.path.join(run, "folds")
    found.append(sorted(d for d in (os.listdir(top) if os.path.isdir(top) else [])
                        if d.startswith("test_")))
  if not found[0]:
    raise errors.InvalidInputError(f"{runs[0]}: no leave-one-out folds (folds/test_*)")
  for run, f in zip(runs[1:], found[1:]):
    if f != found[0]:
      raise errors.InvalidInputError(f"{run}: folds {f}, but {runs[0]} has {found[0]}: the "
                                     "members of one ensemble leave out the same patients")
  return found[0]


def inputs(runs: list[str], fold: str, strategy: str) -> list[str]:
  """All sequences, then each variant (sequence subset, thick slices) that every run scored."""
  common = None
  for run in runs:
    top = os.path.join(run, "folds", fold, strategy, "variants")
    have = {v for v in (os.listdir(top) if os.path.isdir(top) else [])
            if os.path.exists(metrics_csv(run, fold, strategy, v))}
    common = have if common is None else common & have
  return [ALL] + sorted(common or ())


def member_maps(runs: list[str], fold: str, strategy: str, variant: str):
  """(each run's probability map, the reference mask, its voxel spacing, each run's row), in the
  files' voxel order."""
  rows = [recorded(r, fold, strategy, variant) for r in runs]
  ref = nib.load(rows[0]["reference"])
  reference, spacing = np.asarray(ref.dataobj) > 0, tuple(ref.header.get_zooms()[:3])
  maps = []
  for row in rows:
    path = probability_path(row["prediction"])
    if not os.path.exists(path):
      raise errors.InvalidInputError(f"{path}: the left-out exam's probability map is missing")
    maps.append(np.asarray(nib.load(path).dataobj, np.float32))
    if maps[-1].shape != reference.shape:
      raise errors.InvalidInputError(f"{path}: shape {maps[-1].shape}, its reference "
                                     f"{rows[0]['reference']} has {reference.shape}")
  return maps, reference, spacing, rows


def mask_at(probability: np.ndarray, spacing, threshold: float,
            min_lesion_mm3: float, min_lesion_peak: float = 0.0) -> np.ndarray:
  """The mask `segment` and the leave-one-out write (lesions.mask_of): p >= threshold, lesions
  of min_lesion_mm3 or less and those that nowhere reach min_lesion_peak removed."""
  return lesions.mask_of(probability, float(np.prod(spacing)), threshold, min_lesion_mm3,
                         min_lesion_peak)


def _dice(mask: np.ndarray, reference: np.ndarray) -> float:
  dice = metrics.voxel_metrics(mask, reference)["dice"]
  return float("nan") if dice is None else dice  # both empty: undefined, left out of means


def dice_by_threshold(probability: np.ndarray, reference: np.ndarray, spacing, thresholds,
                      min_lesion_mm3: float = 0.0, min_lesion_peak: float = 0.0) -> list[float]:
  """The Dice of the mask `mask_at` makes of one map, at each threshold (nan: both empty)."""
  return [_dice(mask_at(probability, spacing, t, min_lesion_mm3, min_lesion_peak), reference)
          for t in thresholds]


def dice_sweep(runs: list[str], strategy: str, thresholds=THRESHOLDS,
               min_lesion_mm3: float = 0.0) -> dict:
  """{(fold, input): [Dice of the members' mean map at each threshold]}."""
  out = {}
  for fold in folds(runs):
    for variant in inputs(runs, fold, strategy):
      maps, reference, spacing, _ = member_maps(runs, fold, strategy, variant)
      out[(fold, variant)] = dice_by_threshold(np.mean(maps, axis=0), reference, spacing,
                                               thresholds, min_lesion_mm3)
  return out


def one_standard_error(cells: np.ndarray, values, default: float) -> tuple[int, int, np.ndarray,
                                                                           np.ndarray]:
  """The one-standard-error rule (Breiman et al. 1984; Hastie et al., Elements of Statistical
  Learning, 7.10), paired. cells: (patient-input, value) scores, nan where undefined. Of the
  values whose mean score is within one standard error of the best's (the error of the mean of
  their per-patient-and-input differences to it), the one nearest the default. A few left-out
  patients cannot tell settings apart by less; a setting moved on such noise moves every new
  patient's mask. Returns (best's index, chosen index, mean scores, standard errors)."""
  mean = np.nanmean(cells, axis=0)
  top = max(range(len(values)), key=lambda i: (round(float(mean[i]), 4),
                                               -abs(values[i] - default)))
  differences = cells - cells[:, [top]]
  counted = (~np.isnan(differences)).sum(axis=0)
  se = np.nanstd(differences, axis=0, ddof=1) / np.sqrt(np.maximum(counted, 1))
  se = np.nan_to_num(se)  # one patient-input: no spread to measure, the best stands
  within = [i for i in range(len(values)) if mean[i] >= mean[top] - se[i] - 1e-12]
  return top, min(within, key=lambda i: (abs(values[i] - default), -mean[i])), mean, se


def _what(runs: list[str], strategy: str, sweep: dict) -> str:
  fold_names = sorted({f.removeprefix("test_") for f, _ in sweep})
  input_names = sorted({v for _, v in sweep}, key=lambda v: (v != ALL, v))
  what = (f"the mean of {len(runs)} leave-one-out runs' probability maps (one per seed)"
          if len(runs) > 1 else "a leave-one-out run's probability maps")
  return (f"{strategy}, {what}, over the left-out patients ({', '.join(fold_names)}) and inputs "
          f"({', '.join(input_names)})")


def best_threshold(runs: list[str], strategy: str, thresholds=THRESHOLDS,
                   min_lesion_mm3: float = 0.0) -> tuple[float, str]:
  """The threshold of the members' mean map chosen on every left-out patient and input the runs
  scored, and how it was chosen, for the model card: by mean Dice and the one-standard-error
  rule, nearest 0.5 (the default)."""
  sweep = dice_sweep(runs, strategy, thresholds, min_lesion_mm3)
  cells = np.array(list(sweep.values()), np.float64)  # (patient-input, threshold)
  top, best, mean, se = one_standard_error(cells, thresholds, 0.5)
  at_half = (f" ({100 * mean[thresholds.index(0.5)]:.1f} at 0.5)"
             if 0.5 in thresholds and thresholds[top] != 0.5 else "")
  how = (f"the mean Dice of {_what(runs, strategy, sweep)}: best "
         f"{100 * mean[top]:.1f} at {thresholds[top]:g}{at_half}")
  if best != top:
    how += (f"; {thresholds[best]:g} chosen, the threshold nearest 0.5 within one standard "
            f"error of the best ({100 * mean[best]:.1f}, {100 * (mean[top] - mean[best]):.2f} "
            f"below it, standard error {100 * se[best]:.2f}, paired over {len(cells)} "
            "patient-inputs)")
  return float(thresholds[best]), how


# the lesion peaks (predict.min_lesion_peak) the shipped model's is chosen among; 0 keeps every
# lesion the threshold makes
PEAKS = (0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def peak_sweep(runs: list[str], strategy: str, threshold: float, peaks=PEAKS,
               min_lesion_mm3: float = 0.0) -> dict:
  """{(fold, input): [(lesion F1, Dice) of the members' mean map at each lesion peak]}, the mask
  at `threshold`; F1 0 where a reference's lesions all went, nan where neither side has one."""
  out = {}
  for fold in folds(runs):
    for variant in inputs(runs, fold, strategy):
      maps, reference, spacing, _ = member_maps(runs, fold, strategy, variant)
      probability = np.mean(maps, axis=0)
      row = []
      for peak in peaks:
        scores = metrics.evaluate_masks(mask_at(probability, spacing, threshold,
                                                min_lesion_mm3, peak), reference, spacing,
                                        surface=False)
        f1 = scores["lesion_f1"]
        if f1 is None and scores["ref_lesions"]:  # every lesion removed: none found, F1 0
          f1 = 0.0
        row.append((float("nan") if f1 is None else f1,
                    float("nan") if scores["dice"] is None else scores["dice"]))
      out[(fold, variant)] = row
  return out


def best_peak(runs: list[str], strategy: str, threshold: float, peaks=PEAKS,
              min_lesion_mm3: float = 0.0) -> tuple[float, str]:
  """The lesion peak (predict.min_lesion_peak) chosen on every left-out patient and input the
  runs scored, and how, for the model card: by mean lesion F1 (lesions found and lesions right,
  the measure a lesion count is read by) and the one-standard-error rule, nearest 0 (every
  lesion kept). Each peak's mean Dice is said beside."""
  sweep = peak_sweep(runs, strategy, threshold, peaks, min_lesion_mm3)
  cells = np.array(list(sweep.values()), np.float64)  # (patient-input, peak, [f1, dice])
  top, best, mean, se = one_standard_error(cells[..., 0], peaks, 0.0)
  dice = np.nanmean(cells[..., 1], axis=0)
  how = (f"the mean lesion F1 of {_what(runs, strategy, sweep)}, masks at p >= {threshold:g}: "
         + ", ".join(f"{100 * mean[i]:.1f} at {p:g}" for i, p in enumerate(peaks))
         + f" (mean Dice {', '.join(f'{100 * d:.1f}' for d in dice)}); best at {peaks[top]:g}")
  if best != top:
    how += (f"; {peaks[best]:g} chosen, the peak nearest 0 within one standard error of the "
            f"best ({100 * (mean[top] - mean[best]):.2f} below it, standard error "
            f"{100 * se[best]:.2f}, paired over {len(cells)} patient-inputs)")
  return float(peaks[best]), how
