"""A FLAIR-like head phantom drawn analytically in world coordinates, so that a second visit can be
drawn after a known rigid motion without interpolating the first (and with its own noise).

Axial 2D multi-slice geometry like the Lesjak exams: 1 × 1 mm in-plane, 3 mm slices. Tissue (FLAIR
contrast): white matter 100, cortex 125, CSF 20 (ventricles and a sulcal rim), skull 5, scalp 140;
lesions 175. Gaussian noise of SD 3 after partial-volume averaging.
"""
from __future__ import annotations

import numpy as np

SHAPE, SPACING = (110, 120, 36), (1.0, 1.0, 3.0)
ORIGIN = np.array([-55.0, -60.0, -52.5])          # world mm of voxel (0, 0, 0), identity direction


def rotation(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
  ax, ay, az = np.radians([deg_x, deg_y, deg_z])
  rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
  ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
  rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
  return rz @ ry @ rx


def world_points(shape=SHAPE, spacing=SPACING, origin=ORIGIN) -> np.ndarray:
  idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
  return idx * np.asarray(spacing) + origin


def head(points: np.ndarray, lesions=()) -> np.ndarray:
  """points: (..., 3) head-frame mm. lesions: (centre mm, radius mm[, intensity]) spheres."""
  e = lambda a, b, c: (points[..., 0] / a) ** 2 + (points[..., 1] / b) ** 2 + (points[..., 2] / c) ** 2  # noqa: E731
  img = np.zeros(points.shape[:-1], np.float32)
  img[e(52, 58, 50) <= 1] = 140                       # scalp
  img[e(47, 53, 45) <= 1] = 5                         # skull
  img[e(42, 48, 40) <= 1] = 20                        # CSF rim
  img[e(40, 46, 38) <= 1] = 125                       # cortex
  img[e(35, 41, 33) <= 1] = 100                       # white matter
  for x, y, a, b, c in ((-6, 0, 4, 16, 9), (6, 4, 3, 12, 7)):  # ventricles, unequal: no mirror
    v = ((points[..., 0] - x) / a) ** 2 + ((points[..., 1] - y) / b) ** 2 + (points[..., 2] / c) ** 2
    img[v <= 1] = 20
  for centre, radius, *value in lesions:  # (centre, radius[, intensity]); default 175
    img[((points - np.asarray(centre)) ** 2).sum(-1) <= radius ** 2] = value[0] if value else 175
  return img


def visit(lesions=(), rotation_deg=(0, 0, 0), shift_mm=(0, 0, 0), seed=0, noise=3.0) -> np.ndarray:
  """The head imaged after a rigid motion: voxel world point p shows the head at R^T (p - t).
  Each voxel averages 2 × 2 × 3 samples (partial volume over the voxel and its slice)."""
  r, t = rotation(*rotation_deg), np.asarray(shift_mm, float)
  p = world_points()
  out = np.zeros(SHAPE, np.float32)
  offsets = [(dx, dy, dz) for dx in (-0.25, 0.25) for dy in (-0.25, 0.25) for dz in (-1 / 3, 0, 1 / 3)]
  for o in offsets:
    out += head((p + np.asarray(o) * SPACING - t) @ r, lesions)
  out /= len(offsets)
  return out + np.random.default_rng(seed).normal(0, noise, SHAPE).astype(np.float32)


def write(array: np.ndarray, path: str) -> str:
  """As NIfTI with the phantom's geometry (RAS affine; voxel (0,0,0) at ORIGIN)."""
  import nibabel as nib
  affine = np.diag(list(SPACING) + [1.0])
  affine[:3, 3] = ORIGIN
  nib.save(nib.Nifti1Image(np.clip(array, 0, None).astype(np.float32), affine), path)
  return path


def changed_by(lesions, rotation_deg=(0, 0, 0), shift_mm=(0, 0, 0), fraction=0.1) -> np.ndarray:
  """Voxels whose (noise-free, partial-volume) intensity the lesions change by more than
  `fraction` of the lesion contrast: where a change mask may rightly reach."""
  kw = dict(rotation_deg=rotation_deg, shift_mm=shift_mm, noise=0.0)
  return np.abs(visit(lesions, **kw) - visit((), **kw)) > fraction * (175 - 100)
