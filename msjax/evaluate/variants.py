"""Test exams as a user may have them instead: fewer sequences, or 2D thick-slice acquisitions.

A variant is named by what it keeps: `all` (the exam as it is), `FLAIR+T1W` (only those
sequences; the others are missing, as in a clinic that never acquired them), or `thick<N>mm`
(every sequence re-acquired as axial slices N mm thick: msjax.data.acquisition.thick_slices on
the exam's own grid, written beside the fold). Robustness is then scored with the same code as
the exam itself (issue 21's table).
"""
from __future__ import annotations

import dataclasses
import os
import re

import nibabel as nib
import numpy as np

from msjax.data import acquisition, manifest, nifti

THICK = re.compile(r"^thick(\d+(?:\.\d+)?)mm$")


def parse(names: str) -> list[str]:
  """'all,FLAIR+T1W,thick4mm' -> the variant names, checked."""
  out = [n.strip() for n in names.split(",") if n.strip()]
  for n in out:
    if n != "all" and not THICK.match(n) and not all(
        m in manifest.MODALITIES for m in n.split("+")):
      raise ValueError(f"input variant {n!r}: 'all', sequences joined by '+' from "
                       f"{manifest.MODALITIES}, or thick<N>mm")
  return out


def make(exam, variant: str, folder: str):
  """The exam as `variant` (a manifest Exam); thick-slice images are written under folder."""
  if variant == "all":
    return exam
  thick = THICK.match(variant)
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
