"""Issue 21's raw-exam check of a segmentation model on the Lesjak longitudinal pairs: of each
patient's reference change regions, those brighter on FLAIR at study 2 (new or enlarging lesions)
must be lesion in study 2's mask, those darker (shrinking or disappearing) lesion in study 1's.

  python studies/change_regions.py --data ../shared/data --segmentations runs/seg

`--segmentations` is a `segment` workdir over lesjak_longitudinal_raw (BIDS derivatives,
sub-<patient>/ses-study{1,2}/anat/*_space-orig_desc-lesion_mask.nii.gz). Regions are the
6-connected components of change_gt.nii.gz; brighter or darker is the region's mean FLAIR over
its 3-voxel shell at each study, both FLAIRs and both masks brought onto the reference's common
grid with the database's transforms (linear / nearest). A region counts as found when at least
10 % of it is covered by the right visit's mask (the regions are small, median 22-37 mm³, and a
mask made on a 3 mm-slice grid covers them only partly after resampling), and as well found at
50 %. Each visit's mask volume (mL, native space) is printed beside: a "found" count has no
false-positive term, and a mask that calls the whole brain lesion would find every region.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from scipy import ndimage

from msjax.data.lesions import SIX_CONNECTED

MIN_COVERED = 0.10
WELL_COVERED = 0.50


def visit_mask(segmentations: str, patient: str, study: str) -> str:
  path = os.path.join(segmentations, f"sub-{patient}", f"ses-{study}", "anat",
                      f"sub-{patient}_ses-{study}_space-orig_desc-lesion_mask.nii.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no lesion mask of {patient} {study}: {path} (segment "
                            "lesjak_longitudinal_raw into --segmentations first)")
  return path


def brighter_at_followup(region: np.ndarray, flair: dict) -> bool:
  """Is a change region brighter on FLAIR at study 2 than at study 1, each relative to the mean
  of its 3-voxel shell (flair: {1: study 1, 2: study 2} on the region's grid)?"""
  shell = ndimage.binary_dilation(region, iterations=3) & ~region
  contrast = {}
  for s in (1, 2):
    around = shell & (flair[s] > 0)
    contrast[s] = flair[s][region].mean() / max(float(flair[s][around].mean())
                                                if around.any() else 0.0, 1e-6)
  return bool(contrast[2] > contrast[1])


def found_regions(reference: np.ndarray, flair: dict, masks: dict) -> dict:
  """reference: change mask; flair, masks: {1: study 1, 2: study 2} on the reference's grid.
  Per region: brighter at study 2 or not, and found in the right visit's mask."""
  labels, n = ndimage.label(reference > 0, SIX_CONNECTED)
  brighter, found, well = [], [], []
  for k in range(1, n + 1):
    region = labels == k
    up = brighter_at_followup(region, flair)
    brighter.append(up)
    covered = float(masks[2 if up else 1][region].mean())
    found.append(covered >= MIN_COVERED)
    well.append(covered >= WELL_COVERED)
  brighter, found, well = (np.array(v, bool) for v in (brighter, found, well))
  return {"regions": int(n), "found": int(found.sum()), "found_50": int(well.sum()),
          "brighter": int(brighter.sum()), "brighter_found": int(found[brighter].sum()),
          "darker": int((~brighter).sum()), "darker_found": int(found[~brighter].sum()),
          "share": round(float(found.mean()), 3) if n else None}


def check_patient(data: str, segmentations: str, patient: str) -> dict:
  import SimpleITK as sitk

  from msjax.longitudinal import scores
  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  ref_dir = os.path.join(data, "lesjak_longitudinal_change", patient)
  reference = sitk.ReadImage(os.path.join(ref_dir, "change_gt.nii.gz"))
  flair, masks, volumes = {}, {}, {}
  for s in (1, 2):
    tfm = sitk.ReadTransform(os.path.join(ref_dir, f"study{s}_FLAIR_to_common_space.txt"))
    image = sitk.ReadImage(os.path.join(data, "lesjak_longitudinal_raw", patient,
                                        f"study{s}_FLAIR.nii.gz"), sitk.sitkFloat32)
    flair[s] = grid_lib.to_numpy(steps.resample(image, reference, tfm))
    native = sitk.ReadImage(visit_mask(segmentations, patient, f"study{s}"))
    volumes[f"study{s}_ml"] = round(float((sitk.GetArrayViewFromImage(native) > 0).sum()) *
                                    float(np.prod(native.GetSpacing())) / 1000.0, 2)
    masks[s] = scores.mask_onto(native, reference, tfm) > 0
  return dict(found_regions(grid_lib.to_numpy(reference), flair, masks), patient=patient,
              **volumes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="../shared/data")
  parser.add_argument("--segmentations", required=True)
  parser.add_argument("--patients", default="patient01,patient12")
  args = parser.parse_args(argv)
  rows = [check_patient(args.data, args.segmentations, p) for p in args.patients.split(",")]
  for r in rows:
    print(f"{r['patient']}: {r['found']}/{r['regions']} change regions found in the right "
          f"visit's mask at >= 10 % (brighter at study 2: {r['brighter_found']}/{r['brighter']}, "
          f"darker: {r['darker_found']}/{r['darker']}), {r['found_50']}/{r['regions']} at >= 50 %;"
          f" masks {r['study1_ml']:.2f} mL (study 1), {r['study2_ml']:.2f} mL (study 2)")
  found, total = sum(r["found"] for r in rows), sum(r["regions"] for r in rows)
  print(f"all: {found}/{total} = {found / max(total, 1):.2f}")
  print(json.dumps(rows))
  return rows


if __name__ == "__main__":
  main()
