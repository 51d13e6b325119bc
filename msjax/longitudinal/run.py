"""One patient's two visits -> change mask, class map and lesion table on each visit's FLAIR grid.

Outputs in `out_dir` (the mode's BIDS-derivative naming is for its caller to choose):
  {baseline,followup}_change_mask.nii.gz     0/1 on that visit's native FLAIR grid (nearest)
  {baseline,followup}_change_classes.nii.gz  1 new, 2 enlarging, 3 stable, 4 shrinking, 5 disappearing
  {baseline,followup}_change_lesions.nii.gz  the lesion_id of lesions.csv at each change voxel
  decision_change_classes.nii.gz             the same on the decision grid (baseline frame)
  followup_to_baseline.tfm                   ITK transform: baseline points -> follow-up points
  lesions.csv, change.json                   one row per changed lesion; counts, volumes, times
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from msjax import files
from msjax.data import lesions
from msjax.longitudinal import align, change


@dataclasses.dataclass(frozen=True)
class Options:
  rule: change.Rule = change.Rule()
  n4: bool = True
  use_t2: bool = True       # T2 as a second opinion where both visits have one
  brain: str = "otsu"       # otsu | robex (see align.py)
  itk_threads: int = 2      # ITK's threads for N4 and ROBEX (preprocess.itk_threads)


def _write(array: np.ndarray, like, path: str, dtype=np.uint8) -> str:
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  img = grid_lib.from_numpy(array.astype(dtype), like)
  with files.atomic(path) as tmp:
    sitk.WriteImage(img, tmp, True)
  return path


def _onto(array: np.ndarray, grid, target, transform, dtype=np.uint8):
  """A label array of the decision grid onto `target`'s grid, nearest neighbour. transform maps
  target points to grid points (None: the same space)."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  src = grid_lib.from_numpy(array.astype(dtype), grid)
  out = sitk.Resample(src, target, transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                      src.GetPixelID())
  return grid_lib.to_numpy(out)


def probabilities_on_grid(paths: tuple, a: align.Aligned) -> tuple:
  """Each visit's lesion probability map (a NIfTI on any grid of that visit's space, e.g. segment's
  probseg on its native FLAIR grid) onto the decision grid, linearly (the follow-up's through the
  rigid registration)."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  return tuple(grid_lib.to_numpy(steps.resample(sitk.ReadImage(path, sitk.sitkFloat32), a.grid,
                                                tfm))
               for path, tfm in zip(paths, (None, a.to_followup)))


def run_patient(baseline_exam_files: dict, followup_exam_files: dict, out_dir: str,
                options: Options | None = None, log=print, probabilities: tuple | None = None,
                threshold: float = 0.5, min_lesion_mm3: float = 0.0,
                min_lesion_peak: float = 0.0) -> dict:
  """baseline/followup_exam_files: {"FLAIR": path, "T2W": path, "T2W_transform": path} (T2 and
  its transform optional). probabilities: (baseline, follow-up) lesion probability NIfTIs of one
  network (segment's probseg), made into each visit's mask on the decision grid by segment's
  rule with the bundle's threshold, min_lesion_mm3 and min_lesion_peak (lesions.mask_of): the
  network's opinion as change evidence (change.detect); None: subtraction alone. Returns the
  lesion rows, counts per class, change volumes, output paths and times; writes the files listed
  in this module's docstring."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  options = options or Options()
  rule = options.rule
  t0, cpu0 = time.time(), time.process_time()
  with steps.itk_threads(options.itk_threads):  # the same change maps on any machine
    a = align.align_pair(baseline_exam_files, followup_exam_files, n4=options.n4,
                         use_t2=options.use_t2, brain=options.brain, log=log)
  t = time.time()
  brain = a.brain
  z1, z2 = change.visit_units(*a.flair, brain)
  same = change.visits_correlation(z1, z2, brain)
  if same < change.SAME_PATIENT_MIN_R:
    from msjax import errors
    raise errors.InvalidInputError(
        f"{baseline_exam_files['FLAIR']} and {followup_exam_files['FLAIR']} do not look like two "
        f"visits of one patient: their FLAIRs correlate at r = {same:.2f} over the brain after "
        f"registration (one patient's visits: 0.9; ok >= {change.SAME_PATIENT_MIN_R:g}); check "
        "that they are the same patient, or the registration between them (not compared)")
  zf = change.change_z(z1, z2, brain, a.spacing, rule)
  zt = None
  if a.t2 is not None:
    zt = change.change_z(*change.visit_units(*a.t2, brain), brain, a.spacing, rule)
  segmentations = None
  if probabilities:
    segmentations = tuple(
        lesions.mask_of(q, float(np.prod(a.spacing)), threshold, min_lesion_mm3, min_lesion_peak)
        > 0 for q in probabilities_on_grid(probabilities, a))
  signed = change.detect(zf, z1, z2, brain, a.spacing, rule, zt=zt, segmentations=segmentations)
  followup_voxel = float(np.prod(a.native[1].GetSpacing()))
  classes, regions, rows = change.classify(
      signed, z1, z2, brain, a.spacing, rule, followup_voxel_mm3=followup_voxel, zf=zf,
      segmentations=segmentations)
  decide_s = round(time.time() - t, 1)

  os.makedirs(out_dir, exist_ok=True)
  paths = {"decision_change_classes": _write(classes, a.grid, os.path.join(
      out_dir, "decision_change_classes.nii.gz"))}
  from_followup = a.to_followup.GetInverse()
  for visit, native, tfm in (("baseline", a.native[0], None),
                             ("followup", a.native[1], from_followup)):
    on_native = _onto(classes, a.grid, native, tfm)
    paths[f"{visit}_change_classes"] = _write(on_native, native, os.path.join(
        out_dir, f"{visit}_change_classes.nii.gz"))
    paths[f"{visit}_change_mask"] = _write(on_native > 0, native, os.path.join(
        out_dir, f"{visit}_change_mask.nii.gz"))
    ids = _onto(np.where(classes > 0, regions, 0), a.grid, native, tfm, np.uint16)
    paths[f"{visit}_change_lesions"] = _write(ids, native, os.path.join(
        out_dir, f"{visit}_change_lesions.nii.gz"), np.uint16)
  paths["followup_to_baseline"] = os.path.join(out_dir, "followup_to_baseline.tfm")
  sitk.WriteTransform(a.to_followup, paths["followup_to_baseline"])

  ras = grid_lib.ras_affine(a.grid)
  for row in rows:
    row["centroid_ras_mm"] = [round(float(v), 1) for v in
                              ras[:3, :3] @ np.array(row.pop("centroid_voxel")) + ras[:3, 3]]
  voxel_ml = float(np.prod(a.spacing)) / 1000
  counts = {name: sum(r["class"] == name for r in rows) for name in change.CLASSES.values()}
  summary = {
      "baseline": baseline_exam_files, "followup": followup_exam_files,
      "rule": dataclasses.asdict(rule), "t2_used": zt is not None, "brain_mask": options.brain,
      "probabilities_used": segmentations is not None,
      "probability_mask_rule": {"threshold": threshold, "min_lesion_mm3": min_lesion_mm3,
                                "min_lesion_peak": min_lesion_peak} if segmentations else None,
      "decision_grid": {"size": list(a.grid.GetSize()), "spacing_mm": list(a.spacing)},
      "visits_correlation": round(same, 4), "counts": counts, "lesions": len(rows),
      "brighter_ml": round(float((signed > 0).sum()) * voxel_ml, 4),
      "darker_ml": round(float((signed < 0).sum()) * voxel_ml, 4),
      "new_or_enlarging_ml": round(float(np.isin(classes, (1, 2)).sum()) * voxel_ml, 4),
      "change_ml": round(float((signed != 0).sum()) * voxel_ml, 4),
      "times_s": dict(a.times_s, decision=decide_s, total=round(time.time() - t0, 1),
                      cpu_total=round(time.process_time() - cpu0, 1)),
      "paths": paths}
  files.write_csv(rows, os.path.join(out_dir, "lesions.csv"),
                  fieldnames=None if rows else ["lesion_id", "class"])
  summary["paths"]["lesions"] = os.path.join(out_dir, "lesions.csv")
  files.write_json(summary, os.path.join(out_dir, "change.json"))
  summary["rows"] = rows
  log(f"  {len(rows)} changed lesions {counts}, change {summary['change_ml']} mL, "
      f"{summary['times_s']['total']} s")
  return summary
