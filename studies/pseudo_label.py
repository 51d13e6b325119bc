"""Self-training on the leave-one-out: the unlabelled exams labelled by the fold's own networks.

Each leave-one-out fold trains on ONE labelled patient. The raw longitudinal exams (4 exams of 2
more patients, 3-4 mm clinical slices) hold real MS lesions in other brains and another scanner's
images, but no lesion masks. Noisy-student self-training (Xie et al., CVPR 2020; in medical
segmentation e.g. Bai et al., MICCAI 2017) labels them with a teacher and trains a student, with
augmentation, on the labelled and the pseudo-labelled exams together.

To stay honest, the teacher of fold P is the fold's own networks (trained without patient P):
the given leave-one-out workdirs' `folds/test_P/0CF` at each seed, their probability maps
averaged as the shipped ensemble averages its members, masked by the shipped model's rule
(p >= 0.5, lesions peaking under 0.75 removed). This script writes, for one fold, the
pseudo-labelled exams and a manifest holding the labelled cohort plus those exams under one
patient id (the loader draws one patient per group: the real patient and the pseudo-labelled set
get half the groups each). Then the student is the shipped recipe run on that manifest for that
fold:

  python studies/pseudo_label.py --fold patient07 --teachers runs/loo_ft2400_renorm_s0,\
runs/loo_ft2400_renorm_s1,runs/loo_ft2400_renorm_s2 \
      --exams runs/loo_w16_pre2400_s0/preprocessed/cohort --out runs/pseudo_patient07
  msjax --config configs/lesjak.py --config.labelled=runs/pseudo_patient07/cohort.json \
      --config.folds=patient07 ... --workdir runs/loo_pseudo_patient07
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax import errors, files, leave_one_out, stages  # noqa: E402
from msjax.data import cohort as cohort_lib, lesions  # noqa: E402
from msjax.infer import outputs, predict  # noqa: E402

PSEUDO_PATIENT = "pseudo_labelled"


def teacher_maps(teachers: list[str], fold: str, exams, out: str) -> dict[str, np.ndarray]:
  """exam id -> the fold's networks' mean probability map (on the exam's grid)."""
  options = predict.PredictOptions.from_config(mirror=True)  # the leave-one-out's 8 flips
  total: dict[str, np.ndarray] = {}
  for k, run in enumerate(teachers):
    run_dir = os.path.join(run, "folds", f"test_{fold}", "0CF")
    if not os.path.isdir(run_dir):
      raise errors.InvalidInputError(f"{run}: no network of fold {fold} ({run_dir} is missing)")
    pred_dir = os.path.join(out, "teachers", f"seed{k}")
    stages.predict(run_dir, exams, pred_dir, options)
    for exam in exams:
      p = np.asarray(nib.load(outputs.paths(pred_dir, exam)["probseg"]).dataobj, np.float32)
      total[exam.exam_id] = total.get(exam.exam_id, 0) + p / len(teachers)
  return total


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--fold", required=True, help="the patient left out (its teachers never saw it)")
  ap.add_argument("--teachers", required=True, help="leave-one-out workdirs, comma-separated")
  ap.add_argument("--exams", required=True, help="unlabelled exams on the model grid (a cohort)")
  ap.add_argument("--labelled", default="../shared/data/lesjak_mni")
  ap.add_argument("--out", required=True)
  ap.add_argument("--threshold", type=float, default=0.5)
  ap.add_argument("--min-lesion-peak", type=float, default=0.75)
  args = ap.parse_args(argv)
  # exams without a mask only (a real label is never replaced by a teacher's); native=None: the
  # maps and masks stay on the exams' model grid, not taken back to the raw FLAIR's space
  unlabelled = [dataclasses.replace(e, native=None)
                for e in cohort_lib.load_cohort(args.exams).select(labelled=False)]
  if not unlabelled:
    raise errors.InvalidInputError(f"{args.exams}: no exam without a lesion mask to label")
  maps = teacher_maps(args.teachers.split(","), args.fold, unlabelled, args.out)
  pseudo, report = [], {}
  for exam in unlabelled:
    flair = nib.load(exam.images["FLAIR"])
    voxel_mm3 = float(np.prod(flair.header.get_zooms()[:3]))
    mask = lesions.mask_of(maps[exam.exam_id], voxel_mm3, args.threshold,
                           min_lesion_peak=args.min_lesion_peak)
    path = os.path.join(args.out, "masks", f"{exam.exam_id}_pseudo.nii.gz")
    with files.atomic(path) as tmp:
      nib.save(nib.Nifti1Image(mask.astype(np.uint8), flair.affine), tmp)
    n = int(ndimage.label(mask, structure=lesions.SIX_CONNECTED)[1])
    report[exam.exam_id] = {"mL": round(float(mask.sum()) * voxel_mm3 / 1000, 2), "lesions": n}
    print(f"{exam.exam_id}: {report[exam.exam_id]['mL']:.2f} mL, {n} lesions")
    pseudo.append(dataclasses.replace(exam, patient_id=PSEUDO_PATIENT, consensus=path,
                                      raters=(), split="train", ms=True))
  labelled = [e for e in cohort_lib.load_cohort(args.labelled).exams if e.labelled]
  manifest = leave_one_out.write_manifest(labelled + pseudo, os.path.join(args.out,
                                                                          "cohort.json"))
  files.write_json({"fold": args.fold, "teachers": args.teachers.split(","),
                    "threshold": args.threshold, "min_lesion_peak": args.min_lesion_peak,
                    "exams": report}, os.path.join(args.out, "pseudo_labels.json"))
  print(f"wrote {manifest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
