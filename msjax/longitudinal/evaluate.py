"""`evaluate` of change maps: `--config.predictions=<longitudinal workdir>
--config.change_reference=DIR` scores every patient of a `longitudinal` run against a reference
change mask with msjax/longitudinal/scores.py (voxel change Dice, lesion-wise change sensitivity /
precision / F1 by the MSSEG-2016 rule, change volume in mL).

DIR holds one folder per patient (named as the input's patient folder, `sub-<label>` or the
label) with the reference change mask (the NIfTI whose name holds `change`, or the only one) and,
when the reference lies in a common space, one ITK transform per visit named
`<session>_*to_common_space.txt` (Lesjak's convention: common-space points -> that visit's FLAIR
points). Without transforms the reference is in the baseline's space.

Per patient: the scores on the reference's own grid (the baseline's change mask brought there,
nearest) and lesion F1 / Dice on each visit's native grid (the reference brought there, nearest).
Writes summary.json and metrics.csv as the segmentation evaluate does.
"""
from __future__ import annotations

import os

from absl import logging

from msjax import errors, files
from msjax.evaluate import metrics
from msjax.infer import outputs
from msjax.data.scan import bids_label

HEADLINE = ("dice", "lesion_sensitivity", "lesion_precision", "lesion_f1", "ref_lesions",
            "false_lesions", "ref_volume_ml", "pred_volume_ml")


def reference_of(ref_root: str, summary: dict):
  """(reference mask path, {visit: transform path} or None) of a patient, or None if absent."""
  for name in (summary.get("patient_id"), f"sub-{summary['patient']}", summary["patient"]):
    folder = os.path.join(ref_root, name or "")
    if name and os.path.isdir(folder):
      break
  else:
    return None
  niftis = sorted(n for n in os.listdir(folder) if n.endswith((".nii", ".nii.gz")))
  named = [n for n in niftis if "change" in n.lower()]
  if len(named or niftis) != 1:
    raise errors.InvalidInputError(f"{folder}: expected one reference change mask (a NIfTI named "
                                   f"*change*), found {named or niftis}")
  tfms = {}
  for visit in ("baseline", "followup"):
    ses = summary[visit]["session"]
    hits = [n for n in os.listdir(folder) if n.endswith("to_common_space.txt")
            and bids_label(n.split("_")[0]) == ses]
    if hits:
      tfms[visit] = os.path.join(folder, hits[0])
  if tfms and len(tfms) != 2:
    raise errors.InvalidInputError(f"{folder}: a common-space transform for one visit only "
                                   f"({sorted(tfms)}); both or neither")
  return os.path.join(folder, (named or niftis)[0]), tfms or None


def evaluate_patient(summary: dict, pred_root: str, ref_path: str, tfms) -> dict:
  import SimpleITK as sitk

  from msjax.longitudinal import scores
  from msjax.preprocess import grid as grid_lib
  reference = sitk.ReadImage(ref_path)
  masks = {v: sitk.ReadImage(os.path.join(pred_root, summary["files"][f"{v}_mask"]))
           for v in ("baseline", "followup")}
  if tfms:
    to_visit = {v: sitk.ReadTransform(p) for v, p in tfms.items()}
  else:  # the reference in the baseline's space; the follow-up by the run's own registration
    to_visit = {"baseline": sitk.Transform(), "followup": sitk.ReadTransform(
        os.path.join(pred_root, summary["files"]["transform"]))}
  row = {"patient": summary["patient"], "prediction": summary["files"]["baseline_mask"],
         "reference": ref_path}
  row.update(scores.change_scores(scores.mask_onto(masks["baseline"], reference,
                                                   to_visit["baseline"]),
                                  grid_lib.to_numpy(reference), reference.GetSpacing()))
  for visit, mask in masks.items():
    s = scores.change_scores(grid_lib.to_numpy(mask),
                             scores.reference_on_visit(reference, mask, to_visit[visit]),
                             mask.GetSpacing())
    row.update({f"{k}_{visit}_grid": s[k] for k in ("dice", "lesion_f1", "ref_lesions")})
  return row


def run(config, workdir: str) -> dict:
  if not config.predictions:
    raise errors.InvalidInputError("evaluate with --config.change_reference needs "
                                   "--config.predictions=<longitudinal workdir>")
  summaries = outputs.find_summaries(config.predictions, "_desc-change_summary.json", "patient")
  rows = []
  for s in summaries:
    found = reference_of(config.change_reference, s)
    if found is None:
      logging.info("[evaluate] sub-%s: no reference in %s", s["patient"], config.change_reference)
      continue
    rows.append(evaluate_patient(s, config.predictions, *found))
    logging.info("[evaluate] sub-%s: %s", s["patient"], "  ".join(
        f"{k} {metrics.fmt(rows[-1][k])}" for k in HEADLINE))
  if not rows:
    raise errors.InvalidInputError(
        f"no patient of {config.predictions} ({len(summaries)} change summaries) has a reference "
        f"change mask in {config.change_reference}")
  mean, n = metrics.mean_of(rows)
  summary = {"exams": rows, "mean": mean, "mean_n": n, "n": len(rows)}
  js = files.write_json(summary, os.path.join(workdir, "summary.json"))
  csv_path = files.write_csv(rows, os.path.join(workdir, "metrics.csv"))
  for r in rows + [dict(mean, patient="MEAN")]:
    print(f"{r['patient']:<12s}" + "  ".join(f"{k} {metrics.fmt(r.get(k))}"
                                             for k in HEADLINE))
  print(f"[evaluate] change maps of {len(rows)} patient(s): {js}, {csv_path}")
  return summary
