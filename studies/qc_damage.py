"""Deliberately damaged copies of an exam on the model grid, one per QC reason: what the QC
thresholds were measured against (with the real exams, which must all pass) and what the tests
check each reason on. Each returns new inputs for msjax.report.qc.measure and leaves the exam's
own arrays alone."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from msjax.report import atlas as atlas_lib

# damage -> the QC check it must trip
EXPECTED = {"shift": "registration", "rotation": "registration", "skull": "brain_volume",
            "thick_slices": "slice_thickness", "coarse_inplane": "inplane_resolution",
            "intensities": "intensities", "no_flair": "flair", "slab": "field_of_view",
            "cut": "field_of_view", "noise": "image_structure", "misaligned": "alignment",
            "renamed": "contrast"}


def _move(images, brain, fn):
  return ({m: fn(v, 1) for m, v in images.items()},
          fn(np.asarray(brain, np.float32), 1) >= 0.5)


def damaged(kind: str, images: dict, brain: np.ndarray, affine: np.ndarray,
            native_spacing=(1.0, 1.0, 1.0)) -> dict:
  """kwargs for qc.measure: images, brain, affine, native_spacing (and raw_landmarks for the
  intensity damage), for one kind of damage:
    shift           the whole exam 15 mm forward (a registration that slipped);
    rotation        the whole exam pitched by 20 degrees about the left-right axis;
    skull           the brain mask grown by 12 mm (a skull strip that kept skull and scalp);
    thick_slices    raw FLAIR slices of 8 mm;
    coarse_inplane  raw FLAIR in-plane voxels of 3.5 mm;
    intensities     every sequence's contrast inverted before standardisation (a sequence
                    under another's name: a histogram unlike the model's, stretched onto its
                    landmarks);
    no_flair        the FLAIR missing;
    slab            a 45 mm thick slab of the brain (the field of view of a partial acquisition);
    cut             the exam 45 mm lower: the brain runs off the bottom of the grid;
    noise           the FLAIR replaced by Gaussian noise of its brain's mean and spread (a
                    corrupted series or a wrong file under its name);
    misaligned      every sequence but FLAIR turned 10 degrees and moved 6 mm within the brain
                    mask (a failed co-registration, or a sequence of another exam);
    renamed         FLAIR and T1W each under the other's name (series mapped to the wrong
                    sequences)."""
  spacing = atlas_lib.spacing(affine)
  images = {m: np.asarray(v, np.float32) for m, v in images.items()}
  brain = np.asarray(brain) > 0
  out = {"images": images, "brain": brain, "affine": affine, "native_spacing": native_spacing}
  if kind == "shift":
    step = (0.0, 15.0 / spacing[1], 0.0)
    out["images"], out["brain"] = _move(images, brain,
                                        lambda v, o: ndimage.shift(v, step, order=o))
  elif kind == "rotation":
    out["images"], out["brain"] = _move(
        images, brain, lambda v, o: ndimage.rotate(v, 20, axes=(1, 2), reshape=False, order=o))
  elif kind == "skull":
    grown = ndimage.distance_transform_edt(~brain, sampling=spacing) <= 12.0
    out["brain"] = grown
  elif kind == "thick_slices":
    out["native_spacing"] = (0.72, 0.72, 8.0)
  elif kind == "coarse_inplane":
    out["native_spacing"] = (3.5, 3.5, 3.0)
  elif kind == "intensities":
    from msjax.preprocess import nyul
    out["raw_landmarks"] = {}
    for m, v in images.items():
      inside = v[brain]
      out["raw_landmarks"][m] = nyul.landmarks(inside.max() - inside)
  elif kind == "no_flair":
    out["images"] = {m: v for m, v in images.items() if m != "FLAIR"}
  elif kind == "slab":
    z = np.flatnonzero(brain.any((0, 1)))
    mid = int(np.median(z))
    half = int(round(22.5 / spacing[2]))
    keep = np.zeros(brain.shape, bool)
    keep[:, :, mid - half:mid + half] = True
    out["images"] = {m: np.where(keep, v, 0) for m, v in images.items()}
    out["brain"] = brain & keep
  elif kind == "cut":
    step = (0.0, 0.0, -45.0 / spacing[2])
    out["images"], out["brain"] = _move(images, brain,
                                        lambda v, o: ndimage.shift(v, step, order=o))
  elif kind == "noise":
    flair = images["FLAIR"]
    rng = np.random.default_rng(0)
    noise = rng.normal(flair[brain].mean(), flair[brain].std(), flair.shape).astype(np.float32)
    out["images"] = {**images, "FLAIR": np.where(brain, noise, 0)}
  elif kind == "misaligned":
    step = (6.0 / spacing[0], 0.0, 0.0)

    def turn(v):
      return ndimage.shift(ndimage.rotate(v, 10, axes=(0, 1), reshape=False, order=1), step,
                           order=1)
    out["images"] = {m: v if m == "FLAIR" else np.where(brain, turn(v), 0)
                     for m, v in images.items()}
  elif kind == "renamed":
    out["images"] = {**images, "FLAIR": images["T1W"], "T1W": images["FLAIR"]}
  else:
    raise ValueError(f"unknown damage {kind!r} (one of {', '.join(EXPECTED)})")
  return out
