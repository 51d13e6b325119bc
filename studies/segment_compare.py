"""How segment's settings change its masks and its time (issue 36): segment workdirs of the same
exams, each against a reference workdir (today's default): per exam, lesion-mask Dice against
the reference's mask in the exam's own space, lesions and mL, the network's seconds.

  python -m msjax.main --config=segment --config.input=../shared/data/lesjak_longitudinal_raw \\
      --workdir runs/d36_default --config.overlap=False
  python -m msjax.main ... --workdir runs/d36_spread --config.predict.flips=spread
  python studies/segment_compare.py --reference default=runs/d36_default \\
      --run spread=runs/d36_spread --run none=runs/d36_none --out docs/results/mirroring.md

A run's `segment_summary.json` gives each exam's mask path and timings; an arm's seconds are
comparable with the others' only when they ran on a quiet machine (say so in --note).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from msjax.data import nifti  # noqa: E402


def exams_of(workdir: str) -> dict:
  """{exam_id: (summary row, mask path)} of a segment workdir's segmented exams."""
  with open(os.path.join(workdir, "segment_summary.json")) as f:
    rows = json.load(f)["exams"]
  return {r["exam_id"]: (r, os.path.join(workdir, r["files"]["mask"])) for r in rows
          if r.get("status", "").startswith("segmented") and r.get("files", {}).get("mask")}


def dice(a: np.ndarray, b: np.ndarray) -> float:
  total = a.sum() + b.sum()
  return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def compare(reference: str, runs: list[tuple[str, str]], also: str | None = None) -> list[dict]:
  """Each arm's exams against the reference's (and against `also`'s, a second workdir, when
  given: "dice_also")."""
  ref = exams_of(reference)
  second = exams_of(also) if also else {}
  rows = []
  for name, workdir in [("reference", reference)] + runs:
    mine = exams_of(workdir)
    for exam_id in sorted(ref):
      if exam_id not in mine:
        continue
      r, path = mine[exam_id]
      m = nifti.read_nifti(path, kind="mask").data > 0
      base = nifti.read_nifti(ref[exam_id][1], kind="mask").data > 0
      rows.append({"arm": name, "exam": exam_id, "dice": dice(m, base),
                   "lesions": r.get("lesions"), "ml": r.get("volume_ml"),
                   "infratentorial_ml": r.get("infratentorial_ml"),
                   "network_s": r.get("predict_s"), "seconds": r.get("seconds"),
                   "qc": r.get("qc")})
      if also:
        rows[-1]["dice_also"] = (dice(m, nifti.read_nifti(second[exam_id][1], kind="mask").data > 0)
                                 if exam_id in second else None)
  return rows


def table(rows: list[dict], names: list[str], also: str | None = None) -> str:
  extra = f" Dice vs {also} |" if also else ""
  lines = ["| arm | exam | Dice vs reference |" + extra + " lesions | mL | infratentorial mL | "
           "network s | exam s | QC |",
           "| --- | --- | --- |" + (" --- |" if also else "")
           + " --- | --- | --- | --- | --- | --- |"]
  for name in names:
    for r in (r for r in rows if r["arm"] == name):
      cell = f" {_num(r.get('dice_also'), 3)} |" if also else ""
      lines.append(f"| {name} | {r['exam']} | {r['dice']:.3f} |{cell} {r['lesions']} | "
                   f"{r['ml']:.2f} "
                   f"| {_num(r['infratentorial_ml'])} | {_num(r['network_s'], 1)} "
                   f"| {_num(r['seconds'], 1)} | {r['qc'] or '–'} |")
  return "\n".join(lines)


def _num(v, digits: int = 2) -> str:
  """A figure the run recorded, or '–' where it did not record one (no report, no timing)."""
  return "–" if v is None else f"{v:.{digits}f}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reference", required=True, help="NAME=WORKDIR")
  p.add_argument("--run", action="append", default=[], help="NAME=WORKDIR (repeatable)")
  p.add_argument("--out", required=True)
  p.add_argument("--note", default="")
  p.add_argument("--also-against", default="",
                 help="NAME of one --run: a second Dice column, every arm against that run")
  a = p.parse_args(argv)
  ref_name, ref_dir = a.reference.split("=", 1)
  runs = [tuple(r.split("=", 1)) for r in a.run]
  also = dict(runs).get(a.also_against) if a.also_against else None
  if a.also_against and also is None:
    p.error(f"--also-against {a.also_against!r}: not the NAME of a --run")
  rows = compare(ref_dir, runs, also)
  for r in rows:
    if r["arm"] == "reference":
      r["arm"] = ref_name
  text = (results.header(
      "segment's settings: masks against the reference and time",
      argv=argv)
          + (a.note + "\n\n" if a.note else "")
          + table(rows, [ref_name] + [n for n, _ in runs], a.also_against or None) + "\n")
  print(text)
  results.write(a.out, text)


if __name__ == "__main__":
  main()
