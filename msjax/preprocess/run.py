"""`preprocess` mode: a folder of raw exams -> a cohort on the paper's 128³ MNI grid.

Stage 1, per exam (in parallel processes): N4, co-registration to FLAIR, brain extraction, MNI
registration (with skull_strip=atlas: a head mask, the MNI registration of the image within it,
then the template's brain mask brought back to bound the brain, and the brain registered again
from there, as the default registers), resampling; written into a
temporary folder renamed only when the exam is complete, with the transform back to native FLAIR space (`to_mni.tfm`) and QC figures. A failing exam is
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

from msjax import config_base, errors, files
from msjax.data import cohort as cohort_lib
from msjax.data import exams as exams_lib
from msjax.data import manifest as manifest_lib
from msjax.data import mni as mni_lib
from msjax.data import nifti
from msjax.preprocess import nyul


@dataclasses.dataclass(frozen=True)
class Options:
  n4: bool = True
  n4_iterations: tuple = (20, 20, 20)
  n4_mm: float = 3.0             # N4 fits its bias field on a copy shrunk to ~this voxel size
  coregistration: str = "auto"   # auto (transform file if shipped, else register) | register |
                                 # file | none (every sequence already on FLAIR's grid, aligned)
  skull_strip: str = "robex"     # robex | atlas (fast: the threshold mask bounded by the MNI
                                 # template's brain, steps.atlas_brain_mask) | threshold (fast,
                                 # steps.threshold_brain_mask) | none (images already
                                 # skull-stripped: mask = non-zero)
  mni: bool = True
  qc: bool = True
  allow_any_geometry: bool = False
  grid: tuple = mni_lib.MODEL_SHAPE  # the resampling of the MNI box the exam is written on:
                                     # the paper's 128³, or the grid of the model (segment)
  itk_threads: int = 2           # ITK's threads (steps.itk_threads); 0 = every core

  def __post_init__(self):  # refused before any exam is read
    if len(self.grid) != 3 or any(int(n) != n or n < 16 for n in self.grid):
      raise ValueError(f"preprocess grid {tuple(self.grid)}: three whole numbers >= 16 (voxels "
                       "across the MNI box per axis)")
    if self.skull_strip not in SKULL_STRIP:
      raise ValueError(f"preprocess.skull_strip={self.skull_strip!r}: one of "
                       f"{', '.join(SKULL_STRIP)}")
    if self.coregistration not in COREGISTRATION:
      raise ValueError(f"preprocess.coregistration={self.coregistration!r}: one of "
                       f"{', '.join(COREGISTRATION)}")
    if int(self.itk_threads) != self.itk_threads or self.itk_threads < 0:
      raise ValueError(f"preprocess.itk_threads={self.itk_threads!r}: a whole number >= 0 (0: "
                       "every core)")
    if self.skull_strip == "atlas" and not self.mni:
      raise ValueError("preprocess.skull_strip='atlas' takes the MNI template's brain mask "
                       "through the MNI registration: it needs preprocess.mni=True")


  @classmethod
  def from_config(cls, p, allow_any_geometry: bool = False) -> "Options":
    """From a job's preprocess block (config_base.preprocess)."""
    return cls(n4=p.n4, n4_iterations=tuple(p.n4_iterations), n4_mm=float(p.n4_mm),
               coregistration=p.coregistration, skull_strip=p.skull_strip, mni=p.mni, qc=p.qc,
               allow_any_geometry=allow_any_geometry,
               grid=tuple(int(n) for n in p.get("grid", mni_lib.MODEL_SHAPE)),
               itk_threads=int(p.get("itk_threads", cls.itk_threads)))


SKULL_STRIP = ("robex", "atlas", "threshold", "none")
COREGISTRATION = ("auto", "register", "file", "none")
# the options that describe the state an exam comes in (raw head, or already bias-corrected,
# co-registered and skull-stripped), not how the model's grid and intensities are made
INPUT_STATE = ("n4", "n4_iterations", "n4_mm", "coregistration", "skull_strip")
STRIPPED = {"n4": False, "coregistration": "none", "skull_strip": "none"}  # for_stripped_exams


def for_stripped_exams(options: Options) -> Options:
  """The pipeline for exams already bias-corrected, co-registered and skull-stripped (a lab's
  MNI-space data, like ../shared/data/lesjak_mni): no N4, no co-registration, the brain = the
  non-zero voxels; the MNI registration and the standardisation a raw exam gets, so that such
  an exam ends up as a user's raw exam does (brain size, grid, intensities)."""
  return dataclasses.replace(options, **STRIPPED)


def takes_stripped_exams(options: dict | None) -> bool:
  """Whether preprocessing options (a bundle's or preprocessing.json's) were those of
  `for_stripped_exams`: the exams they made came in skull-stripped."""
  return bool(options) and options.get("skull_strip") == "none"


def for_exam(exam: manifest_lib.Exam, options: Options) -> Options:
  """The options an exam is preprocessed with. ROBEX is a T1-weighted tool: an exam without a T1W
  and without a brain mask of its own takes the atlas path instead (when the MNI registration
  runs). On a FLAIR-only exam (patient01 study 2 of the raw Lesjak exams, its T1W and T2W left
  out) ROBEX kept the skull and scalp (a brain mask 2.16x the template's tissue), the MNI
  registration then shrank the head onto the template's brain (scale 0.75) and the QC failed it;
  the atlas path registered it as the full exam is (QC check only for edge-slice lesions), its
  lesion mask at Dice 0.875 against the full exam's, 0.762 with ROBEX."""
  if (options.skull_strip == "robex" and options.mni and not exam.brain_mask
      and "T1W" not in exam.images):
    return dataclasses.replace(options, skull_strip="atlas")
  return options


def transform_file(exam: manifest_lib.Exam, modality: str) -> str | None:
  path = exam.images[modality]
  folder, name = os.path.split(path)
  stem = name.split(".nii")[0]
  candidate = os.path.join(folder, f"{stem}_intrastudy_to_FLAIR.txt")
  return candidate if os.path.exists(candidate) else None


def preprocess_exam(exam: manifest_lib.Exam, out_root: str, options: Options) -> dict:
  """Stage 1 for one exam. Returns a record with timings and output paths; raises on failure.
  ITK runs on options.itk_threads threads throughout (steps.itk_threads)."""
  from msjax.preprocess import steps
  with steps.itk_threads(options.itk_threads):
    return _preprocess_exam(exam, out_root, options)


def _preprocess_exam(exam: manifest_lib.Exam, out_root: str, options: Options) -> dict:
  import SimpleITK as sitk

  from msjax.preprocess import steps
  if "FLAIR" not in exam.images:
    raise steps.PreprocessingError(f"exam {exam.exam_id} has no FLAIR (the reference sequence)")
  chosen = for_exam(exam, options)
  if chosen is not options:
    logging.info("[preprocess] %s: no T1W: brain extraction by the atlas path (ROBEX is made for "
                 "T1-weighted images; on a FLAIR it keeps the skull)", exam.exam_id)
    options = chosen
  # the data layer's validation, file by file; raw scans are on any grid, but a grid that cannot
  # be a brain exam is refused as everywhere else
  _, problems = exams_lib.read_exam_files(exam, options.allow_any_geometry, one_grid=False)
  problems += [p for p in map(nifti.itk_problem, (p for _, _, p in exam.all_paths())) if p]
  if problems:
    raise errors.InvalidInputError(f"exam {exam.exam_id}:\n  " + "\n  ".join(problems))
  t0, times = time.time(), {}

  def step(name, label, fn, *args):
    logging.info("[preprocess] %s: %s (%.0f s so far)", exam.exam_id, label, time.time() - t0)
    t = time.time()
    out = fn(*args)
    times[name] = time.time() - t
    return out

  raw, shifted, spikes = {}, {}, {}
  for m, path in exam.images.items():
    raw[m], change = steps.read_scan(path)
    if change and "spikes" in change:
      spikes[m] = change["spikes"]
      logging.warning("[preprocess] %s: %s holds %d hot voxels far above its intensities (a "
                      "spike of the scanner or the export): each replaced by the median of "
                      "its neighbours", exam.exam_id, path, change["spikes"])
    if change and ("shift" in change or "padding" in change):
      shifted[m] = {k: v for k, v in change.items() if k in ("shift", "padding")}
      logging.warning("[preprocess] %s: %s holds intensities below 0: %s (N4's bias model is "
                      "multiplicative, Otsu and ROBEX take no signal as 0)", exam.exam_id, path,
                      f"shifted by {change['shift']:g} so that its lowest is 0" if "shift" in change
                      else f"its padding value {change['padding']:g} set to 0")
  imgs = dict(raw)
  if options.n4:
    imgs = step("n4", "N4 bias-field correction", lambda: {
        m: steps.n4(img, target_mm=options.n4_mm, iterations=options.n4_iterations)
        for m, img in imgs.items()})
  imgs, coreg = step("coregistration", "co-registration to FLAIR", coregister, exam, imgs,
                     options)
  refined = None  # the atlas path's second registration: how far it moved, which was kept
  if options.skull_strip == "atlas" and not exam.brain_mask:
    # the over-inclusive threshold mask is enough for the affine registration (its metric kept
    # near the template's brain); the template's brain mask, brought back with that transform,
    # then bounds it
    head = step("skull_strip", "brain extraction (head mask)",
                lambda: steps.threshold_brain_mask(brain_image(imgs),
                                                   erode_mm=steps.ATLAS_HEAD_ERODE_MM))
    to_mni = step("mni_registration", "MNI registration", lambda: steps.register_head_to_mni(
        sitk.Mask(brain_image(imgs), head)))
    brain = step("atlas_mask", "brain extraction (within the MNI template's brain)",
                 lambda: steps.atlas_brain_mask(brain_image(imgs), to_mni, fill=imgs["FLAIR"],
                                                acquired=raw["FLAIR"].GetSpacing()))
    # the head's registration lies 1.8-1.9 mm from ROBEX's on patient01's 4 mm slices (the
    # scalp's pull); the brain's, from it, 0.6-1.0 mm, as the default registers (7-8.5 s)
    head_to_mni = to_mni
    to_mni = step("mni_refine", "MNI registration of the brain, from the head's",
                  lambda: steps.register_to_mni(sitk.Mask(brain_image(imgs), brain),
                                                start=head_to_mni))
    refine_mm = steps.mean_distance_mm(to_mni, head_to_mni)
    refined = {"moved_mm": round(refine_mm, 2), "kept": "brain"}
    if refine_mm > steps.ATLAS_REFINE_MAX_MM:  # a failed registration, not a correction
      logging.warning("[preprocess] %s: the brain's MNI registration moved the head's %.1f mm "
                      "(more than %.0f): the head's registration is kept", exam.exam_id,
                      refine_mm, steps.ATLAS_REFINE_MAX_MM)
      to_mni, refined["kept"] = head_to_mni, "head"
  else:
    brain = step("skull_strip", "brain extraction", brain_mask, exam, imgs, options)
    to_mni = step("mni_registration", "MNI registration", mni_transform, imgs, brain, options)
  final = os.path.join(out_root, exam.exam_id)
  tmp = final + ".incomplete"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  written = step("resample_write", f"resampling onto the {grid_name(options.grid)} MNI grid",
                 write_on_model_grid, exam, imgs, brain, to_mni, tmp, options.grid)
  if options.qc:
    from msjax.preprocess import qc
    qc.exam_figure(raw["FLAIR"], brain, imgs["FLAIR"], written["images"], written["brain_mask"],
                   os.path.join(tmp, "qc.png"), exam.exam_id)
  times["total"] = time.time() - t0
  record = {"format": manifest_lib.PREPROCESSING_FORMAT, "exam_id": exam.exam_id,
            "patient_id": exam.patient_id, "ms": exam.ms, "split": exam.split,
            "skull_strip": "provided" if exam.brain_mask else options.skull_strip,
            "n4_mm": options.n4_mm if options.n4 else None,
            "times_s": {k: round(v, 1) for k, v in times.items()},
            "coregistration": coreg, "native_reference": exam.images["FLAIR"],
            **({"made_nonnegative": shifted} if shifted else {}),
            **({"despiked": spikes} if spikes else {}),
            # ITK's sums (N4, ROBEX) depend on how many threads split them (options.itk_threads);
            # the registrations ran on steps.REGISTRATION_THREADS
            "itk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            "registration_threads": steps.REGISTRATION_THREADS,
            **({"mni_refine": refined} if refined else {}),
            "bids": exam.bids}
  with open(os.path.join(tmp, manifest_lib.EXAM_RECORD_NAME), "w") as f:
    json.dump(record, f, indent=1)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)  # the exam appears complete, or not at all
  rel = lambda p: os.path.join(final, os.path.basename(p))  # noqa: E731
  masks = written["masks"]
  record.update(images={m: rel(p) for m, p in written["images"].items()},
                brain_mask=rel(written["brain_mask"]),
                consensus=rel(masks["consensus"]) if "consensus" in masks else None,
                raters=[rel(masks[k]) for k in sorted(masks) if k.startswith("rater")],
                transform=os.path.join(final, "to_mni.tfm"))
  return record


def coregister(exam, imgs: dict, options: Options):
  """Every sequence onto FLAIR (its grid, or its frame sampled finer: `working_grid`): a shipped
  `*_intrastudy_to_FLAIR.txt` transform (its direction checked by mutual information) or rigid
  Mattes-MI registration. Returns (images, how)."""
  from msjax.preprocess import steps
  out, how = dict(imgs), {}
  grid = working_grid(imgs["FLAIR"], [img for m, img in imgs.items() if m != "FLAIR"])
  if grid is not imgs["FLAIR"]:
    out["FLAIR"] = steps.resample(imgs["FLAIR"], grid)
    how["grid"] = (f"FLAIR's frame at {_mm(grid)} mm (FLAIR's {_mm(imgs['FLAIR'])} mm would "
                   "coarsen the other sequences)")
    logging.info("[preprocess] %s: co-registration onto %s", exam.exam_id, how["grid"])
  for m, img in imgs.items():
    if m == "FLAIR":
      continue
    if options.coregistration == "none":
      if not same_grid(img, imgs["FLAIR"]):
        raise steps.PreprocessingError(
            f"{exam.images[m]}: preprocess.coregistration='none' takes every sequence on "
            f"FLAIR's grid, this one is not ({img.GetSize()} voxels of "
            f"{tuple(round(v, 3) for v in img.GetSpacing())} mm against FLAIR's "
            f"{imgs['FLAIR'].GetSize()} of "
            f"{tuple(round(v, 3) for v in imgs['FLAIR'].GetSpacing())} mm, or another origin "
            "or direction): co-register it (preprocess.coregistration=auto)")
      how[m] = "none (on FLAIR's grid)"
      continue
    tfm_path = transform_file(exam, m) if options.coregistration in ("auto", "file") else None
    if not tfm_path and options.coregistration == "file":
      raise steps.PreprocessingError(f"{exam.images[m]}: no transform file to FLAIR")
    if not tfm_path:
      stem = os.path.basename(exam.images[m]).split(".nii")[0]
      logging.info("[preprocess] %s: no %s_intrastudy_to_FLAIR.txt beside its %s: registering it "
                   "to FLAIR (rigid, mutual information; tens of seconds, where a shipped "
                   "transform takes about one)", exam.exam_id, stem, m)
    tfm, how[m] = steps.to_flair(imgs["FLAIR"], img, tfm_path)
    out[m] = steps.resample(img, grid, tfm)
  return out, how


def _mm(img) -> str:
  """An image's voxel size for a message: 1.5 x 1.5 x 3."""
  return " x ".join(f"{round(v, 2):g}" for v in img.GetSpacing())


# Every sequence is resampled onto the working grid before MNI, so a FLAIR coarser than another
# sequence by more than this along an axis is sampled finer there (a 2.2 x 2.2 x 6 mm FLAIR took a
# 0.9 x 0.9 x 3 mm T1W down to 6 mm slices: ROBEX's mask on it took in the scalp and QC failed the
# T1W's intensities, gap 45). Within it FLAIR's own grid is kept: the raw Lesjak exams' 4 mm FLAIR
# over a 3 mm T1W (1.33x) is, and their outputs with it.
WORKING_GRID_COARSER = 1.5
# ...sampled no finer than this: about the model grid's voxel (1.4-1.7 mm), so that the images it
# gets lose nothing, while ROBEX and the MNI registration work on no more voxels than they need
# (a 6 mm FLAIR over a 1 mm T1W at 1 mm: the registration 24.8 s against 9.5 s on FLAIR's grid)
WORKING_GRID_FINEST_MM = 1.5


def working_grid(flair, others: list, coarser: float = WORKING_GRID_COARSER,
                 finest_mm: float = WORKING_GRID_FINEST_MM):
  """The grid brain extraction and MNI registration work on and every sequence is co-registered
  onto: `flair` itself, or FLAIR's frame (direction, extent) sampled finer along each axis where
  FLAIR's voxels are more than `coarser` x the finest other sequence's along it (that sequence's
  voxel size along its axis nearest in direction), at that size or `finest_mm`, the larger."""
  import SimpleITK as sitk
  d = np.array(flair.GetDirection()).reshape(3, 3)
  spacing = np.array(flair.GetSpacing())
  finest = spacing.copy()
  for img in others:
    e = np.abs(np.array(img.GetDirection()).reshape(3, 3).T @ d)  # [their axis, FLAIR's axis]
    finest = np.minimum(finest, np.array(img.GetSpacing())[np.argmax(e, axis=0)])
  refine = (spacing > coarser * finest) & (spacing > finest_mm)
  if not refine.any():
    return flair
  new_spacing = np.where(refine, np.maximum(finest, finest_mm), spacing)
  size = np.array(flair.GetSize())
  new_size = np.ceil(size * spacing / new_spacing - 1e-3).astype(int)
  # the same box: first voxel centre half a new voxel in from the old box's corner, centred
  offset = -0.5 * spacing + 0.5 * new_spacing + 0.5 * (size * spacing - new_size * new_spacing)
  out = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
  out.SetSpacing([float(v) for v in new_spacing])
  out.SetDirection(flair.GetDirection())
  out.SetOrigin([float(v) for v in np.array(flair.GetOrigin()) + d @ offset])
  return out


def same_grid(a, b, tol: float = 1e-3) -> bool:
  """Whether two ITK images share size, spacing, origin and direction."""
  return (a.GetSize() == b.GetSize() and
          np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol) and
          np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 100) and
          np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def brain_image(imgs: dict):
  """The image brain extraction and MNI registration work on: T1, else FLAIR."""
  return imgs.get("T1W", imgs["FLAIR"])


def brain_mask(exam, imgs: dict, options: Options):
  """A provided brain mask, ROBEX or the threshold mask on T1 (FLAIR without T1), or the non-zero
  voxels. ('atlas' needs the MNI registration first: `preprocess_exam` runs it in its order.)"""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  if exam.brain_mask:  # on FLAIR's grid; taken onto the working grid where that is finer
    given = sitk.Cast(sitk.ReadImage(exam.brain_mask) > 0, sitk.sitkFloat32)
    if not same_grid(given, imgs["FLAIR"]):
      given = steps.resample(given, imgs["FLAIR"]) >= 0.5
    return sitk.Cast(given, sitk.sitkUInt8)
  if options.skull_strip == "robex":
    return steps.robex_mask(brain_image(imgs))
  if options.skull_strip == "threshold":
    return steps.threshold_brain_mask(brain_image(imgs))
  if options.skull_strip != "none":
    raise ValueError(f"preprocess.skull_strip={options.skull_strip!r} is not computed here")
  arr = sum((grid_lib.to_numpy(i) != 0) for i in imgs.values())
  return sitk.Cast(grid_lib.from_numpy((arr > 0).astype(np.uint8), imgs["FLAIR"]),
                   sitk.sitkUInt8)


def mni_transform(imgs: dict, brain, options: Options):
  """Affine registration of the skull-stripped T1 (else FLAIR) to the MNI152 template."""
  import SimpleITK as sitk

  from msjax.preprocess import steps
  if not options.mni:
    return sitk.Transform()
  return steps.register_to_mni(sitk.Mask(brain_image(imgs), brain))


def grid_name(shape) -> str:
  """128³, or 160x192x160."""
  return f"{shape[0]}³" if len(set(shape)) == 1 else "x".join(map(str, shape))


def write_on_model_grid(exam, imgs: dict, brain, to_mni, folder: str,
                        shape=mni_lib.MODEL_SHAPE) -> dict:
  """Images (linear, zero outside the brain), masks (linear, then >= 0.5), the brain mask and
  the transform, on the MNI grid of `shape` voxels (the paper's 128³ by default), into
  `folder`."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  shape = tuple(int(n) for n in shape)
  ref = grid_lib.reference_image(shape)
  affine = grid_lib.box_affine(shape)
  on_grid = grid_lib.to_numpy(steps.resample(sitk.Cast(brain, sitk.sitkFloat32), ref,
                                              to_mni)) >= 0.5
  if not on_grid.any():
    raise steps.PreprocessingError("the brain mask is empty on the MNI grid")
  images = {}
  for m, img in imgs.items():
    arr = grid_lib.to_numpy(steps.resample(img, ref, to_mni))
    images[m] = nifti.write_nifti(np.where(on_grid, arr, 0), affine,
                                  os.path.join(folder, f"{exam.exam_id}_{m}.nii.gz"))
  masks = {}
  for role, path in ([("consensus", exam.consensus)] if exam.consensus else []) + [
      (f"rater{k + 1}", p) for k, p in enumerate(exam.raters)]:
    file, value = nifti.split_label(path)
    m = sitk.ReadImage(file)
    m = sitk.Cast(m == value if value is not None else m, sitk.sitkFloat32)
    masks[role] = nifti.write_nifti(
        (grid_lib.to_numpy(steps.resample(m, ref, to_mni)) >= 0.5).astype(np.uint8), affine,
        os.path.join(folder, f"{exam.exam_id}_{role}.nii.gz"), dtype=np.uint8)
  brain_path = nifti.write_nifti(on_grid.astype(np.uint8), affine,
                                 os.path.join(folder, f"{exam.exam_id}_brain_mask.nii.gz"),
                                 dtype=np.uint8)
  sitk.WriteTransform(to_mni, os.path.join(folder, "to_mni.tfm"))
  return {"images": images, "masks": masks, "brain_mask": brain_path}


def _worker(args):
  exam, out_root, options = args
  try:
    return preprocess_exam(exam, out_root, options), None
  except Exception as e:  # one exam's failure must not stop the cohort
    logging.error("exam %s failed: %s", exam.exam_id, e)
    return None, f"{exam.exam_id}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"


def standardise(records: list[dict], standard: dict | None = None,
                fit_on: list[str] | None = None, out_path: str | None = None) -> dict:
  """Stage 2: Nyúl landmarks (given, or fitted on the `fit_on` exams and written to out_path),
  applied to every exam."""
  from msjax.preprocess import steps
  if standard is None:
    samples: dict[str, list[np.ndarray]] = {}
    for r in records:
      if fit_on and r["exam_id"] not in fit_on:
        continue
      brain = nifti.read_nifti(r["brain_mask"], kind="mask").data > 0
      for m, p in r["images"].items():
        samples.setdefault(m, []).append(nifti.read_nifti(p).data[brain])
    standard = nyul.fit_nyul(samples)
    if out_path:
      files.write_json(standard, out_path)
  for r in records:
    brain_vol = nifti.read_nifti(r["brain_mask"], kind="mask")
    for m, p in r["images"].items():
      if m not in standard:
        raise steps.PreprocessingError(f"no Nyúl landmarks for {m} (landmarks for "
                                       f"{sorted(standard)})")
      v = nifti.read_nifti(p)  # canonical RAS order: written back in the file's own order
      nifti.write_in_source_space(
          nyul.apply_nyul(v.data, brain_vol.data, standard[m]["standard"]), v.grid, p)
  return standard


def exam_of(record: dict) -> manifest_lib.Exam:
  """The preprocessed exam a stage-1 record describes (with the way back to its native space)."""
  return manifest_lib.Exam(
      exam_id=record["exam_id"], patient_id=record["patient_id"], ms=record["ms"],
      split=record["split"], images=record["images"], raters=tuple(record["raters"]),
      consensus=record["consensus"], brain_mask=record["brain_mask"],
      native={"reference": record["native_reference"], "transform": record["transform"]},
      bids=record.get("bids"))


REUSE_NAME = "made_from.json"  # in a preprocessed exam's folder: what made it, for re-runs
RAW_LANDMARKS_NAME = "raw_landmarks.json"  # ... and its Nyúl landmarks before standardisation


def raw_landmarks(record: dict) -> dict:
  """{modality: the 11 Nyúl landmarks of its brain intensities} of a stage-1 record's images."""
  brain = nifti.read_nifti(record["brain_mask"], kind="mask").data > 0
  return {m: [float(v) for v in nyul.landmarks(nifti.read_nifti(p).data[brain])]
          for m, p in record["images"].items()}


def made_from(exam: manifest_lib.Exam, options: Options, standard: dict | None) -> str:
  """A hash of what a preprocessed exam is made from: its input files' contents, the options,
  the Nyúl landmarks, the preprocessing format and msjax's code (its version and a digest of its
  source, msjax.code_version: a checkout or release whose code moved on makes its exams again)."""
  import hashlib

  import msjax
  h = hashlib.sha256()
  for role, _, path in sorted(exam.all_paths()):
    path, label = nifti.split_label(path)  # a BIDS dseg's `::<value>`: one label of the file
    h.update(role.encode() + (b"" if label is None else f"::{label}".encode()))
    nifti.require_file(path)  # a broken link is named as such, not an OSError
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  for name in ("FLAIR", "T1W", "T1WKS", "T2W", "PDW"):  # a shipped co-registration transform
    t = transform_file(exam, name) if name in exam.images else None
    if t:
      with open(t, "rb") as f:
        h.update(f.read())
  options = for_exam(exam, options)  # what the exam is made with (a FLAIR-only exam: atlas)
  made_by = [dataclasses.asdict(options), standard, manifest_lib.PREPROCESSING_FORMAT,
             msjax.code_version()]
  h.update(json.dumps(made_by, sort_keys=True, default=str).encode())
  return h.hexdigest()


def preprocess_one(exam: manifest_lib.Exam, out_root: str, options: Options,
                   standard: dict | None) -> manifest_lib.Exam:
  """One raw exam onto the model grid, standardised with given Nyúl landmarks (a model bundle's).
  A folder this made earlier from the same files, options and landmarks is reused."""
  key = made_from(exam, options, standard)
  marker = os.path.join(out_root, exam.exam_id, REUSE_NAME)
  if os.path.exists(marker):
    with open(marker) as f:
      earlier = json.load(f)
    if earlier.get("key") == key and all(os.path.exists(p) for p in earlier["record"]["images"]
                                         .values()):
      logging.info("[preprocess] %s: reusing %s (made from the same files and options)",
                   exam.exam_id, os.path.dirname(marker))
      return exam_of(earlier["record"])
  record = preprocess_exam(exam, out_root, options)
  if standard:
    # the exam's own landmarks before standardisation, for the report's intensity check (after
    # it, every exam sits on the standard landmarks whatever its contrast was)
    files.write_json(raw_landmarks(record), os.path.join(os.path.dirname(marker),
                                                         RAW_LANDMARKS_NAME))
    standardise([record], {m: v for m, v in standard.items() if m in record["images"]})
  files.write_json({"key": key, "record": record}, marker)  # last: the folder is complete
  return exam_of(record)


def run(config, workdir: str):
  if not config.input:
    raise ValueError("preprocess needs --config.input=FOLDER of raw exams")
  t0 = time.time()
  raw = cohort_lib.load_cohort(config.input)
  out_root = os.path.join(workdir, "cohort")
  os.makedirs(out_root, exist_ok=True)
  options = Options.from_config(config, config.allow_any_geometry)
  exams = list(raw.exams)
  if config.exams:
    keep = set(config_base.parse_list(config.exams))
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
  standard = None
  if records and config.nyul:
    given = None
    if config.nyul_landmarks:
      with open(config.nyul_landmarks) as f:
        given = json.load(f)
    standard = standardise(records, given, config_base.parse_list(config.nyul_fit_on),
                           os.path.join(workdir, "nyul_landmarks.json"))
    logging.info("[preprocess] Nyúl standardisation of %s", sorted(standard))
  cohort = manifest_lib.Cohort(root=out_root, exams=tuple(exam_of(r) for r in records))
  if records:
    manifest_lib.save_cohort(cohort)
    # how these exams were made, for the model bundles trained on them (msjax/infer/bundle.py)
    files.write_json({"format": manifest_lib.PREPROCESSING_FORMAT,
                      "options": dataclasses.asdict(options), "nyul_landmarks": standard},
                     os.path.join(out_root, manifest_lib.PREPROCESSING_NAME))
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
