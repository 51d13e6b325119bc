"""Predictions on the model's MNI grid (the paper's 128³ or the model's own) -> the exam's native
FLAIR space, through the inverse of the affine registration saved by the preprocessing."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from msjax.data import nifti
from msjax.preprocess import grid as grid_lib


def to_native(volume: np.ndarray, grid: nifti.Grid, native: dict, *, linear: bool = True):
  """volume: canonical (RAS) array on the exam's model grid. Returns (array in the raw FLAIR
  file's voxel order, that file's affine)."""
  src = grid_lib.from_numpy(volume.astype(np.float32),
                            grid_lib.reference_image(volume.shape, grid.affine))
  ref = sitk.ReadImage(native["reference"])
  to_mni = sitk.ReadTransform(native["transform"])
  out = sitk.Resample(src, ref, to_mni.GetInverse(),
                      sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, 0.0,
                      sitk.sitkFloat32)
  return grid_lib.to_numpy(out), nib.load(native["reference"]).affine


def mask_to_model_grid(mask: np.ndarray, native: dict, shape=grid_lib.MODEL_SHAPE) -> np.ndarray:
  """The inverse direction, for masks drawn in native space, onto the model grid of `shape`:
  linear then >= 0.5."""
  ref = sitk.ReadImage(native["reference"])
  src = grid_lib.from_numpy(mask.astype(np.float32), ref)
  out = sitk.Resample(src, grid_lib.reference_image(tuple(shape)),
                      sitk.ReadTransform(native["transform"]),
                      sitk.sitkLinear, 0.0, sitk.sitkFloat32)
  return (grid_lib.to_numpy(out) >= 0.5).astype(np.uint8)


def native_to_mni(points: np.ndarray, native: dict) -> np.ndarray:
  """World points (RAS mm) of the exam's native FLAIR space -> MNI152 mm (RAS), through the
  inverse of the exam's MNI registration."""
  inverse = sitk.ReadTransform(native["transform"]).GetInverse()
  lps = np.asarray(points, float) * [-1, -1, 1]
  return np.array([inverse.TransformPoint(tuple(float(v) for v in p)) for p in lps]) * [-1, -1, 1]


def world_matrix(transform_path: str) -> np.ndarray:
  """The 4x4 matrix (RAS mm) of an affine ITK transform file, in ITK's direction: MNI points ->
  the exam's native points."""
  tfm = sitk.ReadTransform(transform_path)
  ras = np.diag([-1.0, -1.0, 1.0])
  points = np.vstack([np.zeros(3), np.eye(3) * 100.0])  # RAS
  mapped = np.array([tfm.TransformPoint(tuple(float(v) for v in ras @ p)) for p in points]) @ ras
  m = np.eye(4)
  m[:3, 3] = mapped[0]
  m[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
  return m


def mean_world_matrix(transform_paths: list[str]) -> np.ndarray:
  """The mean of several exams' MNI registrations (world_matrix), for masks of other patients
  that lie in the space those exams came in (lesion maps registered as the exams were)."""
  return np.mean([world_matrix(p) for p in transform_paths], axis=0)
