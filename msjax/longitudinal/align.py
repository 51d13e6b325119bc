"""Two visits of one patient onto one grid in the patient's own space (SimpleITK, imported lazily).

N4 on every image (msjax.preprocess.steps.n4); the follow-up FLAIR registered rigidly to the
baseline FLAIR (Mattes MI, steps.rigid_to; no MNI: every resampling is a chance for false change);
T2 onto its own visit's FLAIR by the exam's intrastudy transform (direction kept by mutual
information) or by rigid registration; a brain mask of the baseline FLAIR.

The decision grid is the baseline FLAIR's frame (origin corner, orientation) at the finer spacing
of the two visits per axis: neither visit is decimated, and on a baseline with thicker slices the
follow-up keeps its slice resolution.

Brain mask: `otsu` (default) is Otsu's foreground of the N4 FLAIR, opened by a 3 mm ball (the dark
skull cuts the scalp off), its largest component grown back, holes filled and closed by 4 mm:
~5 s, Dice 0.953 / 0.964 with ROBEX on the Lesjak patients 01 / 12 (ROBEX on T1, measured). `robex`
runs ROBEX on the baseline FLAIR (45 s unloaded; minutes on 2 loaded cores).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np


@dataclasses.dataclass
class Aligned:
  grid: object                    # sitk.Image: the decision grid (baseline space)
  spacing: tuple
  flair: tuple                    # (baseline, follow-up) float32 arrays on the grid, N4-corrected
  t2: tuple | None                # the same for T2, or None
  brain: np.ndarray               # bool, baseline brain inside both visits' fields of view
  to_followup: object             # sitk.Transform: grid (baseline) points -> follow-up FLAIR points
  native: tuple                   # (baseline, follow-up) sitk.Image: the raw FLAIRs' grids
  times_s: dict


def brain_mask_otsu(img):
  """The fast brain mask (uint8 sitk image on img's grid): msjax.preprocess.steps'
  threshold_brain_mask."""
  from msjax.preprocess import steps
  return steps.threshold_brain_mask(img)


def decision_grid(baseline, followup):
  """The baseline's frame at the finer spacing of the two images per axis."""
  import SimpleITK as sitk
  spacing = np.minimum(baseline.GetSpacing(), followup.GetSpacing())
  size = [int(np.ceil(n * s / t - 1e-6)) for n, s, t in
          zip(baseline.GetSize(), baseline.GetSpacing(), spacing)]
  direction = np.array(baseline.GetDirection()).reshape(3, 3)
  corner = np.array(baseline.GetOrigin()) - direction @ (np.array(baseline.GetSpacing()) / 2)
  grid = sitk.Image(size, sitk.sitkFloat32)
  grid.SetSpacing([float(s) for s in spacing])
  grid.SetDirection(baseline.GetDirection())
  grid.SetOrigin([float(v) for v in corner + direction @ (spacing / 2)])
  return grid


def to_flair(flair, image, transform_path: str | None):
  """Transform mapping FLAIR points into `image` (msjax.preprocess.steps.to_flair)."""
  from msjax.preprocess import steps
  return steps.to_flair(flair, image, transform_path)[0]


def read_image(path: str, n4: bool = True):
  """A NIfTI as float32 SimpleITK image read as segment's preprocessing reads a scan (negative
  offsets or padding to 0, hot voxels replaced: msjax.preprocess.steps.read_scan), N4-corrected
  unless n4 is False."""
  from msjax.preprocess import steps
  img, _ = steps.read_scan(path)
  return steps.n4(img) if n4 else img


def align_pair(baseline: dict, followup: dict, *, n4: bool = True, use_t2: bool = True,
               brain: str = "otsu", log=lambda *a: None) -> Aligned:
  """baseline/followup: {"FLAIR": path, "T2W": path (optional), "T2W_transform": path of the T2 ->
  FLAIR transform file (optional)}."""
  import SimpleITK as sitk

  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  times, t0 = {}, time.time()

  def timed(name, fn, *args):
    t = time.time()
    out = fn(*args)
    times[name] = round(time.time() - t, 1)
    log(f"  {name}: {times[name]:.1f} s")
    return out

  f1 = timed("n4_flair_baseline", read_image, baseline["FLAIR"], n4)
  f2 = timed("n4_flair_followup", read_image, followup["FLAIR"], n4)
  to_followup = timed("rigid_registration", lambda: steps.unwrap(steps.rigid_to(f1, f2)))
  if brain == "robex":
    mask = timed("brain_mask", steps.robex_mask, f1)
  else:
    mask = timed("brain_mask", brain_mask_otsu, f1)
  grid = decision_grid(f1, f2)
  arr = lambda img, tfm, linear=True: grid_lib.to_numpy(  # noqa: E731
      steps.resample(img, grid, tfm, linear=linear))
  flair = (arr(f1, None), arr(f2, to_followup))
  ones = lambda img: sitk.Cast(img * 0 + 1, sitk.sitkFloat32)  # noqa: E731
  inside = (arr(ones(f1), None, False) > 0) & (arr(ones(f2), to_followup, False) > 0)
  t2 = None
  if use_t2 and baseline.get("T2W") and followup.get("T2W"):
    t0_t2 = time.time()
    out = []
    for visit, flair_img, tfm in ((baseline, f1, None), (followup, f2, to_followup)):
      image = read_image(visit["T2W"], n4)
      into = to_flair(flair_img, image, visit.get("T2W_transform"))
      full = sitk.CompositeTransform([into, tfm]) if tfm is not None else into
      out.append(arr(image, full))
      inside &= arr(ones(image), full, False) > 0
    t2 = tuple(out)
    times["t2"] = round(time.time() - t0_t2, 1)
    log(f"  t2: {times['t2']:.1f} s")
  brain_arr = (arr(sitk.Cast(mask, sitk.sitkFloat32), None, False) > 0) & inside
  times["align_total"] = round(time.time() - t0, 1)
  return Aligned(grid=grid, spacing=tuple(grid.GetSpacing()), flair=flair, t2=t2,
                 brain=brain_arr, to_followup=to_followup, native=(f1, f2), times_s=times)
