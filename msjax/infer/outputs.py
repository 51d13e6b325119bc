"""How a segmentation is written, as a BIDS-derivatives dataset: per exam (sub-<id>[_ses-<id>], or
sub-<exam_id> for exams not from BIDS), in the exam's own space,

  sub-01/ses-01/anat/sub-01_ses-01_space-orig_desc-lesion_mask.nii.gz        the binary mask
                     sub-01_ses-01_space-orig_label-lesion_probseg.nii.gz    lesion probability
                     sub-01_ses-01_space-orig_label-lesion_desc-uncertainty_probseg.nii.gz
                                                   (spread of the overlapping patch predictions)
                     sub-01_ses-01_desc-lesion_table.csv     one row per lesion
                     sub-01_ses-01_desc-lesion_overlay.png   FLAIR slices, the mask outlined

and `dataset_description.json` (DatasetType derivative, GeneratedBy msjax and the model) at the
top. The table lists every 6-connected component of the mask, so its volumes sum to the mask's.
"""
from __future__ import annotations

import os

import numpy as np

from msjax import figures, files
from msjax.data import lesions as lesions_lib
from msjax.data import nifti
from msjax.data.manifest import Exam

BIDS_VERSION = "1.9.0"


def exam_folder(root: str, exam: Exam) -> str:
  if exam.bids:
    parts = [f"sub-{exam.bids['sub']}"] + ([f"ses-{exam.bids['ses']}"] if exam.bids.get("ses")
                                           else [])
  else:
    parts = [exam.bids_prefix]
  return os.path.join(root, *parts, "anat")


MASK_SUFFIX = "_desc-lesion_mask.nii.gz"            # the mask's file name ends so
PROBABILITY_SUFFIX = "_label-lesion_probseg.nii.gz"  # and its probability map's, beside it


def paths(root: str, exam: Exam) -> dict[str, str]:
  """Every output file of one exam. `summary` is written last: an exam's outputs are complete
  exactly when it exists (resume reads it; a re-run removes it first)."""
  d, p = exam_folder(root, exam), exam.bids_prefix
  return {"summary": os.path.join(d, f"{p}_desc-lesion_summary.json"),
          "mask": os.path.join(d, f"{p}_space-orig{MASK_SUFFIX}"),
          "dicom_seg": os.path.join(d, f"{p}_space-orig_desc-lesion_mask.dcm"),
          "probseg": os.path.join(d, f"{p}_space-orig{PROBABILITY_SUFFIX}"),
          "uncertainty": os.path.join(
              d, f"{p}_space-orig_label-lesion_desc-uncertainty_probseg.nii.gz"),
          "table": os.path.join(d, f"{p}_desc-lesion_table.csv"),
          "overlay": os.path.join(d, f"{p}_desc-lesion_overlay.png"),
          "report": os.path.join(d, f"{p}_desc-lesion_report.png"),
          "report_pdf": os.path.join(d, f"{p}_desc-lesion_report.pdf")}


def remove(listed) -> list[str]:
  """Removes the files that exist among `listed`, in order; returns them."""
  removed = []
  for path in listed:
    if os.path.exists(path):
      os.remove(path)
      removed.append(path)
  return removed


def publish(staging: str, root: str, exam: Exam) -> list[str]:
  """Moves an exam's complete set of outputs, built under `staging`, into `root` in place of
  whatever set it had (replace_set). Until this call the old set is whole. Returns the old files
  removed without a replacement."""
  return replace_set(paths(staging, exam), paths(root, exam))


def replace_set(new: dict[str, str], old: dict[str, str]) -> list[str]:
  """Moves one complete set of files (`new`, keyed as `old`, with its "summary" written last)
  over another: the old summary goes first (the set reads as incomplete for the few moves that
  follow), each new file replaces its old one atomically (os.replace), old files the new set
  lacks are removed, the new summary comes last. Returns the old files removed without a
  replacement."""
  remove([old["summary"]])
  moved = set()
  for key, path in new.items():
    if key != "summary" and os.path.exists(path):
      os.makedirs(os.path.dirname(old[key]), exist_ok=True)
      os.replace(path, old[key])
      moved.add(key)
  gone = remove(old[k] for k in old if k != "summary" and k not in moved)
  os.makedirs(os.path.dirname(old["summary"]), exist_ok=True)
  os.replace(new["summary"], old["summary"])
  return gone


def complete(root: str, exam: Exam) -> dict | None:
  """The exam's summary when its outputs are complete (the summary and every file it lists)."""
  import json
  path = paths(root, exam)["summary"]
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  listed = [os.path.join(root, p) for p in summary.get("files", {}).values()]
  return summary if all(os.path.exists(p) for p in listed) else None


def write_summary(root: str, exam: Exam, row: dict) -> dict:
  """The exam's summary (its row of the cohort table, with file paths relative to the dataset
  root), written last."""
  out = paths(root, exam)
  files_ = {k: os.path.relpath(v, root) for k, v in row.items()
            if k in out and k != "summary" and isinstance(v, str) and os.path.exists(v)}
  summary = {**{k: v for k, v in row.items() if k not in out}, "files": files_}
  files.write_json(summary, out["summary"])
  return summary


def find_summaries(root: str, suffix: str = "_desc-lesion_summary.json",
                   key: str = "exam_id") -> list[dict]:
  """Every complete summary under a derivatives dataset (all shards), sorted by `key`: the
  exams' of segment by default, a longitudinal run's patients with "_desc-change_summary.json"
  and "patient"."""
  import json
  found = []
  for dirpath, _, names in os.walk(root):
    for name in names:
      if name.endswith(suffix):
        with open(os.path.join(dirpath, name)) as f:
          summary = json.load(f)
        if all(os.path.exists(os.path.join(root, p)) for p in summary.get("files", {}).values()):
          found.append(summary)
  return sorted(found, key=lambda s: s[key])


# The cohort table: what an exam's segmentation found, one count and one volume; timings and the
# finer counts (components of the mask, the report's lesion-only volume) stay in the summaries.
# Report columns (msjax/report/table.py, where the report ran): lesions (> 3 mm³) and mL per
# location class, the QC verdict and its reasons.
REPORT_COLUMNS = tuple(f"{c}_{k}" for c in ("periventricular", "juxtacortical", "infratentorial",
                                           "deep_white_matter") for k in ("count", "ml")) + (
    "qc", "qc_reasons")
COHORT_COLUMNS = ("exam_id", "patient_id", "status", "lesions", "volume_ml") + \
    REPORT_COLUMNS + ("brain_extraction", "threshold", "sampler", "mirror", "patches", "mask",
                      "table", "overlay", "report")
# what each column means, written beside the table as BIDS does for tabular files
COLUMN_DESCRIPTIONS = {
    "exam_id": {"Description": "the exam (sub-<id>[_ses-<id>] of the outputs)"},
    "patient_id": {"Description": "the patient the exam belongs to"},
    "status": {"Description": "'segmented', or 'segmented; <optional output> failed: <why>'"},
    "lesions": {"Description": "lesions in the mask: 6-connected components of more than "
                               "3 mm³ (the MSSEG-2016 evaluator's count)"},
    "volume_ml": {"Description": "volume of the whole lesion mask", "Units": "mL"},
    **{f"{c}_count": {"Description": f"{c.replace('_', ' ')} lesions (McDonald 2017 / MAGNIMS "
                                     "2016 location classes), of more than 3 mm³"}
       for c in ("periventricular", "juxtacortical", "infratentorial", "deep_white_matter")},
    **{f"{c}_ml": {"Description": f"volume of the {c.replace('_', ' ')} lesions", "Units": "mL"}
       for c in ("periventricular", "juxtacortical", "infratentorial", "deep_white_matter")},
    "qc": {"Description": "scan QC verdict", "Levels": {"ok": "within what the model saw",
                                                        "check": "look at the exam",
                                                        "fail": "do not use the result"}},
    "qc_reasons": {"Description": "why the verdict is not ok, '; '-separated"},
    "brain_extraction": {"Description": "how the raw exam's brain was extracted: robex, atlas (the "
                                        "MNI template's brain; an exam without a T1W takes it "
                                        "whatever was asked), threshold, provided (its own "
                                        "mask), none (it came skull-stripped); empty for an "
                                        "exam given on the model grid"},
    "threshold": {"Description": "probability at and above which a voxel is lesion"},
    "sampler": {"Description": "how patches were placed: sliding (Gaussian window) or random"},
    "mirror": {"Description": "test-time mirroring (the mean over 8 flips)"},
    "patches": {"Description": "patches the network ran on"},
    "mask": {"Description": "the lesion mask, relative to this folder"},
    "table": {"Description": "the per-lesion table, relative to this folder"},
    "overlay": {"Description": "FLAIR slices with the mask outlined, relative to this folder"},
    "report": {"Description": "the report page, relative to this folder"},
}


def write_cohort_table(rows: list[dict], path: str) -> str:
  """The cohort CSV and its column descriptions (<name>.json beside it)."""
  files.write_json(COLUMN_DESCRIPTIONS, os.path.splitext(path)[0] + ".json")
  return files.write_csv(cohort_rows(rows), path, fieldnames=COHORT_COLUMNS)


def cohort_rows(summaries: list[dict]) -> list[dict]:
  return [{k: (s.get(k) if k in s else s.get("files", {}).get(k)) for k in COHORT_COLUMNS}
          for s in summaries]


TABLE_COLUMNS = ("lesion_id", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm",
                 "centroid_z_mm", "mni_x_mm", "mni_y_mm", "mni_z_mm", "mean_probability",
                 "max_probability")


def lesion_table(mask: np.ndarray, probability: np.ndarray, affine: np.ndarray,
                 to_mni=None) -> list[dict]:
  """One row per 6-connected component of `mask` (numbered as the evaluator numbers lesions:
  largest first): voxels, mL, centroid in world mm of `affine` (RAS) and, when `to_mni` maps
  world points to MNI mm, in MNI mm; mean and max probability."""
  voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
  labels, n = lesions_lib.lesion_labels(mask, voxel_mm3, min_mm3=0.0)
  if n == 0:
    return []
  stats = lesions_lib.per_lesion(labels, n, probability)
  counts, mean, peak = stats["voxels"], stats["mean"], stats["max"]
  world = (np.c_[stats["centre"], np.ones(n)] @ np.asarray(affine, float).T)[:, :3]
  mni = to_mni(world) if to_mni is not None else None
  rows = []
  for i in range(n):
    rows.append({"lesion_id": i + 1, "voxels": int(counts[i]),
                 "volume_ml": round(float(counts[i]) * voxel_mm3 / 1000, 5),
                 **{f"centroid_{a}_mm": round(float(world[i, k]), 2) for k, a in enumerate("xyz")},
                 **{f"mni_{a}_mm": (None if mni is None else round(float(mni[i, k]), 2))
                    for k, a in enumerate("xyz")},
                 "mean_probability": round(float(mean[i]), 4),
                 "max_probability": round(float(peak[i]), 4)})
  return rows


def overlay_figure(flair_path: str, mask_path: str, path: str, title: str = "",
                   n_slices: int = 4) -> str:
  """Axial FLAIR slices with the most lesion (the middle of the brain without any), the mask
  outlined in red, radiological view."""
  import matplotlib.pyplot as plt
  flair = nifti.read_nifti(flair_path).data
  mask = nifti.read_nifti(mask_path, kind="mask").data > 0
  if flair.shape != mask.shape:
    raise ValueError(f"{mask_path}: not on the grid of {flair_path}")
  slices = figures.lesion_slices(mask, n_slices)
  if not slices:
    z = np.flatnonzero(flair.reshape(-1, flair.shape[-1]).any(0))
    slices = [int(z[int(len(z) * f)]) for f in np.linspace(0.3, 0.7, n_slices)] if len(z) else [
        flair.shape[-1] // 2]
  box, limits = figures.brain_box(flair), figures.window(flair)
  fig, axes = plt.subplots(1, len(slices), squeeze=False,
                           figsize=(max(3.1 * len(slices), 5.0), 4.0))
  voxel_ml = abs(np.linalg.det(nifti.read_nifti(mask_path, kind="mask").grid.affine[:3, :3])) / 1e3
  for ax, z in zip(axes[0], slices):
    figures.draw_slice(ax, flair, z, box, limits, [(mask, "red")])
    ax.set_title(f"axial {z}: {int(mask[..., z].sum())} lesion voxels", fontsize=8)
  fig.suptitle((title + "\n" if title else "") + f"FLAIR, lesion mask outlined in red "
               f"({mask.sum() * voxel_ml:.2f} mL)\nradiological view: the patient's left on the "
               "image's right", fontsize=9)
  return figures.save_figure(fig, path)


def write_description(root: str, generated_by: dict) -> str:
  """The derivative dataset's description (BIDS requires it at the top)."""
  return files.write_json({"Name": "msjax MS lesion segmentation", "BIDSVersion": BIDS_VERSION,
                           "DatasetType": "derivative", "GeneratedBy": [generated_by]},
                          os.path.join(root, "dataset_description.json"))


def generated_by(model: str, **extra) -> dict:
  import msjax
  return {"Name": "msjax", "Version": msjax.__version__,
          "Description": f"MS lesion segmentation with the model {model}", **extra}

