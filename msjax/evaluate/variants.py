"""Test exams as a user may have them instead: fewer sequences, or 2D thick-slice acquisitions.

A variant is named by what it keeps: `all` (the exam as it is), `FLAIR+T1W` (only those
sequences; the others are missing, as in a clinic that never acquired them), `thick<N>mm`
(every sequence re-acquired as axial slices N mm thick: msjax.data.acquisition.thick_slices on
the exam's own grid, written beside the fold) or `slab<N>mm` (the same, by another simulator:
see slab_slices). Robustness is then scored with the same code as the exam itself.

`thick<N>mm` is the simulator the robust training augments with (a Gaussian slice profile,
linear interpolation back): a model trained with it is scored on its own augmentation there, a
figure that flatters it. `slab<N>mm` shares nothing with it: a rectangular slice profile (a 2D
acquisition's slab, averaged), a 1 mm gap between slices as clinical protocols leave, and cubic
spline interpolation back onto the grid, as a viewer or a registration tool would resample it.
"""
from __future__ import annotations

import dataclasses
import os
import re

import nibabel as nib
import numpy as np

from msjax.data import acquisition, manifest, nifti

THICK = re.compile(r"^thick(\d+(?:\.\d+)?)mm$")
SLAB = re.compile(r"^slab(\d+(?:\.\d+)?)mm$")
SLAB_GAP_MM = 1.0


def parse(names: str) -> list[str]:
  """'all,FLAIR+T1W,thick4mm' -> the variant names, checked."""
  out = [n.strip() for n in names.split(",") if n.strip()]
  for n in out:
    if n != "all" and not THICK.match(n) and not SLAB.match(n) and not all(
        m in manifest.MODALITIES for m in n.split("+")):
      raise ValueError(f"input variant {n!r}: 'all', sequences joined by '+' from "
                       f"{manifest.MODALITIES}, thick<N>mm or slab<N>mm")
  return out


def make(exam, variant: str, folder: str):
  """The exam as `variant` (a manifest Exam); thick-slice images are written under folder."""
  if variant == "all":
    return exam
  thick, slab = THICK.match(variant), SLAB.match(variant)
  if slab:
    mm = float(slab.group(1))
    images = {m: slab_image(p, mm, os.path.join(folder, f"{exam.exam_id}_{m}.nii.gz"))
              for m, p in exam.images.items()}
    return dataclasses.replace(exam, images=images)
  if not thick:
    keep = variant.split("+")
    missing = [m for m in keep if m not in exam.images]
    if missing:
      raise ValueError(f"{exam.exam_id}: variant {variant} needs {missing}, the exam has "
                       f"{sorted(exam.images)}")
    return dataclasses.replace(exam, images={m: p for m, p in exam.images.items() if m in keep})
  mm = float(thick.group(1))
  images = {m: thick_slice_image(p, mm, os.path.join(folder, f"{exam.exam_id}_{m}.nii.gz"))
            for m, p in exam.images.items()}
  return dataclasses.replace(exam, images=images)


def thick_slice_image(path: str, mm: float, out_path: str) -> str:
  """The image at `path` as axial slices `mm` thick (along its axis closest to superior),
  back on its own grid and affine; written atomically to out_path."""
  img = nib.load(path)
  data = np.asarray(img.dataobj, np.float32)
  axis = int(np.argmax(np.abs(img.affine[2, :3])))  # the voxel axis that moves most along S
  thickness = mm / float(img.header.get_zooms()[axis])
  out = acquisition.thick_slices(data, axis, thickness, phase=0.0)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  return nifti.write_nifti(out, img.affine, out_path)


def slab_slices(x: np.ndarray, axis: int, thickness: float, gap: float) -> np.ndarray:
  """x (3D) as 2D slices `thickness` voxels thick with `gap` voxels between them along `axis`:
  each slice the mean of the voxels its slab covers (rectangular profile, fractional voxels at
  its ends weighted), then back onto the grid by cubic spline interpolation between slice
  centres. Zeros (outside the brain) stay zeros."""
  from scipy import interpolate
  n = x.shape[axis]
  step = thickness + gap
  centres = np.arange(thickness / 2 - 0.5, n - 0.5, step)
  xt = np.moveaxis(np.asarray(x, np.float32), axis, 0).reshape(n, -1)
  tissue = (xt != 0).astype(np.float32)
  edges = np.arange(n + 1) - 0.5  # voxel i covers [i - 0.5, i + 0.5)
  weights = np.zeros((len(centres), n), np.float32)
  for j, c in enumerate(centres):
    lo, hi = c - thickness / 2, c + thickness / 2
    weights[j] = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
  seen = weights @ tissue
  slices = np.where(seen > 1e-3, (weights @ xt) / np.maximum(seen, 1e-3), 0.0)
  spline = interpolate.CubicSpline(centres, slices, axis=0, bc_type="natural")
  out = spline(np.clip(np.arange(n), centres[0], centres[-1])).astype(np.float32)
  out = np.where(tissue > 0, out, 0.0)
  return np.moveaxis(out.reshape((n,) + tuple(np.delete(x.shape, axis))), 0, axis).copy()


def slab_image(path: str, mm: float, out_path: str) -> str:
  """The image at `path` re-acquired as axial 2D slices `mm` thick with a SLAB_GAP_MM gap
  (slab_slices), back on its own grid; written atomically to out_path."""
  img = nib.load(path)
  data = np.asarray(img.dataobj, np.float32)
  axis = int(np.argmax(np.abs(img.affine[2, :3])))
  zoom = float(img.header.get_zooms()[axis])
  out = slab_slices(data, axis, mm / zoom, SLAB_GAP_MM / zoom)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  return nifti.write_nifti(out, img.affine, out_path)
