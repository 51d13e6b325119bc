"""The Lesjak longitudinal pairs against their reference change masks, beside the naive baseline.

  python studies/lesjak_longitudinal.py --data ../shared/data --out runs/longitudinal

Per patient with raw exams (lesjak_longitudinal_raw/<patient>/study{1,2}_*) and a reference
(lesjak_longitudinal_change/<patient>/change_gt.nii.gz + studyN_FLAIR_to_common_space.txt):
run_patient on study1 -> study2, scored on the reference's own (common) grid, and on each visit's
native FLAIR grid with the reference brought there by nearest neighbour; the naive baseline (two
FLAIR-threshold segmentations, threshold fitted on lesjak_mni's labelled exams) differenced on the
common grid. With --segmentations (a `segment` or `longitudinal` output folder holding
sub-<patient>/ses-study{1,2}/anat/*_space-orig_label-lesion_probseg.nii.gz of these raw exams, e.g.
`msjax --config=segment --config.input=<data>/lesjak_longitudinal_raw`), each visit's lesion
probability joins the change decision as the mode does with a model (change.detect).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from msjax import files
from msjax.longitudinal import naive, run, scores


def exam_files(folder: str, study: str) -> dict:
  out = {"FLAIR": os.path.join(folder, f"{study}_FLAIR.nii.gz")}
  t2 = os.path.join(folder, f"{study}_T2W.nii.gz")
  if os.path.exists(t2):
    out["T2W"] = t2
    tfm = os.path.join(folder, f"{study}_T2W_intrastudy_to_FLAIR.txt")
    if os.path.exists(tfm):
      out["T2W_transform"] = tfm
  return out


def patients(data: str) -> list[str]:
  raw, ref = (os.path.join(data, d) for d in ("lesjak_longitudinal_raw",
                                               "lesjak_longitudinal_change"))
  if not (os.path.isdir(raw) and os.path.isdir(ref)):
    return []
  return sorted(p for p in os.listdir(ref) if os.path.isdir(os.path.join(raw, p)))


def fit_naive_threshold(mni_folder: str) -> dict:
  """The FLAIR z threshold of the naive baseline, fitted on lesjak_mni (skull-stripped: brain =
  non-zero voxels)."""
  import nibabel as nib
  images, brains, refs = [], [], []
  for p in sorted(os.listdir(mni_folder)):
    image = np.asarray(nib.load(os.path.join(mni_folder, p, "FLAIR.nii.gz")).dataobj, np.float32)
    images.append(image)
    brains.append(image != 0)
    refs.append(np.asarray(nib.load(os.path.join(mni_folder, p, "consensus_gt.nii.gz")).dataobj))
  return dict(naive.fit_threshold(images, brains, refs), fitted_on=sorted(os.listdir(mni_folder)))


def probseg_files(folder: str, patient: str) -> tuple:
  """The two visits' probability maps in a segment output folder (BIDS derivatives)."""
  out = tuple(os.path.join(folder, f"sub-{patient}", f"ses-{s}", "anat",
                           f"sub-{patient}_ses-{s}_space-orig_label-lesion_probseg.nii.gz")
              for s in ("study1", "study2"))
  missing = [p for p in out if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"no probability map {missing[0]}")
  return out


def evaluate_patient(data: str, patient: str, out_dir: str, threshold_z: float | None,
                     options: run.Options | None = None, log=print,
                     probabilities: tuple | None = None, mask_rule: dict | None = None) -> dict:
  import SimpleITK as sitk
  raw = os.path.join(data, "lesjak_longitudinal_raw", patient)
  ref_dir = os.path.join(data, "lesjak_longitudinal_change", patient)
  visits = [exam_files(raw, s) for s in ("study1", "study2")]
  log(f"[longitudinal] {patient}")
  result = run.run_patient(visits[0], visits[1], os.path.join(out_dir, patient), options, log=log,
                           probabilities=probabilities, **(mask_rule or {}))
  reference = sitk.ReadImage(os.path.join(ref_dir, "change_gt.nii.gz"))
  to_visit = [sitk.ReadTransform(os.path.join(ref_dir, f"study{k}_FLAIR_to_common_space.txt"))
              for k in (1, 2)]
  from msjax.preprocess import grid as grid_lib
  ref_common = grid_lib.to_numpy(reference)
  rows = {}
  decision = sitk.ReadImage(result["paths"]["decision_change_classes"])
  rows["method_common"] = scores.change_scores(
      scores.mask_onto(decision, reference, to_visit[0]), ref_common, reference.GetSpacing())
  for k, visit in enumerate(("baseline", "followup")):
    mask = sitk.ReadImage(result["paths"][f"{visit}_change_mask"])
    rows[f"method_{visit}"] = scores.change_scores(
        grid_lib.to_numpy(mask), scores.reference_on_visit(reference, mask, to_visit[k]),
        mask.GetSpacing())
  if threshold_z is not None:
    t = time.time()
    masks = [naive.segment_visit(v["FLAIR"], threshold_z) for v in visits]
    rows["naive_common"] = scores.change_scores(naive.naive_change(masks, to_visit, reference),
                                                ref_common, reference.GetSpacing())
    rows["naive_common"]["time_s"] = round(time.time() - t, 1)
  return {"patient": patient, "probabilities": probabilities, "scores": rows,
          "times_s": result["times_s"],
          "counts": result["counts"], "change_ml": result["change_ml"]}


def table(results: list[dict]) -> str:
  f = lambda v, d=2: "" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
  lines = ["| patient | grid | method | ref mL | ref lesions | detected | pred lesions | false | "
           "lesion F1 | Dice | pred mL |", "|" + " --- |" * 11]
  for r in results:
    for key, s in r["scores"].items():
      method, grid = key.split("_", 1)
      lines.append(f"| {r['patient']} | {grid} | {method} | {f(s['ref_volume_ml'])} | "
                   f"{s['ref_lesions']} | {s['detected_lesions']} | {s['pred_lesions']} | "
                   f"{s['false_lesions']} | {f(s['lesion_f1'])} | {f(s['dice'])} | "
                   f"{f(s['pred_volume_ml'])} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="../shared/data")
  parser.add_argument("--out", default="runs/longitudinal")
  parser.add_argument("--no-t2", action="store_true")
  parser.add_argument("--no-naive", action="store_true")
  parser.add_argument("--segmentations", default="",
                      help="segment outputs of these raw exams: their probabilities join the "
                           "change decision")
  parser.add_argument("--model", default="msjax-lesjak",
                      help="the model that made the segmentations: its bundle's threshold, lesion "
                           "peak and smallest lesion make each visit's mask from its probabilities "
                           "(segment's rule)")
  parser.add_argument("--min-lesion-peak", type=float, default=None,
                      help="instead of the model's lesion peak (0: every lesion of the threshold "
                           "mask, as before the change decision read segment's masks)")
  args = parser.parse_args(argv)
  mask_rule = None
  if args.segmentations:
    from msjax import segment
    from msjax.configs import segment as segment_config
    from msjax.longitudinal import mode
    options = segment.inference_options(segment_config.get_config(),
                                        segment.load_bundle(args.model))
    mask_rule = mode.mask_rule(options)
    if args.min_lesion_peak is not None:
      mask_rule["min_lesion_peak"] = args.min_lesion_peak
    print("the network's masks:", mask_rule)
  options = run.Options(use_t2=not args.no_t2)
  threshold = None if args.no_naive else fit_naive_threshold(
      os.path.join(args.data, "lesjak_mni"))
  print("naive threshold", threshold)
  results = [evaluate_patient(args.data, p, args.out, threshold and threshold["threshold_z"],
                              options, probabilities=probseg_files(args.segmentations, p)
                              if args.segmentations else None, mask_rule=mask_rule)
             for p in patients(args.data)]
  files.write_json({"naive_threshold": threshold, "results": results},
                   os.path.join(args.out, "results.json"))
  md = table(results)
  files.write_text(md + "\n", os.path.join(args.out, "results.md"))
  print(md)
  print(json.dumps({r["patient"]: r["times_s"] for r in results}))


if __name__ == "__main__":
  main()
