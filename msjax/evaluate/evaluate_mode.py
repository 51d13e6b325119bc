"""`evaluate` mode: predicted masks (from predict) vs the cohort's references, in native space.

Per exam: every metric against the consensus (or the only rater), and Dice against each rater.
Writes `summary.json` (per exam, the mean of every measure and over how many exams it was taken)
and `metrics.csv` in the workdir. Undefined values (see metrics.py) are `null` in JSON and empty
cells in CSV, and are left out of the means. With `--config.change_reference=DIR` it scores the
change maps of a `longitudinal` workdir instead (msjax/longitudinal/evaluate.py).
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from msjax import errors, files
from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti
from msjax.evaluate import metrics
from msjax.infer import outputs

HEADLINE = ("dice", "sensitivity", "precision", "lesion_f1", "abs_volume_diff_ml", "hd95_mm")


def find_prediction(pred_dir: str, exam) -> str | None:
  """The exam's mask in a predictions folder (BIDS-derivative names, msjax/infer/outputs.py),
  or in the predict workdir holding it."""
  for candidate in (outputs.paths(pred_dir, exam)["mask"],
                    outputs.paths(os.path.join(pred_dir, "predictions"), exam)["mask"]):
    if os.path.exists(candidate):
      return candidate
  return None


def _file_order(volume: nifti.Volume):
  """The mask in its file's voxel order with that order's voxel sizes: the evaluator numbers
  lesions by a raster scan of the file, which decides ties (metrics.lesion_labels)."""
  grid = volume.grid
  spacing = tuple(float(s) for s in np.sqrt((grid.source_affine[:3, :3] ** 2).sum(axis=0)))
  return nifti.to_source_orientation(volume.data, grid), spacing


def evaluate_exam(exam: manifest_lib.Exam, mask_path: str) -> dict:
  pred = nifti.read_nifti(mask_path, kind="mask")
  ref_path = exam.reference
  ref = nifti.read_nifti(ref_path, kind="mask")
  if not pred.grid.same_as(ref.grid):
    raise errors.InvalidInputError(
        f"{mask_path}: prediction grid {pred.grid.shape} differs from the reference {ref_path} "
        f"{ref.grid.shape}")
  row = {"exam_id": exam.exam_id, "patient_id": exam.patient_id, "prediction": mask_path,
         "reference": ref_path}
  (p, spacing), (r, _) = _file_order(pred), _file_order(ref)
  row.update(metrics.evaluate_masks(p, r, spacing))
  for k, rater in enumerate(exam.raters):
    rv = nifti.read_nifti(rater, kind="mask")
    row[f"dice_rater{k + 1}"] = metrics.voxel_metrics(pred.data, rv.data)["dice"]
  return row


def evaluate_predictions(cohort, pred_dir: str, exams=None, log=logging.info) -> dict:
  rows = []
  for exam in exams if exams is not None else cohort.exams:
    path = find_prediction(pred_dir, exam)
    if path is None or exam.reference is None:
      continue
    row = evaluate_exam(exam, path)
    rows.append(row)
    log("[evaluate] %s: %s" % (exam.exam_id, "  ".join(f"{k} {metrics.fmt(row[k])}" for k in HEADLINE)))
  if not rows:
    raise errors.InvalidInputError(
        f"no exam has both a prediction under {pred_dir} and a reference mask in {cohort.root}")
  mean, n_defined = metrics.mean_of(rows)
  return {"exams": rows, "mean": mean, "mean_n": n_defined, "n": len(rows)}


def write_summary(summary: dict, workdir: str) -> tuple[str, str]:
  js = files.write_json(summary, os.path.join(workdir, "summary.json"))
  return js, files.write_csv(summary["exams"], os.path.join(workdir, "metrics.csv"))


def format_table(summary: dict) -> str:
  """One row per exam, the mean, and over how many exams each mean was taken ("undef": the
  measure is undefined for that exam, e.g. precision of an empty prediction)."""
  head = ["exam"] + list(HEADLINE)
  lines = ["  ".join(f"{h:>18s}" if i else f"{h:<18s}" for i, h in enumerate(head))]
  for r in summary["exams"] + [dict(summary["mean"], exam_id="MEAN")]:
    lines.append("  ".join([f"{r['exam_id']:<18s}"] + [f"{metrics.fmt(r.get(k)):>18s}"
                                                       for k in HEADLINE]))
  n = summary.get("mean_n", {})
  lines.append("  ".join([f"{'(mean over n)':<18s}"] + [f"{n.get(k, 0):>18d}" for k in HEADLINE]))
  return "\n".join(lines)


def run(config, workdir: str):
  if not config.predictions or not config.cohort:
    raise ValueError("evaluate needs --config.predictions=<predict workdir> and "
                     "--config.cohort=PATH")
  cohort = cohort_lib.load_cohort(config.cohort)
  summary = evaluate_predictions(cohort, config.predictions)
  js, csv_path = write_summary(summary, workdir)
  print(format_table(summary))
  print(f"[evaluate] {summary['n']} exam(s): {js}, {csv_path}")
  return summary
