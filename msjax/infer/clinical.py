"""The clinical report of one segmented exam (issue 23, msjax/report/): every lesion's location
class and confidence added to its lesion table, the exam's QC verdict, one page (PNG + PDF), and
the exam's row of the cohort table (counts and mL per class, QC). Needs the exam's way to MNI
space (an exam preprocessed by msjax, or one already on the MNI grid); for other exams the
report is left out and says why."""
from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np

from msjax import files
from msjax.data import exams as exams_lib
from msjax.data import nifti
from msjax.infer import outputs


def _read_table(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _model_grid_images(exam) -> tuple[dict, np.ndarray, np.ndarray]:
  """The exam's images on its model grid (canonical RAS), its brain mask there and the grid's
  affine (voxel -> MNI mm)."""
  volumes, _ = exams_lib.read_exam_files(exam, allow_any_geometry=True)
  images = {m: volumes[m].data for m in exam.images if m in volumes}
  first = volumes[next(iter(exam.images))]
  brain = (volumes["brain_mask"].data > 0 if "brain_mask" in volumes
           else np.any([v != 0 for v in images.values()], axis=0))
  if brain.any():  # as the network saw them: hot voxels replaced (exams.despike)
    images = {m: exams_lib.despike(v, brain)[0] for m, v in images.items()}
  return images, brain, first.grid.affine


def _raw_landmarks(exam) -> dict | None:
  """The exam's Nyúl landmarks before standardisation, when msjax's preprocessing kept them
  beside its images (msjax.preprocess.run.RAW_LANDMARKS_NAME); None for exams given on the model
  grid, whose own intensities are what the check reads."""
  import json
  path = os.path.join(os.path.dirname(exam.images["FLAIR"]), "raw_landmarks.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def report_exam(seg, exam, out_dir: str, *, flair_path: str, bundle: dict, threshold: float,
                config, model: str) -> dict:
  """Writes the report of `seg` (msjax.infer.predict.Segmentation, in the voxel order of
  flair_path) into the exam's outputs; returns the cohort-table fields."""
  from msjax.report import atlas, page, qc, table
  if seg.to_mni is None:
    return {"qc": None, "qc_reasons": "no report: the exam is neither preprocessed by msjax nor "
                                      "on the MNI grid, so lesion locations are unknown"}
  import msjax
  out = outputs.paths(out_dir, exam)
  flair_img = nib.load(flair_path)
  # the file's voxel order (seg is), 3D: a trailing singleton axis (x, y, z, 1) is a 3D image
  flair = nifti.squeeze_to_3d(np.asarray(flair_img.dataobj, np.float32), flair_path)
  on_mni_grid = not exam.native  # in_file_space maps such exams' world to MNI as it is
  labels = table.lesion_labels(seg.mask, seg.affine)
  extra, locations = table.lesion_rows(
      labels, seg.affine, probability=seg.probability, spread=seg.spread,
      to_mni=None if on_mni_grid else seg.to_mni, flair=flair,
      brain=(flair != 0) if on_mni_grid else None, threshold=threshold, cfg=config.locations)
  edge = table.fov_edge_lesions(labels, flair, seg.affine)
  for lesion_id, flagged in edge.items():
    extra.setdefault(lesion_id, {})["fov_edge"] = flagged
  rows = table.merge(_read_table(out["table"]), extra)
  files.write_csv(rows, out["table"], fieldnames=outputs.TABLE_COLUMNS + table.EXTRA_COLUMNS)
  summary = table.class_summary(labels, seg.affine, locations)

  images, brain, grid_affine = _model_grid_images(exam)
  world_to_mni = atlas.world_to_mni_affine(None if on_mni_grid else seg.to_mni, seg.affine,
                                           seg.mask.shape)
  fov = None if on_mni_grid else qc.field_of_view(brain.shape, grid_affine, world_to_mni,
                                                   flair.shape, flair_img.affine)
  verdict = qc.exam_qc(images, brain, grid_affine, config.qc,
                       native_spacing=tuple(float(z) for z in flair_img.header.get_zooms()[:3]),
                       world_to_mni=world_to_mni, fov=fov,
                       landmarks=bundle["preprocessing"]["nyul_landmarks"],
                       raw_landmarks=_raw_landmarks(exam))
  edge_ml = sum(float(r["volume_ml"]) for r in rows if r.get("fov_edge"))
  if edge_ml >= table.FOV_EDGE_ML:
    _, slices, mm = table.fov_edge_reach(seg.affine)
    verdict = qc.lift(verdict, "field_of_view", qc.CHECK,
                      f"{edge_ml:.2f} mL of lesion within {slices} slices ({mm:.0f} mm) of the "
                      "first or last acquired slice, where 2D acquisitions carry inflow and "
                      "partial-volume artefacts (fov_edge in the lesion table): check those "
                      "lesions")
  grid = nifti.read_nifti(flair_path).grid
  drawn = page.draw_page(out["report"], nifti.to_canonical(flair, grid),
                         nifti.to_canonical(labels, grid), locations, summary,
                         title=exam.exam_id, qc=verdict, model=model, version=msjax.__version__,
                         n_slices=config.page_slices, pdf=config.page_pdf)
  row = table.cohort_row(exam.exam_id, summary, verdict)
  row.pop("exam_id")
  row.pop("lesions")  # the exam row already counts lesions the same way
  return {**row, "report": drawn["png"], "report_pdf": drawn.get("pdf")}
