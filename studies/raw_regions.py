"""The shipped model on the raw longitudinal Lesjak exams (issue 32): of each patient's reference
change regions, those found in the mask of the visit where they are lesion, at >= 10 % and
>= 50 % coverage, with each visit's mask volume beside (studies/change_regions.py).

  msjax --config=segment --config.input=../shared/data/lesjak_longitudinal_raw --workdir runs/seg
  python studies/raw_regions.py --segmentations runs/seg --out docs/results/raw_regions.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the repository root: `from studies import ...` as a script (python studies/x.py) too
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results  # noqa: E402

from studies import change_regions  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", default="../shared/data")
  ap.add_argument("--segmentations", required=True)
  ap.add_argument("--patients", default="patient01,patient12")
  ap.add_argument("--note", default="", help="what the run was (model, settings, machine load)")
  ap.add_argument("--out", default=os.path.join(results.ROOT, "docs", "results",
                                                "raw_regions.md"))
  a = ap.parse_args(argv)
  rows = [change_regions.check_patient(a.data, a.segmentations, p)
          for p in a.patients.split(",")]
  summary_path = os.path.join(a.segmentations, "segment_summary.json")
  model, seconds = "", {}
  if os.path.exists(summary_path):
    s = json.load(open(summary_path))
    model = s.get("model", "")
    seconds = {e["exam_id"]: e.get("seconds") for e in s.get("exams", []) + s.get("resumed", [])}
  text = results.header("Reference change regions found in the raw exams' masks")
  text += (f"Masks by `segment`{' with ' + model if model else ''} on "
           "`lesjak_longitudinal_raw` (no label of these exams was used in training). A region "
           "brighter on FLAIR at study 2 must be lesion in study 2's mask, a darker one in "
           "study 1's." + (f" {a.note}" if a.note else "")
           + "\n\n| patient | regions | found (>= 10 %) | found (>= 50 %) | brighter "
           "found | darker found | mask mL study 1 | mask mL study 2 |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- |\n")
  for r in rows:
    text += (f"| {r['patient']} | {r['regions']} | {r['found']} | {r['found_50']} | "
             f"{r['brighter_found']}/{r['brighter']} | {r['darker_found']}/{r['darker']} | "
             f"{r['study1_ml']:.2f} | {r['study2_ml']:.2f} |\n")
  if seconds:
    text += "\nSeconds per exam (segment, end to end in its run): " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(seconds.items()) if v is not None) + "\n"
  print(text)
  results.write(a.out, text)
  print(f"-> {a.out}")


if __name__ == "__main__":
  main()
