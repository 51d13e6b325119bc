"""What counts as a lesion, as the MSSEG-2016 evaluator counts: a 6-connected component of a mask
with more than 3 mm³, numbered as ITK numbers components."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

MIN_LESION_MM3 = 3.0
SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def min_lesion_voxels(voxel_mm3: float, min_mm3: float = MIN_LESION_MM3) -> int:
  """Anima: floor(3 mm³ / voxel volume) + 1 voxels ("strictly more than 3 mm³")."""
  return int(math.floor(min_mm3 / voxel_mm3)) + 1


def lesion_labels(mask: np.ndarray, voxel_mm3: float, min_mm3: float = MIN_LESION_MM3):
  """6-connected components with at least min_lesion_voxels voxels, numbered 1..n as ITK's
  ConnectedComponent + RelabelComponent filters number them (size descending, ties in raster
  order with the first array axis fastest); removed components are 0. Returns (labels, n)."""
  raw, n = ndimage.label(mask > 0, structure=SIX_CONNECTED)
  if n == 0:
    return raw, 0
  sizes = np.bincount(raw.ravel(), minlength=n + 1)
  # first voxel of each component in ITK's raster order (x fastest = Fortran order), found
  # among the component voxels only (a unique over the whole grid sorts every voxel)
  flat = raw.ravel(order="F")
  at = np.flatnonzero(flat)
  ids, first = np.unique(flat[at], return_index=True)
  first_seen = np.zeros(n + 1, np.int64)
  first_seen[ids] = at[first]
  keep = [k for k in range(1, n + 1) if sizes[k] >= min_lesion_voxels(voxel_mm3, min_mm3)]
  order = sorted(keep, key=lambda k: (-sizes[k], first_seen[k]))
  lut = np.zeros(n + 1, np.int32)
  lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
  return lut[raw], len(order)


def lesions(mask: np.ndarray, voxel_mm3: float, min_mm3: float = MIN_LESION_MM3):
  """(label volume, list of kept labels): the lesions the evaluator counts."""
  labels, n = lesion_labels(mask, voxel_mm3, min_mm3)
  return labels, list(range(1, n + 1))


def per_lesion(labels: np.ndarray, n: int, value: np.ndarray | None = None) -> dict:
  """Lesions 1..n of a label volume from their own voxels: "voxels" (n,), "centre" (n, 3; voxel
  coordinates) and, for a value map on the same grid, its "mean" and "max" (nan for a label with
  no voxel). ndimage's center_of_mass / mean / maximum answers, without sorting the whole grid."""
  inside = labels > 0
  ids = labels[inside].astype(np.intp)  # a bool mask too (one lesion), as ndimage took it
  voxels = np.bincount(ids, minlength=n + 1)[1:]
  count = np.where(voxels > 0, voxels, np.nan)
  out = {"voxels": voxels,
         "centre": np.stack([np.bincount(ids, weights=c, minlength=n + 1)[1:] / count
                             for c in np.nonzero(inside)], -1)}
  if value is not None:
    v = np.asarray(value)[inside].astype(np.float64)
    out["mean"] = np.bincount(ids, weights=v, minlength=n + 1)[1:] / count
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, ids, v)
    out["max"] = np.where(voxels > 0, peak[1:], np.nan)
  return out


MAX_BLOBS = 32  # lesions per training patch with a loss term of their own (blob loss)


def blob_labels(mask: np.ndarray, max_blobs: int = MAX_BLOBS) -> np.ndarray:
  """A training patch's lesions for blob loss (msjax/train/losses.py): its 6-connected components
  numbered 1..max_blobs, those past max_blobs (rare in a 32³ patch) all max_blobs + 1, which
  the loss leaves outside every lesion's region; 0 background. uint8."""
  labels, _ = ndimage.label(mask > 0.5, structure=SIX_CONNECTED)
  return np.minimum(labels, max_blobs + 1).astype(np.uint8)


def mask_of(probability: np.ndarray, voxel_mm3: float, threshold: float,
            min_lesion_mm3: float = 0.0, min_lesion_peak: float = 0.0) -> np.ndarray:
  """The one rule every mask msjax writes or scores is made by (segment, predict, validation,
  the leave-one-out's ensembles): p >= threshold, then its small and its faint lesions
  removed."""
  mask = remove_small_lesions((probability >= threshold).astype(np.uint8), voxel_mm3,
                              min_lesion_mm3)
  return remove_faint_lesions(mask, probability, min_lesion_peak)


def remove_faint_lesions(mask: np.ndarray, probability: np.ndarray, min_peak: float
                         ) -> np.ndarray:
  """The mask without its 6-connected components whose highest probability is below min_peak:
  hysteresis thresholding (Canny 1986), a lesion's extent where p >= threshold, its existence
  only where one of its voxels is this sure. On the Lesjak leave-one-out, predicted lesions
  that peaked under 0.8 were almost never real (docs/results/lesion_peak.md); removing them
  leaves every other lesion whole, unlike raising the threshold, which shrinks them all."""
  if min_peak <= 0 or not mask.any():
    return mask
  labels, n = ndimage.label(mask > 0, structure=SIX_CONNECTED)
  inside = labels > 0  # over the lesion voxels only: ndimage.maximum sorts the whole volume (2 s)
  peaks = np.full(n + 1, -np.inf)
  np.maximum.at(peaks, labels[inside], probability[inside])
  keep = peaks >= min_peak
  keep[0] = False
  return keep[labels].astype(mask.dtype)


def remove_small_lesions(mask: np.ndarray, voxel_mm3: float, max_mm3: float) -> np.ndarray:
  """The mask without its 6-connected components of max_mm3 or less (the evaluator's rule for
  what counts as a lesion: fewer than floor(max_mm3 / voxel volume) + 1 voxels)."""
  if max_mm3 <= 0 or not mask.any():
    return mask
  labels, n = lesion_labels(mask, voxel_mm3, max_mm3)
  return (labels > 0).astype(mask.dtype)
