"""`preprocess` mode: a folder of raw exams -> a cohort on the paper's 128³ MNI grid.

Stage 1, per exam (in parallel processes): N4, co-registration to FLAIR, brain extraction, MNI
registration, resampling; written into a temporary folder renamed only when the exam is complete,
with the transform back to native FLAIR space (`to_mni.tfm`) and QC figures. A failing exam is
reported and the others go on. Stage 2: Nyúl landmarks are fitted on the reference exams (or read
from a file) and applied. Output: `<workdir>/cohort/cohort.json` + `<exam>/...`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import time
import traceback

import numpy as np
from absl import logging

from msjax import files
from msjax.data import cohort as cohort_lib
from msjax.data import nifti


@dataclasses.dataclass(frozen=True)
class Options:
  n4: bool = True
  n4_iterations: tuple = (20, 20, 20)
  coregistration: str = "auto"   # auto (transform file if shipped, else register) | register | file
  skull_strip: str = "robex"     # robex | none (images already skull-stripped: mask = non-zero)
  mni: bool = True
  qc: bool = True


def _transform_file(exam: cohort_lib.Exam, modality: str) -> str | None:
  path = exam.images[modality]
  folder, name = os.path.split(path)
  stem = name.split(".nii")[0]
  candidate = os.path.join(folder, f"{stem}_intrastudy_to_FLAIR.txt")
  return candidate if os.path.exists(candidate) else None


def preprocess_exam(exam: cohort_lib.Exam, out_root: str, options: Options) -> dict:
  """Stage 1 for one exam. Returns a record with timings and output paths; raises on failure."""
  import SimpleITK as sitk
  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import qc
  from msjax.preprocess import steps
  if "FLAIR" not in exam.images:
    raise steps.PreprocessingError(f"exam {exam.exam_id} has no FLAIR (the reference sequence)")
  for role, kind, path in exam.all_paths():  # the data layer's validation, file by file
    nifti.read_nifti(path, kind=kind)
  t0, times = time.time(), {}

  def progress(step):
    logging.info("[preprocess] %s: %s (%.0f s so far)", exam.exam_id, step, time.time() - t0)

  raw = {m: sitk.ReadImage(p, sitk.sitkFloat32) for m, p in exam.images.items()}
  flair_native = raw["FLAIR"]
  imgs = dict(raw)
  if options.n4:
    progress("N4 bias-field correction")
    t = time.time()
    imgs = {m: steps.n4(img, iterations=options.n4_iterations) for m, img in imgs.items()}
    times["n4"] = time.time() - t
  progress("co-registration to FLAIR")
  t = time.time()
  coreg = {}
  for m, img in list(imgs.items()):
    if m == "FLAIR":
      continue
    tfm_path = _transform_file(exam, m) if options.coregistration in ("auto", "file") else None
    if tfm_path:
      tfm = sitk.ReadTransform(tfm_path)
      # the shipped file's direction convention is not stated: keep the one that aligns better
      candidates = [tfm, tfm.GetInverse()]
      scores = [_mi(imgs["FLAIR"], img, c) for c in candidates]
      tfm = candidates[int(np.argmin(scores))]
      coreg[m] = f"file {os.path.basename(tfm_path)} ({'as is' if np.argmin(scores) == 0 else 'inverted'})"
    elif options.coregistration == "file":
      raise steps.PreprocessingError(f"{exam.images[m]}: no transform file to FLAIR")
    else:
      tfm = steps.rigid_to(imgs["FLAIR"], img)
      coreg[m] = "rigid registration"
    imgs[m] = steps.resample(img, imgs["FLAIR"], tfm)
  times["coregistration"] = time.time() - t

  progress("brain extraction")
  t = time.time()
  if exam.brain_mask:
    brain = sitk.Cast(sitk.ReadImage(exam.brain_mask) > 0, sitk.sitkUInt8)
  elif options.skull_strip == "robex":
    brain = steps.robex_mask(imgs.get("T1W", imgs["FLAIR"]))
  else:
    arr = sum((grid_lib.to_numpy(i) != 0) for i in imgs.values())
    brain = sitk.Cast(grid_lib.from_numpy((arr > 0).astype(np.uint8), imgs["FLAIR"]),
                      sitk.sitkUInt8)
  times["skull_strip"] = time.time() - t

  progress("MNI registration")
  t = time.time()
  ref = grid_lib.reference_image()
  if options.mni:
    strip_src = imgs.get("T1W", imgs["FLAIR"])
    stripped = sitk.Mask(strip_src, brain)
    to_mni = steps.register_to_mni(stripped)
  else:
    to_mni = sitk.Transform()
  times["mni_registration"] = time.time() - t

  progress("resampling onto the 128³ MNI grid")
  t = time.time()
  affine = grid_lib.box_affine()
  brain128 = grid_lib.to_numpy(steps.resample(sitk.Cast(brain, sitk.sitkFloat32), ref, to_mni)) >= 0.5
  if not brain128.any():
    raise steps.PreprocessingError("the brain mask is empty on the MNI grid")
  final = os.path.join(out_root, exam.exam_id)
  tmp = final + ".incomplete"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  paths = {}
  for m, img in imgs.items():
    arr = grid_lib.to_numpy(steps.resample(img, ref, to_mni))
    paths[m] = nifti.write_nifti(np.where(brain128, arr, 0), affine,
                                 os.path.join(tmp, f"{exam.exam_id}_{m}.nii.gz"))
  masks = {}
  for role, path in ([("consensus", exam.consensus)] if exam.consensus else []) + [
      (f"rater{k + 1}", p) for k, p in enumerate(exam.raters)]:
    m = sitk.Cast(sitk.ReadImage(path), sitk.sitkFloat32)
    masks[role] = nifti.write_nifti(
        (grid_lib.to_numpy(steps.resample(m, ref, to_mni)) >= 0.5).astype(np.uint8), affine,
        os.path.join(tmp, f"{exam.exam_id}_{role}.nii.gz"), dtype=np.uint8)
  brain_path = nifti.write_nifti(brain128.astype(np.uint8), affine,
                                 os.path.join(tmp, f"{exam.exam_id}_brain_mask.nii.gz"),
                                 dtype=np.uint8)
  sitk.WriteTransform(to_mni, os.path.join(tmp, "to_mni.tfm"))
  times["resample_write"] = time.time() - t
  if options.qc:
    qc.exam_figure(flair_native, brain, imgs["FLAIR"], paths, brain_path,
                   os.path.join(tmp, "qc.png"), exam.exam_id)
  times["total"] = time.time() - t0
  record = {"exam_id": exam.exam_id, "patient_id": exam.patient_id, "ms": exam.ms,
            "split": exam.split, "times_s": {k: round(v, 1) for k, v in times.items()},
            "coregistration": coreg, "native_reference": exam.images["FLAIR"]}
  with open(os.path.join(tmp, "preprocess.json"), "w") as f:
    json.dump(record, f, indent=1)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)  # the exam appears complete, or not at all
  rel = lambda p: os.path.join(final, os.path.basename(p))  # noqa: E731
  record.update(images={m: rel(p) for m, p in paths.items()}, brain_mask=rel(brain_path),
                consensus=rel(masks["consensus"]) if "consensus" in masks else None,
                raters=[rel(masks[k]) for k in sorted(masks) if k.startswith("rater")],
                transform=os.path.join(final, "to_mni.tfm"))
  return record


def _mi(fixed, moving, transform) -> float:
  import SimpleITK as sitk
  reg = sitk.ImageRegistrationMethod()
  reg.SetMetricAsMattesMutualInformation(50)
  reg.SetMetricSamplingStrategy(reg.RANDOM)
  reg.SetMetricSamplingPercentage(0.05, 0)
  reg.SetInterpolator(sitk.sitkLinear)
  reg.SetInitialTransform(transform)
  return reg.MetricEvaluate(fixed, moving)


def _worker(args):
  exam, out_root, options = args
  try:
    return preprocess_exam(exam, out_root, options), None
  except Exception as e:  # one exam's failure must not stop the cohort
    logging.error("exam %s failed: %s", exam.exam_id, e)
    return None, f"{exam.exam_id}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"


def standardise(records: list[dict], landmarks_path: str, fit_on: list[str] | None,
                out_path: str) -> dict:
  """Stage 2: Nyúl landmarks (fitted on `fit_on` exams, or read from landmarks_path), applied."""
  from msjax.preprocess import steps
  if landmarks_path:
    with open(landmarks_path) as f:
      standard = json.load(f)
  else:
    samples: dict[str, list[np.ndarray]] = {}
    for r in records:
      if fit_on and r["exam_id"] not in fit_on:
        continue
      brain = nifti.read_nifti(r["brain_mask"], kind="mask").data > 0
      for m, p in r["images"].items():
        samples.setdefault(m, []).append(nifti.read_nifti(p).data[brain])
    standard = steps.fit_nyul(samples)
    files.write_json(standard, out_path)
  for r in records:
    brain_vol = nifti.read_nifti(r["brain_mask"], kind="mask")
    for m, p in r["images"].items():
      if m not in standard:
        raise steps.PreprocessingError(f"no Nyúl landmarks for {m} in {landmarks_path or out_path}")
      v = nifti.read_nifti(p)
      nifti.write_nifti(steps.apply_nyul(v.data, brain_vol.data, standard[m]["standard"]),
                        nib_affine(p), p)
  return standard


def nib_affine(path):
  import nibabel as nib
  return nib.load(path).affine


def run(config, workdir: str):
  if not config.input:
    raise ValueError("preprocess needs --config.input=FOLDER of raw exams")
  t0 = time.time()
  raw = cohort_lib.load_cohort(config.input)
  out_root = os.path.join(workdir, "cohort")
  os.makedirs(out_root, exist_ok=True)
  options = Options(n4=config.n4, n4_iterations=tuple(config.n4_iterations),
                    coregistration=config.coregistration, skull_strip=config.skull_strip,
                    mni=config.mni, qc=config.qc)
  exams = list(raw.exams)
  if config.exams:
    keep = {s.strip() for s in config.exams.split(",")}
    exams = [e for e in exams if e.exam_id in keep]
  records, failures = [], []
  jobs = [(e, out_root, options) for e in exams]
  logging.info("[preprocess] %d exam(s) with %d worker(s)", len(jobs), config.workers)
  if config.workers > 1:
    with concurrent.futures.ProcessPoolExecutor(config.workers) as pool:
      results = list(pool.map(_worker, jobs))
  else:
    results = [_worker(j) for j in jobs]
  for (record, failure), exam in zip(results, exams):
    if record:
      records.append(record)
      logging.info("[preprocess] %s done: %s", exam.exam_id, record["times_s"])
    else:
      failures.append(failure)
  if records and config.nyul:
    standard = standardise(records, config.nyul_landmarks,
                           [s.strip() for s in config.nyul_fit_on.split(",") if s.strip()],
                           os.path.join(workdir, "nyul_landmarks.json"))
    logging.info("[preprocess] Nyúl standardisation of %s", sorted(standard))
  cohort = cohort_lib.Cohort(root=out_root, exams=tuple(
      cohort_lib.Exam(exam_id=r["exam_id"], patient_id=r["patient_id"], ms=r["ms"],
                      split=r["split"], images=r["images"], raters=tuple(r["raters"]),
                      consensus=r["consensus"], brain_mask=r["brain_mask"],
                      native={"reference": r["native_reference"], "transform": r["transform"]})
      for r in records))
  if records:
    cohort_lib.save_cohort(cohort)
  summary = {"exams": records, "failures": failures, "wall_s": round(time.time() - t0, 1)}
  files.write_json(summary, os.path.join(workdir, "preprocess_summary.json"))
  print(f"[preprocess] {len(records)}/{len(exams)} exam(s) in {summary['wall_s']} s -> "
        f"{out_root}/cohort.json; QC figures in {out_root}/<exam>/qc.png")
  for r in records:
    print(f"  {r['exam_id']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["times_s"].items()))
  if failures:
    print(f"[preprocess] {len(failures)} exam(s) FAILED:\n  " + "\n  ".join(
        f.splitlines()[0] for f in failures))
  return summary
