"""Patch samplers for whole-volume inference, sharing one accumulator.

- `sliding_window_corners`: full coverage with overlap (nnU-Net/MONAI style), Gaussian weighting;
- `offset_window_corners`: one grid phase's share of a 50 % overlap sliding window (predict.
  phase_windows="offset"): windows a patch apart, moved half a patch along the axes of the phase;
- `random_brain_corners`: the paper's mode, N random patches in the brain, plain averaging, voxels
  that no patch covers get no lesion.

Patches go through one jitted forward of fixed batch size (the last batch is padded), so a volume
of any size compiles once and memory stays bounded by the batch.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from msjax.data import patches as patch_lib


def _starts(size: int, patch: int, step: int) -> list[int]:
  starts = list(range(0, max(size - patch, 0) + 1, step))
  if starts[-1] != size - patch:
    starts.append(size - patch)
  return starts


def sliding_window_corners(shape, patch: int, overlap: float, brain: np.ndarray | None = None,
                           central: bool = False) -> np.ndarray:
  """Patch corners tiling `shape` with the given overlap. With a brain mask, patches holding no
  brain voxel are left out: predictions are kept only in the brain, and every patch that covers
  a brain voxel is still there, so the result in the brain is the same, for about a fifth less
  work on the paper's 128³ grid (277 of 343 patches touch the brain of a Lesjak exam). central
  (with a brain mask): only the windows some brain voxel lies nearest the centre of
  (`central_corners`)."""
  step = max(1, int(round(patch * (1.0 - overlap))))
  starts = [_starts(s, patch, step) for s in shape]
  if central and brain is not None:
    return central_corners(starts, brain, patch)
  corners = np.array(list(itertools.product(*starts)), np.int32)
  return _touching(corners, brain, patch)


def central_corners(starts: list, brain: np.ndarray, patch: int) -> np.ndarray:
  """The windows (of `starts` along each axis) that are the most central window of at least one
  brain voxel (predict.windows="central"). Every brain voxel keeps the window whose Gaussian
  importance is highest at it; the windows left out only graze the brain away from their centre,
  where nnU-Net's importance is e^-2 to e^-8 of a centre's along each axis they are off."""
  nearest = [np.abs(np.arange(size)[:, None] - (np.asarray(s) + (patch - 1) / 2.0)).argmin(1)
             for s, size in zip(starts, brain.shape)]  # per axis: each voxel's nearest centre
  counts = tuple(len(s) for s in starts)
  window = np.ravel_multi_index(np.ix_(*nearest), counts)  # each voxel's most central window
  chosen = np.unravel_index(np.flatnonzero(np.bincount(window[brain > 0], minlength=np.prod(
      counts))), counts)
  return np.stack([np.asarray(s)[i] for s, i in zip(starts, chosen)], 1).astype(np.int32)


def _touching(corners: np.ndarray, brain: np.ndarray | None, patch: int) -> np.ndarray:
  """The corners whose patch holds a brain voxel (all of them without a brain mask)."""
  if brain is None:
    return corners
  return corners[patch_lib.box_fractions(brain, patch)[tuple(corners.T)] > 0]


# The importance map of offset windows: flatter than nnU-Net's (0.125), so that the 8 phases a
# voxel is seen at all count in its mean, not mostly the one whose window is centred on it. On the
# Lesjak leave-one-out (seed 0's fold networks, left-out patients; docs/results/offset_windows.md)
# the mask against itself with the grid moved 0.87 mm, patient07 / 26, all sequences: 0.724 /
# 0.922 at 0.125, 0.856 / 0.949 at 0.25, 0.916 / 0.959 at 0.5, 0.862 / 0.958 flat; mean Dice
# over the five inputs 53.5 / 56.2 / 56.3 / 55.1; a full window in every phase 0.926 / 0.965 and
# 56.5 (4.8x the patches).
OFFSET_SIGMA = 0.5


def _offset_starts(size: int, patch: int, offset: int) -> list[int]:
  starts = set(range(offset, max(size - patch, 0) + 1, patch)) | {0, max(size - patch, 0)}
  return sorted(starts)


def offset_window_corners(shape, patch: int, phase: int, brain: np.ndarray | None = None
                          ) -> np.ndarray:
  """Grid phase `phase`'s windows (predict.phase_windows="offset"): a patch apart, moved half a
  patch along each axis whose bit is set in `phase` (bit a: axis a, as nifti.half_voxel_phases
  moves the grid), the volume's first and last window added so that every voxel is covered. The
  8 phases' windows together are where a 50 % overlap sliding window puts its windows, so a voxel
  is still seen by 8 windows, each at another grid phase, for a fifth to a quarter of the patches
  of a full window in every phase (the edge windows are shared; 463 against 2223 on a Lesjak MNI
  exam, 617-626 against 2566-2586 on the raw Lesjak exams). With a brain mask, windows holding no
  brain voxel are left out."""
  offsets = [patch // 2 if phase & (1 << axis) else 0 for axis in range(len(shape))]
  corners = np.array(list(itertools.product(
      *[_offset_starts(s, patch, o) for s, o in zip(shape, offsets)])), np.int32)
  return _touching(corners, brain, patch)


def spread_flips(corners: np.ndarray) -> np.ndarray:
  """(N, 3) bool: the flip of each sliding window, by the parity of its place along each axis.
  With 50 % overlap a voxel inside the volume lies in 2 windows along each axis, one of each
  parity, so it is seen in all 8 flips once: test-time mirroring spread over the windows the
  sliding window computes anyway, at the cost of no mirroring, where nnU-Net's mirroring predicts
  every window in all 8 flips (8x the compute)."""
  corners = np.asarray(corners)
  flips = np.zeros(corners.shape, bool)
  for axis in range(corners.shape[1]):
    starts = np.unique(corners[:, axis])
    flips[:, axis] = np.searchsorted(starts, corners[:, axis]) % 2 == 1
  return flips


def random_brain_corners(brain: np.ndarray, patch: int, n: int, seed: int,
                         min_brain_fraction: float = 0.75) -> np.ndarray:
  ok = patch_lib.box_fractions(brain, patch) >= min_brain_fraction - 1e-9
  corners = np.argwhere(ok)
  if len(corners) == 0:  # tiny or unusual brains: any patch touching the brain
    corners = np.argwhere(patch_lib.box_fractions(brain, patch) > 0)
  rng = np.random.default_rng(seed)
  return corners[rng.integers(len(corners), size=n)].astype(np.int32)


NNUNET_SIGMA = 0.125  # the importance map's width, in patches: nnU-Net's


def gaussian_weight(patch: int, sigma_scale: float = NNUNET_SIGMA) -> np.ndarray:
  """nnU-Net's importance map: centre voxels count more than border voxels; never zero."""
  c = (patch - 1) / 2.0
  axis = np.exp(-0.5 * ((np.arange(patch) - c) / (patch * sigma_scale)) ** 2)
  w = axis[:, None, None] * axis[None, :, None] * axis[None, None, :]
  w = w / w.max()
  return np.maximum(w, w[w > 0].min()).astype(np.float32)


@dataclasses.dataclass
class Prediction:
  probability: np.ndarray  # weighted mean probability per voxel (0 where uncovered)
  spread: np.ndarray       # weighted standard deviation of the overlapping predictions
  coverage: np.ndarray     # number of patches covering each voxel
  weight: np.ndarray | None = None  # the summed importance of the windows at each voxel


def _flipped(patch: np.ndarray, axes: np.ndarray) -> np.ndarray:
  return np.flip(patch, tuple(int(a) for a in np.flatnonzero(axes))) if axes.any() else patch


def predict_volume(predict_batch, images: np.ndarray, corners: np.ndarray, patch: int,
                   batch_size: int, weighting: str = "gaussian",
                   flips: np.ndarray | None = None, sigma_scale: float = NNUNET_SIGMA
                   ) -> Prediction:
  """predict_batch: (B, P, P, P, C) float32 -> (B, P, P, P) probabilities (jitted, fixed B).
  flips: (N, 3) bool, the axes each window is mirrored along before the network (its
  prediction mirrored back): spread_flips. sigma_scale: the Gaussian importance map's width."""
  shape = images.shape[:3]
  w = (gaussian_weight(patch, sigma_scale) if weighting == "gaussian"
       else np.ones((patch,) * 3, np.float32))
  total = np.zeros(shape, np.float64)
  total_sq = np.zeros(shape, np.float64)
  weight = np.zeros(shape, np.float64)
  count = np.zeros(shape, np.int32)
  for start in range(0, len(corners), batch_size):
    chunk = corners[start:start + batch_size]
    axes = (flips[start:start + batch_size] if flips is not None
            else np.zeros((len(chunk), 3), bool))
    batch = np.stack([_flipped(patch_lib.cut(images, c, patch), f) for c, f in zip(chunk, axes)])
    if len(chunk) < batch_size:  # pad to the compiled batch size
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(chunk), 0)])
    probs = np.asarray(predict_batch(batch))[:len(chunk)]
    probs = [_flipped(p, f) for p, f in zip(probs, axes)]
    for c, p in zip(chunk, probs):
      sl = tuple(slice(int(v), int(v) + patch) for v in c)
      total[sl] += w * p
      total_sq[sl] += w * p * p
      weight[sl] += w
      count[sl] += 1
  covered = weight > 0
  mean = np.where(covered, total / np.where(covered, weight, 1), 0.0)
  var = np.where(covered, total_sq / np.where(covered, weight, 1) - mean ** 2, 0.0)
  return Prediction(probability=mean.astype(np.float32),
                    spread=np.sqrt(np.maximum(var, 0)).astype(np.float32), coverage=count,
                    weight=weight.astype(np.float32))
