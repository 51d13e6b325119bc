"""`predict` mode: a trained checkpoint + a cohort (or a folder holding one exam) -> per exam, in the
exam's ORIGINAL voxel grid and affine: a binary lesion mask, the probability map, the per-voxel
spread of the overlapping predictions, and a row (lesion count, volume in mL) of predictions.csv.

Samplers: "sliding" (full coverage, overlap, Gaussian weighting; the default) or "random" (the
paper's N = 150 random patches in the brain, plain averaging, uncovered voxels no-lesion).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from msjax.data import exams as exams_lib
from msjax.data import manifest as manifest_lib
from msjax import files
from msjax.data import cohort as cohort_lib
from msjax.data import lesions as lesions_lib
from msjax.data import nifti
from msjax.infer import sliding_window
from msjax.models import isensee
from msjax.models import model as model_lib
from msjax import checkpoint


class Predictor:
  """A trained segmentation network with the data settings it was trained with."""

  def __init__(self, checkpoint_path: str, *, batch_size: int = 16, conv_impl: str = "",
               mirror: bool = False):
    params, meta, where = checkpoint.restore_params(checkpoint_path)
    if meta.get("task") != "segmentation":
      raise ValueError(f"{where}: a {meta.get('task')} checkpoint cannot segment; give a "
                       "finetune workdir")
    cfg = config_dict.ConfigDict(meta["config"])
    self.where, self.train_config = where, cfg
    model_cfg = cfg.model
    if conv_impl:
      model_cfg.conv_impl = conv_impl
    model = model_lib.Model(isensee.constructor("segmentation", model_cfg))
    self.params = jax.tree.map(jax.numpy.asarray, params)
    self.patch = int(cfg.data.patch_size)
    self.model_shape = tuple(cfg.data.model_shape) or None
    self.batch_size = batch_size
    self.mirror = mirror  # test-time mirroring: mean over the 8 flips (8× the compute)
    self._predict = model_lib.make_predict(model, "segmentation", mirror=mirror)

  def predict_batch(self, x):
    return self._predict(self.params, x)

  def predict_exam(self, arrays: exams_lib.ExamArrays, sampler: str = "sliding",
                   overlap: float = 0.5, n_random: int = 150, seed: int = 0):
    if sampler == "sliding":
      corners = sliding_window.sliding_window_corners(arrays.shape, self.patch, overlap,
                                                      brain=arrays.brain)
      weighting = "gaussian"
    elif sampler == "random":
      corners = sliding_window.random_brain_corners(arrays.brain, self.patch, n_random, seed)
      weighting = "uniform"
    else:
      raise ValueError(f"unknown sampler {sampler!r} (sliding or random)")
    pred = sliding_window.predict_volume(self.predict_batch, arrays.images, corners, self.patch,
                                         self.batch_size, weighting)
    brain = arrays.brain > 0  # lesions are only sought in the brain
    pred.probability = np.where(brain, pred.probability, 0).astype(np.float32)
    pred.spread = np.where(brain, pred.spread, 0).astype(np.float32)
    return pred, len(corners)


def to_native(arrays: exams_lib.ExamArrays, volume: np.ndarray) -> np.ndarray:
  """Model grid -> the exam's own (canonical-order) grid: linear interpolation."""
  return nifti.resample_box(volume, arrays.native_grid.shape, order=1)


def select_exams(cohort, which: str):
  if which in ("all", ""):
    return list(cohort.exams)
  if which in manifest_lib.SPLITS:
    return cohort.select(split=which)
  ids = [s.strip() for s in which.split(",")]
  return [cohort.by_id(i) for i in ids]


def remove_small_lesions(mask: np.ndarray, voxel_mm3: float, max_mm3: float) -> np.ndarray:
  """The mask without its 6-connected components of max_mm3 or less (the evaluator's rule for
  what counts as a lesion: fewer than floor(max_mm3 / voxel volume) + 1 voxels)."""
  if max_mm3 <= 0 or not mask.any():
    return mask
  labels, n = lesions_lib.lesion_labels(mask, voxel_mm3, max_mm3)
  return (labels > 0).astype(mask.dtype)


def predict_cohort(predictor: Predictor, exams, out_dir: str, *, sampler="sliding", overlap=0.5,
                   n_random=150, threshold=0.5, seed=0, min_lesion_mm3=0.0,
                   allow_any_geometry=False, log=logging.info) -> list[dict]:
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for i, exam in enumerate(exams):
    t0 = time.time()
    arrays = exams_lib.load_exam(exam, model_shape=predictor.model_shape,
                                 allow_any_geometry=allow_any_geometry,
                                  patch_size=predictor.patch)
    pred, n_patches = predictor.predict_exam(arrays, sampler, overlap, n_random, seed)
    d = os.path.join(out_dir, exam.exam_id)
    if exam.native:
      # a preprocessed exam: back through the inverse MNI registration to the raw FLAIR's space
      from msjax.preprocess import native as native_lib
      prob, affine = native_lib.to_native(
          nifti.resample_box(pred.probability, arrays.native_grid.shape), arrays.native_grid,
          exam.native)
      spread, _ = native_lib.to_native(
          nifti.resample_box(pred.spread, arrays.native_grid.shape), arrays.native_grid,
          exam.native)
      write = lambda a, name, dt=np.float32: nifti.write_nifti(a, affine, os.path.join(d, name), dt)  # noqa: E731
      voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000
    else:
      prob = to_native(arrays, pred.probability)
      spread = to_native(arrays, pred.spread)
      grid = arrays.native_grid
      write = lambda a, name, dt=np.float32: nifti.write_in_source_space(  # noqa: E731
          a, grid, os.path.join(d, name), dt)
      voxel_ml = grid.voxel_ml
    mask = remove_small_lesions((prob >= threshold).astype(np.uint8), voxel_ml * 1000,
                                min_lesion_mm3)
    paths = {"mask": write(mask, "mask.nii.gz", np.uint8),
             "probability": write(prob, "probability.nii.gz"),
             "spread": write(spread, "spread.nii.gz")}
    _, ids = lesions_lib.lesions(mask, voxel_ml * 1000)
    row = {"exam_id": exam.exam_id, "patient_id": exam.patient_id, "lesions": len(ids),
           "volume_ml": round(float(mask.sum()) * voxel_ml, 4), "patches": n_patches,
           "sampler": sampler, "mirror": predictor.mirror, "threshold": threshold,
           "seconds": round(time.time() - t0, 2), **paths}
    rows.append(row)
    log(f"[predict] {i + 1}/{len(exams)} {exam.exam_id}: {row['lesions']} lesions, "
        f"{row['volume_ml']:.2f} mL, {n_patches} patches, {row['seconds']:.1f} s -> {d}")
  files.write_csv(rows, os.path.join(out_dir, "predictions.csv"))
  return rows


def run(config, workdir: str):
  if not config.checkpoint:
    raise ValueError("predict needs --config.checkpoint=<finetune workdir>")
  if not config.cohort:
    raise ValueError("predict needs --config.cohort=PATH (a manifest, a cohort folder, or a "
                     "folder with one exam's NIfTI files)")
  predictor = Predictor(config.checkpoint, batch_size=config.batch_size, mirror=config.mirror)
  cohort = cohort_lib.load_cohort(config.cohort)
  exams = select_exams(cohort, config.exams)
  if not exams:
    raise ValueError(f"no exam selected by exams={config.exams!r} in {cohort.root}")
  out_dir = os.path.join(workdir, "predictions")
  rows = predict_cohort(predictor, exams, out_dir, sampler=config.sampler,
                        overlap=config.overlap, n_random=config.n_random,
                        threshold=config.threshold, seed=config.seed,
                        min_lesion_mm3=config.min_lesion_mm3,
                        allow_any_geometry=config.allow_any_geometry)
  files.write_json({"checkpoint": predictor.where, "cohort": cohort.root, "exams": rows},
                   os.path.join(out_dir, "predict.json"))
  print(f"[predict] {len(rows)} exam(s) from {predictor.where}: masks, probabilities and spread "
        f"maps in {out_dir}/<exam>/, table {out_dir}/predictions.csv")
  return rows
