"""`evaluate` mode: predicted masks (from predict) vs the cohort's references, in native space.

Per exam: every metric against the consensus (or the only rater), and Dice against each rater.
Writes `summary.json` (per exam + mean) and `metrics.csv` in the workdir.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from msjax import files
from msjax.data import cohort as cohort_lib
from msjax.data import nifti
from msjax.evaluate import metrics

HEADLINE = ("dice", "sensitivity", "precision", "lesion_f1", "abs_volume_diff_ml", "hd95_mm")


def find_prediction(pred_dir: str, exam_id: str) -> str | None:
  for candidate in (os.path.join(pred_dir, exam_id, "mask.nii.gz"),
                    os.path.join(pred_dir, "predictions", exam_id, "mask.nii.gz")):
    if os.path.exists(candidate):
      return candidate
  return None


def evaluate_exam(exam: cohort_lib.Exam, mask_path: str) -> dict:
  pred = nifti.read_nifti(mask_path, kind="mask")
  ref_path = exam.reference
  ref = nifti.read_nifti(ref_path, kind="mask")
  if not pred.grid.same_as(ref.grid):
    raise cohort_lib.InvalidInputError(
        f"{mask_path}: prediction grid {pred.grid.shape} differs from the reference {ref_path} "
        f"{ref.grid.shape}")
  row = {"exam_id": exam.exam_id, "patient_id": exam.patient_id, "prediction": mask_path,
         "reference": ref_path}
  row.update(metrics.evaluate_masks(pred.data, ref.data, ref.grid.spacing))
  for k, rater in enumerate(exam.raters):
    r = nifti.read_nifti(rater, kind="mask")
    row[f"dice_rater{k + 1}"] = metrics.voxel_metrics(pred.data, r.data)["dice"]
  return row


def mean_of(rows: list[dict]) -> dict:
  keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(
      rows[0][k], bool)] if rows else []
  out = {}
  for k in keys:
    vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
    if vals:
      out[k] = float(np.mean(vals))
  return out


def evaluate_predictions(cohort, pred_dir: str, exams=None, log=logging.info) -> dict:
  rows = []
  for exam in exams if exams is not None else cohort.exams:
    path = find_prediction(pred_dir, exam.exam_id)
    if path is None or exam.reference is None:
      continue
    row = evaluate_exam(exam, path)
    rows.append(row)
    log("[evaluate] %s: %s" % (exam.exam_id, "  ".join(f"{k} {row[k]:.3f}" for k in HEADLINE)))
  if not rows:
    raise cohort_lib.InvalidInputError(
        f"no exam has both a prediction under {pred_dir} and a reference mask in {cohort.root}")
  return {"exams": rows, "mean": mean_of(rows), "n": len(rows)}


def write_summary(summary: dict, workdir: str) -> tuple[str, str]:
  js = files.write_json(summary, os.path.join(workdir, "summary.json"))
  return js, files.write_csv(summary["exams"], os.path.join(workdir, "metrics.csv"))


def format_table(summary: dict) -> str:
  head = ["exam"] + list(HEADLINE)
  lines = ["  ".join(f"{h:>18s}" if i else f"{h:<18s}" for i, h in enumerate(head))]
  for r in summary["exams"] + [dict(summary["mean"], exam_id="MEAN")]:
    lines.append("  ".join([f"{r['exam_id']:<18s}"] + [f"{r.get(k, float('nan')):18.3f}"
                                                       for k in HEADLINE]))
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
