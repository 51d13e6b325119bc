"""Pure-numpy patch sampling: where a patch may be cut (the brain-fraction rule), cutting it, and the
self-supervised position target."""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from msjax.data import lesions as lesions_lib
from msjax.data.exams import ExamArrays


def box_fractions(mask: np.ndarray, patch: int) -> np.ndarray:
  """Fraction of mask voxels in every patch³ box, indexed by the box's lowest corner.

  A summed-volume table makes this O(voxels) whatever the patch size.
  """
  m = (mask > 0).astype(np.int32)
  s = np.zeros(tuple(d + 1 for d in m.shape), np.int64)
  s[1:, 1:, 1:] = m.cumsum(0).cumsum(1).cumsum(2)
  p = patch
  total = (s[p:, p:, p:] - s[:-p, p:, p:] - s[p:, :-p, p:] - s[p:, p:, :-p]
           + s[:-p, :-p, p:] + s[:-p, p:, :-p] + s[p:, :-p, :-p] - s[:-p, :-p, :-p])
  return total / float(p ** 3)


@dataclasses.dataclass(frozen=True)
class SamplingIndex:
  """Patch corners that satisfy the brain rule, and the subset centred on a lesion voxel."""
  corners: np.ndarray         # (N, 3) int32
  lesion_corners: np.ndarray  # (M, 3) int32, M may be 0
  ok: np.ndarray              # bool grid of corners: does the patch there satisfy the rule
  # (M,) probabilities over lesion_corners giving every lesion (6-connected component, as the
  # lesion-wise scores count them) the same share, its corners equal shares of it
  lesion_weights: np.ndarray | None = None


def sampling_index(arrays: ExamArrays, patch: int, min_brain_fraction: float) -> SamplingIndex:
  frac = box_fractions(arrays.brain, patch)
  ok = frac >= min_brain_fraction - 1e-9
  corners = np.argwhere(ok).astype(np.int32)
  if len(corners) == 0:
    raise ValueError(f"exam {arrays.exam.exam_id}: no {patch}³ patch holds ≥ "
                     f"{min_brain_fraction:.0%} brain voxels (brain of {int(arrays.brain.sum())} "
                     f"voxels in a {arrays.shape} volume)")
  lesion_corners = np.zeros((0, 3), np.int32)
  if arrays.masks:
    lesion = np.zeros(arrays.shape, bool)
    for m in arrays.masks:
      lesion |= m > 0
    c = patch // 2
    centred = lesion[c:c + ok.shape[0], c:c + ok.shape[1], c:c + ok.shape[2]]
    lesion_corners = np.argwhere(ok & centred).astype(np.int32)
    labels, _ = ndimage.label(lesion, structure=lesions_lib.SIX_CONNECTED)
    ids = labels[tuple((lesion_corners + c).T)]
    return SamplingIndex(corners=corners, lesion_corners=lesion_corners, ok=ok,
                         lesion_weights=per_lesion_weights(ids))
  return SamplingIndex(corners=corners, lesion_corners=lesion_corners, ok=ok)


def per_lesion_weights(ids: np.ndarray) -> np.ndarray:
  """Probabilities over items labelled by lesion `ids` that give each lesion the same total,
  shared equally by its items (empty in, empty out)."""
  if len(ids) == 0:
    return np.zeros(0, np.float64)
  _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
  w = 1.0 / (len(counts) * counts[inverse].astype(np.float64))
  return w / w.sum()


def cut(volume: np.ndarray, corner, patch: int) -> np.ndarray:
  x, y, z = (int(v) for v in corner)
  return volume[x:x + patch, y:y + patch, z:z + patch]


def position_target(corner, patch: int, shape) -> np.ndarray:
  """The patch centre in normalised volume coordinates: (corner + patch/2) / shape, in [0, 1]."""
  return ((np.asarray(corner, np.float64) + patch / 2.0) / np.asarray(shape, np.float64)
          ).astype(np.float32)


def draw_corner(rng: np.random.Generator, index: SamplingIndex, lesion_centred: bool,
                extra_centres: np.ndarray | None = None, patch: int = 0,
                extra_weights: np.ndarray | None = None, by_lesion: bool = False) -> np.ndarray:
  """A corner satisfying the brain rule. Lesion-centred: centred on a lesion voxel of the exam,
  or, half the time when `extra_centres` (pasted lesions' voxels) are given, on one of those.
  Each voxel is as likely as any other (nnU-Net's foreground sampling: a large lesion gets most
  patches), or, `by_lesion`, each lesion as likely as any other, then one of its voxels (through
  index.lesion_weights and `extra_weights`, the pasted voxels' per_lesion_weights)."""
  if lesion_centred and extra_centres is not None and len(extra_centres) and (
      not len(index.lesion_corners) or rng.random() < 0.5):
    if by_lesion and extra_weights is not None:
      pick = rng.choice(len(extra_centres), p=extra_weights)
    else:
      pick = rng.integers(len(extra_centres))
    corner = extra_centres[pick] - patch // 2
    if (corner >= 0).all() and (corner < np.array(index.ok.shape)).all() and index.ok[
        tuple(corner)]:
      return corner.astype(np.int32)
  if lesion_centred and len(index.lesion_corners):
    if by_lesion and index.lesion_weights is not None:
      return index.lesion_corners[rng.choice(len(index.lesion_corners), p=index.lesion_weights)]
    return index.lesion_corners[rng.integers(len(index.lesion_corners))]
  return index.corners[rng.integers(len(index.corners))]
