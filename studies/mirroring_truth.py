"""Test-time mirroring judged against the consensus, not against the 8-flip default (issue 36):
each leave-one-out fold's network on its left-out Lesjak patient (as leave_one_out scored it:
the exam as given, p >= 0.5), predicted with 8 flips of every window (nnU-Net), the flips spread
over the windows (the compute of none) and none; Dice, lesion F1 and mL against consensus_gt.

  python studies/mirroring_truth.py --run runs/loo_tp --run runs/loo_tp_s1 \\
      --out docs/results/mirroring_truth.md
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from msjax.configs import leave_one_out as loo_config  # noqa: E402
from msjax.data import cohort as cohort_lib  # noqa: E402
from msjax.evaluate import metrics  # noqa: E402
from msjax.infer import predict  # noqa: E402

ARMS = (("8 flips", True, "all"), ("spread", True, "spread"), ("none", False, "all"))


def score(run: str, strategy: str, exams: dict, base: predict.PredictOptions) -> list[dict]:
  rows = []
  for fold in sorted(os.listdir(os.path.join(run, "folds"))):
    patient = fold.removeprefix("test_")
    predictor = predict.Predictor(os.path.join(run, "folds", fold, strategy))
    exam = exams[patient]
    ref = nib.load(exam.reference)  # in the file's voxel order, as segment_exam gives its mask
    ref_mask, spacing = np.asarray(ref.dataobj) > 0, ref.header.get_zooms()[:3]
    for name, mirror, flips in ARMS:
      t = time.time()
      seg = predict.segment_exam(predictor, exam, dataclasses.replace(base, mirror=mirror,
                                                                       flips=flips))
      s = time.time() - t
      m = metrics.evaluate_masks(seg.mask > 0, ref_mask, spacing)
      rows.append({"run": run, "patient": patient, "arm": name, "dice": 100 * m["dice"],
                   "lesion_f1": 100 * m["lesion_f1"], "ml": m["pred_volume_ml"],
                   "ref_ml": m["ref_volume_ml"], "seconds": s})
      print(f"{run} {patient} {name}: Dice {rows[-1]['dice']:.1f} lesion F1 "
            f"{rows[-1]['lesion_f1']:.1f} {m['pred_volume_ml']:.2f} mL ({s:.0f} s)", flush=True)
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| run | left out | arm | Dice | lesion F1 | mL (reference) | network + export s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['run']} | {r['patient']} | {r['arm']} | {r['dice']:.1f} | "
                 f"{r['lesion_f1']:.1f} | {r['ml']:.2f} ({r['ref_ml']:.2f}) | {r['seconds']:.0f} |")
  lines += ["", "| arm | mean Dice | mean lesion F1 | pairs |", "| --- | --- | --- | --- |"]
  for name, _, _ in ARMS:
    mine = [r for r in rows if r["arm"] == name]
    lines.append(f"| {name} | **{np.mean([r['dice'] for r in mine]):.1f}** | "
                 f"{np.mean([r['lesion_f1'] for r in mine]):.1f} | {len(mine)} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--run", action="append", required=True, help="a leave_one_out workdir")
  p.add_argument("--strategy", default="0CF")
  p.add_argument("--labelled", default="../shared/data/lesjak_mni")
  p.add_argument("--out", required=True)
  p.add_argument("--note", default="")
  a = p.parse_args(argv)
  base = predict.PredictOptions.from_config(loo_config.get_config().predict)
  exams = {e.exam_id: e for e in cohort_lib.load_cohort(a.labelled).exams}
  rows = [r for run in a.run for r in score(run, a.strategy, exams, base)]
  text = (results.header(
      "Test-time mirroring against the consensus (leave-one-out folds)",
      argv=argv)
          + (a.note + "\n\n" if a.note else "") + table(rows) + "\n")
  print(text)
  results.write(a.out, text)


if __name__ == "__main__":
  main()
