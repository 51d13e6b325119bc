"""The report on real exams with reference masks, and the QC measurements behind its thresholds.

  python studies/report_reference.py --data ../shared/data/lesjak_mni --out runs/report_ref

classifies every lesion of each exam's reference mask (consensus_gt.nii.gz), writes its lesion
table with the location columns (<exam>_lesions.csv), its page (<exam>_report.png/.pdf, and
<exam>_regions.png with the ventricles and cortex the classes came from outlined, for checking
the rule by eye), its QC verdict, and one cohort-table row per exam (cohort.csv).

`measure_qc` gives the numbers msjax.report.qc's thresholds were set from: the real exams and
damaged copies of each (studies/qc_damage.py).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from msjax import files
from msjax.data import mni, nifti
from msjax.preprocess import nyul
from msjax.report import page, qc, table

# the repository root: `from studies import ...` as a script (python studies/x.py) too
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from studies import qc_damage  # noqa: E402

SEQUENCES = ("FLAIR", "T1W", "T1WKS", "T2W", "PDW")


def landmarks_of(folders: list[str]) -> dict:
  """Nyúl landmarks fitted on exams' non-zero voxels, as a model bundle trained on them holds
  (msjax.infer.bundle.learn_landmarks)."""
  samples: dict[str, list[np.ndarray]] = {}
  for folder in folders:
    for m in SEQUENCES:
      path = os.path.join(folder, f"{m}.nii.gz")
      if os.path.exists(path):
        data = nifti.read_nifti(path).data
        samples.setdefault(m, []).append(data[data != 0])
  return nyul.fit_nyul(samples)


def mni_exam_on_model_grid(folder: str) -> dict:
  """An exam already on the MNI152 1 mm box (lesjak_mni): qc.measure's inputs on the 128³ grid."""
  vols = {m: nifti.read_nifti(os.path.join(folder, f"{m}.nii.gz")) for m in SEQUENCES
          if os.path.exists(os.path.join(folder, f"{m}.nii.gz"))}
  ref = vols.get("FLAIR") or next(iter(vols.values()))
  images = {m: nifti.resample_box(v.data, mni.MODEL_SHAPE) for m, v in vols.items()}
  brain = nifti.resample_mask((ref.data != 0).astype(np.uint8), mni.MODEL_SHAPE) > 0
  return {"images": images, "brain": brain,
          "affine": nifti.resampled_grid(ref.grid, mni.MODEL_SHAPE).affine,
          "native_spacing": ref.grid.spacing}


def preprocessed_exam(folder: str) -> dict:
  """An exam folder written by msjax's preprocessing (before Nyúl standardisation:
  --config.nyul=False): qc.measure's inputs, with the registration to its raw FLAIR."""
  from msjax.preprocess import native as native_lib
  from msjax.report import atlas
  exam = os.path.basename(folder.rstrip("/"))
  with open(os.path.join(folder, "preprocess.json")) as f:
    record = json.load(f)
  vols = {m: nifti.read_nifti(os.path.join(folder, f"{exam}_{m}.nii.gz")) for m in SEQUENCES
          if os.path.exists(os.path.join(folder, f"{exam}_{m}.nii.gz"))}
  raw = nifti.read_nifti(record["native_reference"])
  native = {"reference": record["native_reference"],
            "transform": os.path.join(folder, "to_mni.tfm")}
  w2m = atlas.world_to_mni_affine(lambda p: native_lib.native_to_mni(p, native),
                                  raw.grid.affine, raw.grid.shape)
  brain = nifti.read_nifti(os.path.join(folder, f"{exam}_brain_mask.nii.gz"), kind="mask")
  return {"images": {m: v.data for m, v in vols.items()}, "brain": brain.data > 0,
          "affine": vols["FLAIR"].grid.affine, "native_spacing": raw.grid.spacing,
          "world_to_mni": w2m}


def measure_qc(mni_folders: list[str], preprocessed_folders: list[str], standard: dict,
               kinds=("none",) + tuple(qc_damage.EXPECTED)) -> dict:
  """{exam/damage: qc measures and verdict} for real exams and their damaged copies."""
  exams = {os.path.basename(f.rstrip("/")): mni_exam_on_model_grid(f) for f in mni_folders}
  exams.update({os.path.basename(f.rstrip("/")): preprocessed_exam(f)
                for f in preprocessed_folders})
  out = {}
  for name, ex in exams.items():
    for kind in kinds:
      kw = dict(ex) if kind == "none" else {
          **qc_damage.damaged(kind, ex["images"], ex["brain"], ex["affine"],
                              ex["native_spacing"]),
          **({"world_to_mni": ex["world_to_mni"]} if "world_to_mni" in ex else {})}
      m = qc.measure(landmarks=standard, **kw)
      out[f"{name}/{kind}"] = qc.verdict(m)
  return out


def report_exam(folder: str, out_dir: str, standard: dict | None = None, regions: bool = True,
                model: str = "reference mask (consensus of 3 raters)") -> dict:
  """Locations of every lesion of the exam's consensus mask, its page, QC and cohort row."""
  import msjax
  exam = os.path.basename(folder.rstrip("/"))
  flair = nifti.read_nifti(os.path.join(folder, "FLAIR.nii.gz"))
  t1_path = os.path.join(folder, "T1W.nii.gz")
  t1 = nifti.read_nifti(t1_path).data if os.path.exists(t1_path) else None
  mask = nifti.read_nifti(os.path.join(folder, "consensus_gt.nii.gz"), kind="mask")
  affine = flair.grid.affine
  labels = table.lesion_labels(mask.data, affine)
  rows, locations = table.lesion_rows(labels, affine, flair=flair.data, t1=t1,
                                      brain=flair.data != 0)
  summary = table.class_summary(labels, affine, locations)
  verdict = qc.verdict(qc.measure(landmarks=standard, **mni_exam_on_model_grid(folder)))
  os.makedirs(out_dir, exist_ok=True)
  sizes = np.bincount(labels.ravel())
  lesion_rows = [{"lesion_id": lid, "voxels": int(sizes[lid]),
                  "volume_ml": round(sizes[lid] * flair.grid.voxel_ml, 5), **row}
                 for lid, row in rows.items()]
  files.write_csv(lesion_rows, os.path.join(out_dir, f"{exam}_lesions.csv"))
  kw = dict(title=f"{exam}: reference lesions", qc=verdict, model=model,
            version=msjax.__version__)
  pages = page.draw_page(os.path.join(out_dir, f"{exam}_report.png"), flair.data, labels,
                         locations, summary, pdf=True, **kw)
  if regions:
    page.draw_page(os.path.join(out_dir, f"{exam}_regions.png"), flair.data, labels, locations,
                   summary, regions=True, note="Checking view: the ventricles (light blue) and "
                   "cortex (light green) the classes were computed from.", **kw)
  row = table.cohort_row(exam, summary, verdict)
  files.write_json({"summary": summary, "qc": verdict, "brain_fit": locations.brain_fit,
                    "method": locations.method},
                   os.path.join(out_dir, f"{exam}_report.json"))
  return {"row": row, "pages": pages, "lesions": lesion_rows}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="../shared/data/lesjak_mni")
  parser.add_argument("--out", default="runs/report_reference")
  args = parser.parse_args(argv)
  folders = sorted(d for d in glob.glob(os.path.join(args.data, "*"))
                   if os.path.exists(os.path.join(d, "consensus_gt.nii.gz")))
  standard = landmarks_of(folders)
  rows = []
  for folder in folders:
    done = report_exam(folder, args.out, standard)
    rows.append(done["row"])
    print(f"{done['row']['exam_id']}: " + ", ".join(
        f"{k[:-6]} {v}" for k, v in done["row"].items() if k.endswith("_count")) +
        f"; QC {done['row']['qc']} -> {done['pages']['png']}")
  files.write_csv(rows, os.path.join(args.out, "cohort.csv"), fieldnames=table.COHORT_COLUMNS)


if __name__ == "__main__":
  main()
