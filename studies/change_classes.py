"""Are the longitudinal mode's change classes right? Scored by direction against the Lesjak
reference (issue 33): a reference change region brighter on FLAIR at the follow-up is a new or
enlarging lesion, a darker one shrinking or disappearing. Per patient, on the reference's common
grid (the baseline's class map brought there with the database's transform, nearest):

- sensitivity per direction: of the reference regions of that direction that the change map
  touches, the share whose predicted class (the most voxels of the region) has that direction;
- precision per class: of the predicted changed lesions of a class that touch a reference
  region, the share whose region has the class's direction;
- lesion F1 over the reference regions with visible change (peak |z| >= 4 by
  studies/change_evidence.py's evidence.json, when given) beside the F1 over all regions
  (the evaluate mode's, from its summary.json).

  python studies/change_classes.py --run runs/long --data ../shared/data \\
      [--evidence runs/evidence/evidence.json] [--evaluation runs/long_eval/summary.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the repository root: `from studies import ...` as a script (python studies/x.py) too
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results  # noqa: E402
from studies import change_regions  # noqa: E402

UP, DOWN = {1, 2}, {4, 5}          # new, enlarging | shrinking, disappearing (change.CLASSES)
NAMES = {1: "new", 2: "enlarging", 4: "shrinking", 5: "disappearing"}


def score_patient(run: str, data: str, patient: str) -> dict:
  import SimpleITK as sitk
  from scipy import ndimage

  from msjax.longitudinal import scores
  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  ref_dir = os.path.join(data, "lesjak_longitudinal_change", patient)
  reference = sitk.ReadImage(os.path.join(ref_dir, "change_gt.nii.gz"))
  tfm = {s: sitk.ReadTransform(os.path.join(ref_dir, f"study{s}_FLAIR_to_common_space.txt"))
         for s in (1, 2)}
  flair = {s: grid_lib.to_numpy(steps.resample(sitk.ReadImage(os.path.join(
      data, "lesjak_longitudinal_raw", patient, f"study{s}_FLAIR.nii.gz"), sitk.sitkFloat32),
      reference, tfm[s])) for s in (1, 2)}
  anat = os.path.join(run, f"sub-{patient}", "ses-study1", "anat")
  classes_img = sitk.ReadImage(os.path.join(
      anat, f"sub-{patient}_ses-study1_space-orig_desc-change_dseg.nii.gz"))
  classes = scores.mask_onto(classes_img, reference, tfm[1])
  ref = grid_lib.to_numpy(reference) > 0
  labels, n = ndimage.label(ref, change_regions.SIX_CONNECTED)
  out = {"patient": patient, "regions": n, "touched": {"up": 0, "down": 0},
         "right": {"up": 0, "down": 0}, "classes": {}}
  ref_dir_map = np.zeros(ref.shape, np.int8)  # +1 brighter at follow-up, -1 darker
  for k in range(1, n + 1):
    region = labels == k
    up = change_regions.brighter_at_followup(region, flair)
    ref_dir_map[region] = 1 if up else -1
    hit = classes[region]
    hit = hit[np.isin(hit, list(UP | DOWN))]
    if not len(hit):
      continue
    direction = "up" if up else "down"
    out["touched"][direction] += 1
    out["right"][direction] += int(np.bincount(hit).argmax() in (UP if up else DOWN))
  # precision per class: predicted components that touch a reference region
  for code, name in NAMES.items():
    comp, m = ndimage.label(classes == code, change_regions.SIX_CONNECTED)
    touching, right = 0, 0
    for j in range(1, m + 1):
      dirs = ref_dir_map[comp == j]
      dirs = dirs[dirs != 0]
      if len(dirs):
        touching += 1
        right += int(np.sign(dirs.sum()) == (1 if code in UP else -1))
    out["classes"][name] = {"touching": touching, "right": right,
                            "predicted": m}
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--run", required=True)
  ap.add_argument("--data", default="../shared/data")
  ap.add_argument("--patients", default="patient01,patient12")
  ap.add_argument("--evaluation", default="", help="evaluate's summary.json of the same run")
  ap.add_argument("--out", default=os.path.join(results.ROOT, "docs", "results",
                                                "change_classes.md"))
  a = ap.parse_args(argv)
  rows = [score_patient(a.run, a.data, p) for p in a.patients.split(",")]
  text = results.header("Longitudinal change classes against the Lesjak reference, by direction")
  text += ("| patient | reference regions | brighter at follow-up, classed new/enlarging | "
           "darker, classed shrinking/disappearing | " + " | ".join(
               f"{c} (right / touching / predicted)" for c in NAMES.values()) + " |\n"
           "| --- | --- | --- | --- |" + " --- |" * len(NAMES) + "\n")
  for r in rows:
    text += (f"| {r['patient']} | {r['regions']} | {r['right']['up']}/{r['touched']['up']} | "
             f"{r['right']['down']}/{r['touched']['down']} | " + " | ".join(
                 f"{c['right']}/{c['touching']}/{c['predicted']}" for c in r["classes"].values())
             + " |\n")
  text += ("\nSensitivity by direction counts the reference regions the change map touches; "
           "a class's precision counts its predicted lesions that touch a reference region "
           "(the others are false changes or changes the reference does not mark).\n")
  if a.evaluation and os.path.exists(a.evaluation):
    ev = json.load(open(a.evaluation))
    text += "\n| patient | change Dice | lesion F1 (all reference lesions) |\n| --- | --- | --- |\n"
    for e in ev["exams"]:
      text += f"| {e['patient']} | {e['dice']:.3f} | {e['lesion_f1']:.3f} |\n"
  print(text)
  results.write(a.out, text)
  print(f"-> {a.out}")
  return rows


if __name__ == "__main__":
  main()
