"""Lesion-change F1 over the reference lesions whose change is visible (issue 33): a longitudinal
run's change masks against the Lesjak reference, sensitivity counted over the reference lesions
whose peak |change z| reaches τ (studies/change_evidence.py's evidence, default τ = 4), precision
over every predicted change lesion as usual (a predicted lesion on a faint reference lesion is
right, not false), beside the all-lesion F1 and the voxel Dice.

  msjax --config=longitudinal:fast --config.input=../shared/data/lesjak_longitudinal_raw \\
      --workdir runs/long_fast
  python studies/visible_change.py --longitudinal runs/long_fast \\
      --out docs/results/visible_change.md

Why: 6 of patient01's 14 and 22 of patient12's 50 reference lesions never reach |z| 3 on any map
(docs/lab_notebook.md, "How much of a reference can any detector find?"): no detector working
from the images can find them, so the all-lesion F1 is capped far below 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from studies import change_evidence, results  # noqa: E402

from msjax.data.lesions import lesion_labels  # noqa: E402
from msjax.evaluate import metrics  # noqa: E402
from msjax.longitudinal import evaluate as change_evaluate  # noqa: E402
from msjax.longitudinal import scores  # noqa: E402


def f1(s, p):
  return None if s is None or p is None else (0.0 if s + p == 0 else 2 * s * p / (s + p))


def score_patient(data: str, run: str, summary: dict, tau: float) -> dict:
  import SimpleITK as sitk
  ref_path, tfms = change_evaluate.reference_of(
      os.path.join(data, "lesjak_longitudinal_change"), summary)
  reference = sitk.ReadImage(ref_path)
  to_visit = sitk.ReadTransform(tfms["baseline"])
  change_mask = sitk.ReadImage(os.path.join(run, summary["files"]["baseline_mask"]))
  pred = scores.mask_onto(change_mask, reference, to_visit) > 0
  maps, ref, brain, spacing = change_evidence.lesjak_maps(data, summary["patient"])
  labels, n_ref, peaks = change_evidence.lesion_peaks(maps, ref, brain, spacing)
  return dict(patient=summary["patient"], **visible_scores(labels, n_ref, peaks, pred, ref, spacing,
                                                           tau))


def visible_scores(labels, n_ref: int, peaks, pred, ref, spacing, tau: float) -> dict:
  """Scores of a change mask `pred` against reference lesions `labels` (1..n_ref) whose peak
  evidence is `peaks` (label order): sensitivity over those with peak >= tau, precision over every
  predicted lesion."""
  pred_labels, n_pred = lesion_labels(pred, float(np.prod(spacing)))
  table = metrics.overlap_table(labels, n_ref, pred_labels, n_pred)
  detected = (np.array(metrics.detected_lesions(table), bool) if n_ref and n_pred
              else np.zeros(n_ref, bool))
  confirmed = sum(metrics.detected_lesions(table.T)) if n_ref and n_pred else 0
  visible = peaks >= tau
  precision = metrics.ratio(confirmed, n_pred)
  sens_all = metrics.ratio(int(detected.sum()), n_ref)
  sens_vis = metrics.ratio(int(detected[visible].sum()), int(visible.sum()))
  voxel = metrics.voxel_metrics(pred.astype(np.uint8), (ref > 0).astype(np.uint8))
  return {"reference_lesions": n_ref,
          "visible": int(visible.sum()), "found_visible": int(detected[visible].sum()),
          "found_faint": int(detected[~visible].sum()), "predicted": n_pred,
          "confirmed": int(confirmed), "precision": precision,
          "sensitivity_visible": sens_vis, "f1_visible": f1(sens_vis, precision),
          "sensitivity_all": sens_all, "f1_all": f1(sens_all, precision),
          "dice": voxel["dice"]}


def pct(v) -> str:
  return "–" if v is None else f"{v:.2f}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default="../shared/data")
  p.add_argument("--longitudinal", required=True, help="a longitudinal workdir over the raw pairs")
  p.add_argument("--tau", type=float, default=4.0)
  p.add_argument("--out", default=os.path.join(results.ROOT, "docs", "results",
                                               "visible_change.md"))
  a = p.parse_args(argv)
  with open(os.path.join(a.longitudinal, "longitudinal_summary.json")) as f:
    run = json.load(f)
  rows = []
  for summary in run["patients"]:
    print(f"[visible_change] {summary['patient']} ...", flush=True)
    rows.append(score_patient(a.data, a.longitudinal, summary, a.tau))
  text = results.header("Lesion-change F1 over the reference lesions with visible change")
  text += (f"Change masks of `{os.path.basename(os.path.normpath(a.longitudinal))}` (model "
           f"{os.path.basename(str(run.get('model', '')))}) on the reference's grid. A reference "
           f"lesion is visible when its peak |change z| (FLAIR smoothed and unsmoothed, T2) "
           f"reaches {a.tau:g}; sensitivity over those, precision over every predicted change "
           f"lesion (MSSEG-2016 rule).\n\n")
  text += ("| patient | reference lesions | visible | found visible | found faint | predicted "
           "| confirmed | precision | F1 visible | F1 all | change Dice |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
  for r in rows:
    text += (f"| {r['patient']} | {r['reference_lesions']} | {r['visible']} | "
             f"{r['found_visible']} | {r['found_faint']} | {r['predicted']} | {r['confirmed']} | "
             f"{pct(r['precision'])} | **{pct(r['f1_visible'])}** | {pct(r['f1_all'])} | "
             f"{pct(r['dice'])} |\n")
  print(text)
  results.write(a.out, text)
  print(f"-> {a.out}")


if __name__ == "__main__":
  main()
