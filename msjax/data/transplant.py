"""Lesion transplant: the real lesion maps of other patients placed into a training brain.

A labelled cohort of two patients carries 1.3 and 8.2 mL of lesions; the patients a model meets
carry up to 50 mL, in confluent periventricular caps. Lesion masks of many more patients are
public without their images (`../shared/data/lesjak_lesion_maps/`: 27 patients on the training
exams' MNI grid). This module makes training exams out of them, in the way of CarveMix (Zhang et
al., MICCAI 2021: a real lesion's shape carried into another brain, the label the union) and
LesionMix (Basaran et al., MICCAI 2023: lesion shapes from other subjects placed where lesions
occur, with intensities modelled in the target), with the intensity model of SynthSeg's
lesion-aware variant (Billot et al. 2023: a label's intensities drawn from a distribution
per sequence, with texture) fitted on real lesions instead of drawn at random:

- a **donor** is one lesion map brought onto the target's model grid through world coordinates
  (linear interpolation of the binary map: its fractional values are the partial volume of the
  edge voxels), split into its 6-connected lesions;
- the **look** of lesions in the target brain, per sequence: the mean of each real lesion, the
  spread of those means between lesions, and the texture within a lesion, measured on the
  target's own labelled lesions; a brain with too few of them borrows the contrast to its
  normal-appearing white matter measured on the cohort's labelled lesions;
- a **transplant** takes a whole donor (so heavy loads are as common in training as they are in
  the maps), mirrors it left-right half the time and shifts it by a few voxels; every lesion
  keeps only its voxels inside the brain (eroded) and off CSF, and is dropped when it lands
  mostly outside white matter; each kept lesion gets its own mean (shared across sequences: a
  faint lesion is faint on every sequence), a smooth texture, and its soft edge blended with the
  target's tissue; per transplant, each sequence's contrast to white matter is scaled by a random
  factor (`Spec.contrast`), since lesion contrast differs between patients and scanners (the
  domain randomisation of SynthSeg, narrowed to the measured look).

Pastes are `lesion_load.Paste`s, rendered into patches by `lesion_load.render` (image ←
(1 − soft)·image + soft·lesion, mask ∪ hard). A plan is a pure function of its generator.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import threading

import numpy as np
from scipy import ndimage

from msjax.data import lesion_load, nifti
from msjax.errors import InvalidInputError

T1W, FLAIR = lesion_load.T1W, lesion_load.FLAIR
SIX = lesion_load.SIX
# tissue gates, in brain z-scores: CSF is the darkest tissue on FLAIR (the Lesjak ventricles sit
# at z -1.5 to -2.5, white matter at 0 to 0.5); white matter the brightest on T1 (the tissue next
# to the Lesjak lesions has T1W z 0.75 at the median, grey matter under 0.3: lesion_load's gate)
CSF_FLAIR_Z = -1.0
WHITE_MATTER_T1W_Z = lesion_load.WHITE_MATTER_T1W_Z
MIN_LESIONS_FOR_OWN_LOOK = 3   # a brain with fewer real lesions borrows the cohort's contrast
MIN_CORE_VOXELS = 4           # a real lesion's look is measured on its core, when it has one
MIN_VOXELS = 2                 # donor lesions smaller than this on the model grid are dropped


@dataclasses.dataclass(frozen=True)
class Spec:
  probability: float = 0.0   # share of training groups whose exam gets a donor's lesions
  maps: str = ""             # folder of lesion-mask NIfTIs on the cohort's MNI space
  # a text file of a 4x4 matrix taking the cohort's world points (RAS mm) to the maps' ('': the
  # same space): maps in the space the labelled exams came in, the cohort registered again
  maps_registration: str = ""
  jitter: int = 3            # whole-donor shift, voxels per axis, uniform in ±jitter
  min_kept: float = 0.5      # a lesion is dropped when less of it lands on brain off CSF
  min_white_matter: float = 0.5  # ... or when less of what is kept lies in white matter
  # per transplant and sequence, the look's contrast to white matter scaled by a factor uniform
  # in this range: one training brain's look is one patient's (the two Lesjak patients' FLAIR
  # contrasts differ by a factor 0.71, their T2W by 1.15); (1, 1) draws nothing
  contrast: tuple[float, float] = (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Look:
  """How lesions look in one brain, per channel (brain z-scores): the mean over lesions of their
  mean, the spread of lesion means between lesions, the texture (std within a lesion) and the
  normal-appearing white matter's median."""
  mean: np.ndarray
  between: np.ndarray
  within: np.ndarray
  white_matter: np.ndarray
  lesions: int               # real lesions it was measured on (0: borrowed)

  @property
  def contrast(self) -> np.ndarray:
    return self.mean - self.white_matter


def white_matter(images: np.ndarray, brain: np.ndarray, lesions: np.ndarray | None,
                 present: np.ndarray) -> np.ndarray:
  """Normal-appearing white matter: brain (eroded 2 voxels), bright on T1 when the exam has T1,
  off CSF on FLAIR, no lesion within 2 voxels."""
  wm = ndimage.binary_erosion(brain > 0, SIX, iterations=2)
  if present[T1W]:
    wm &= images[..., T1W] >= WHITE_MATTER_T1W_Z
  if present[FLAIR]:
    wm &= images[..., FLAIR] > CSF_FLAIR_Z
  if lesions is not None and lesions.any():
    wm &= ~ndimage.binary_dilation(lesions > 0, SIX, iterations=2)
  return wm


def measure_look(images: np.ndarray, brain: np.ndarray, lesions: np.ndarray | None,
                 present: np.ndarray) -> Look:
  """The look of the real lesions of one exam (lesions: its label; None or empty: none)."""
  c = images.shape[-1]
  wm = white_matter(images, brain, lesions, present)
  wm_median = (np.median(images[wm], axis=0) if wm.any() else np.zeros(c)).astype(np.float32)
  means, residuals = _lesion_stats(images, lesions, core_only=True)
  if len(means) < MIN_LESIONS_FOR_OWN_LOOK:  # small lesions only (a light load): all of them
    means, residuals = _lesion_stats(images, lesions, core_only=False)
  if len(means) < MIN_LESIONS_FOR_OWN_LOOK:
    return Look(mean=wm_median, between=np.zeros(c, np.float32), within=np.zeros(c, np.float32),
                white_matter=wm_median, lesions=0)
  means = np.array(means, np.float32)
  return Look(mean=means.mean(axis=0), between=means.std(axis=0).astype(np.float32),
              within=np.concatenate(residuals).std(axis=0).astype(np.float32),
              white_matter=wm_median, lesions=len(means))


def _lesion_stats(images, lesions, core_only: bool):
  """Per 6-connected lesion its mean, and its voxels' residuals to that mean: over its core
  (the lesion eroded by one voxel, when that holds MIN_CORE_VOXELS: the edge voxels of a lesion
  are part tissue on the model grid, and a transplant's soft edge adds that back), or over all
  its voxels."""
  means, residuals = [], []
  if lesions is None or not lesions.any():
    return means, residuals
  labels, n = ndimage.label(lesions > 0, structure=SIX)
  core = ndimage.binary_erosion(lesions > 0, SIX) if core_only else lesions > 0
  for k in range(1, n + 1):
    inner = (labels == k) & core
    if inner.sum() < (MIN_CORE_VOXELS if core_only else MIN_VOXELS):
      continue
    v = images[inner]
    means.append(v.mean(axis=0))
    residuals.append(v - v.mean(axis=0))
  return means, residuals


def borrowed(look: Look, cohort: list[Look]) -> Look:
  """A brain without enough real lesions: its white matter shifted by the contrast, spread and
  texture measured on the cohort's brains that have them (their mean)."""
  own = [l for l in cohort if l.lesions >= MIN_LESIONS_FOR_OWN_LOOK]
  if look.lesions >= MIN_LESIONS_FOR_OWN_LOOK or not own:
    return look
  contrast = np.mean([l.contrast for l in own], axis=0)
  return Look(mean=(look.white_matter + contrast).astype(np.float32),
              between=np.mean([l.between for l in own], axis=0).astype(np.float32),
              within=np.mean([l.within for l in own], axis=0).astype(np.float32),
              white_matter=look.white_matter, lesions=0)


# ---------------------------------------------------------------------------------- donors


def map_files(folder: str) -> list[str]:
  """The lesion maps of a folder (*.nii, *.nii.gz), sorted: the donor order is fixed."""
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise InvalidInputError(f"{folder}: the lesion-map folder for lesion transplant does not "
                            "exist (--config.data.lesion_maps)")
  paths = sorted(glob.glob(os.path.join(folder, "*.nii")) +
                 glob.glob(os.path.join(folder, "*.nii.gz")))
  if not paths:
    raise InvalidInputError(f"{folder}: no lesion map (*.nii, *.nii.gz) for lesion transplant")
  return paths


def onto_grid(volume: nifti.Volume, grid: nifti.Grid, world: np.ndarray | None = None
              ) -> np.ndarray:
  """A mask brought onto `grid` through world coordinates, linearly: values in [0, 1], the
  partial volume of each target voxel (outside the source: 0). `world`: a 4x4 matrix taking
  the grid's world points to the mask's (None: the same world)."""
  data = (volume.data > 0).astype(np.float32)
  if world is None:
    if volume.grid.shape == tuple(grid.shape):
      if np.allclose(volume.grid.affine, grid.affine, atol=1e-3):
        return data
    src = nifti.resampled_grid(volume.grid, grid.shape)
    if np.allclose(src.affine, grid.affine, atol=1e-3):  # same box, other voxel size: separable
      # a mask shrinks to ~1/3 of its voxels here; averaging the source voxels each target voxel
      # covers (not sampling its centre) gives each voxel its partial volume
      factor = np.array(volume.grid.shape) / np.array(grid.shape)
      return np.clip(nifti.resample_box(_anti_alias(data, factor), grid.shape), 0, 1)
  m = np.linalg.inv(volume.grid.affine) @ (np.eye(4) if world is None else world) @ grid.affine
  factor = np.sqrt((m[:3, :3] ** 2).sum(axis=0))  # source voxels per target voxel, per axis
  return np.clip(ndimage.affine_transform(_anti_alias(data, factor), m[:3, :3], m[:3, 3],
                                          output_shape=grid.shape, order=1, mode="constant",
                                          cval=0.0), 0, 1)


def _anti_alias(data: np.ndarray, factor: np.ndarray) -> np.ndarray:
  """The mask blurred over the source voxels one target voxel covers (a Gaussian whose FWHM
  makes up the difference between the voxel sizes; centred, so nothing moves), so that sampling
  gives each target voxel its partial volume instead of its centre's value."""
  sigma = np.sqrt(np.maximum(np.asarray(factor, float) ** 2 - 1.0, 0.0)) / 2.355
  return ndimage.gaussian_filter(data, sigma) if (sigma > 0.05).any() else data


def read_registration(path: str) -> np.ndarray | None:
  """The 4x4 matrix of Spec.maps_registration ('' -> None), checked."""
  if not path:
    return None
  try:
    m = np.loadtxt(path, dtype=np.float64)
  except (OSError, ValueError) as e:
    raise InvalidInputError(f"{path}: not a readable 4x4 matrix for the lesion maps "
                            f"(data.lesion_maps_registration): {e}") from e
  if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]) or abs(np.linalg.det(m)) < 1e-6:
    raise InvalidInputError(f"{path}: the lesion maps' registration must be an invertible 4x4 "
                            f"affine matrix with last row 0 0 0 1, found shape {m.shape}")
  return m


@dataclasses.dataclass(frozen=True)
class DonorLesion:
  lo: np.ndarray        # (3,) box corner on the model grid
  partial: np.ndarray   # (x, y, z) float32 partial volume in [0, 1]
  hard: np.ndarray      # (x, y, z) bool, partial >= 0.5


@dataclasses.dataclass(frozen=True)
class Donor:
  name: str
  lesions: tuple[DonorLesion, ...]
  voxel_ml: float

  @property
  def ml(self) -> float:
    return sum(int(l.hard.sum()) for l in self.lesions) * self.voxel_ml


def make_donor(name: str, partial: np.ndarray, voxel_ml: float) -> Donor:
  hard = partial >= 0.5
  labels, _ = ndimage.label(hard, structure=SIX)
  grown_labels = ndimage.grey_dilation(labels, footprint=SIX)  # the partial rim goes with its lesion
  lesions = []
  shape = np.array(partial.shape)
  for k, sl in enumerate(ndimage.find_objects(labels), start=1):
    if sl is None:
      continue
    lo = np.array([max(s.start - 1, 0) for s in sl])
    hi = np.minimum(np.array([s.stop + 1 for s in sl]), shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    h = labels[box] == k
    if h.sum() < MIN_VOXELS:
      continue
    p = np.where((grown_labels[box] == k) | h, partial[box], 0.0).astype(np.float32)
    lesions.append(DonorLesion(lo=lo, partial=np.maximum(p, h), hard=h))
  return Donor(name=name, lesions=tuple(lesions), voxel_ml=voxel_ml)


class DonorBank:
  """The donors of a lesion-map folder, brought onto each model grid once (thread-safe)."""

  def __init__(self, folder: str, registration: str = ""):
    self.paths = map_files(folder)
    self.world = read_registration(registration)
    self._lock = threading.Lock()
    self._by_grid: dict = {}

  def donors(self, grid: nifti.Grid) -> list[Donor]:
    """The donors on `grid`: each map read and brought there once per grid (the full-size maps
    are not kept: 27 of them are ~200 MB, their lesions on the model grid a few)."""
    key = (tuple(grid.shape), np.round(grid.affine, 3).tobytes())
    with self._lock:
      if key not in self._by_grid:
        self._by_grid[key] = [
            make_donor(os.path.basename(p).split(".nii")[0],
                       onto_grid(nifti.read_nifti(p, kind="mask"), grid, self.world),
                       grid.voxel_ml)
            for p in self.paths]
      return self._by_grid[key]


# ---------------------------------------------------------------------------------- planning


def texture(rng: np.random.Generator, shape) -> np.ndarray:
  """Smooth noise of unit standard deviation (correlated over ~1 voxel, as lesion texture)."""
  noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0)
  std = float(noise.std())
  return noise / std if std > 0 else noise


def where_lesions_go(images: np.ndarray, brain: np.ndarray, lesions: np.ndarray | None,
                     present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(allowed, white-matter-like) of one exam: where a transplanted lesion may keep voxels (the
  brain eroded by one voxel, off CSF) and where it counts as in white matter (bright on T1, or
  where this brain has a lesion). The same for every plan of an exam: samplers keep them."""
  allowed = ndimage.binary_erosion(brain > 0, SIX)  # no lesion on the brain's surface
  if present[FLAIR]:
    allowed &= images[..., FLAIR] > CSF_FLAIR_Z
  wm_like = (images[..., T1W] >= WHITE_MATTER_T1W_Z) if present[T1W] else np.ones_like(allowed)
  if lesions is not None:
    wm_like = wm_like | (lesions > 0)  # where this brain has a lesion, one may lie
  return allowed, wm_like


def plan(rng: np.random.Generator, donors: list[Donor], look: Look, images: np.ndarray,
         brain: np.ndarray, lesions: np.ndarray | None, present: np.ndarray,
         spec: Spec, gates: tuple[np.ndarray, np.ndarray] | None = None) -> lesion_load.Plan:
  """One donor's lesions placed into one exam, as pastes (or EMPTY when none lands); `gates`:
  the exam's where_lesions_go, computed here when not given."""
  if not donors or rng.random() >= spec.probability:
    return lesion_load.EMPTY
  donor = donors[int(rng.integers(len(donors)))]
  mirror = bool(rng.random() < 0.5)
  shift = rng.integers(-spec.jitter, spec.jitter + 1, 3)
  shape = np.array(brain.shape)
  allowed, wm_like = gates or where_lesions_go(images, brain, lesions, present)
  lo_c, hi_c = spec.contrast
  scale = (rng.uniform(lo_c, hi_c, len(present)).astype(np.float32) if (lo_c, hi_c) != (1.0, 1.0)
           else np.ones(len(present), np.float32))
  pastes, centres = [], []
  channel_sign = np.sign(look.contrast) + (look.contrast == 0)
  for lesion in donor.lesions:
    partial, hard = lesion.partial, lesion.hard
    lo = lesion.lo.copy()
    if mirror:
      partial, hard = partial[::-1], hard[::-1]
      lo[0] = shape[0] - lesion.lo[0] - partial.shape[0]
    lo = lo + shift
    hi = lo + np.array(hard.shape)
    if (lo < 0).any() or (hi > shape).any():
      continue
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ok = allowed[box]
    kept = hard & ok
    if kept.sum() < max(MIN_VOXELS, spec.min_kept * hard.sum()):
      continue
    if wm_like[box][kept].mean() < spec.min_white_matter:
      continue
    soft = np.where(ok, partial, 0.0).astype(np.float32)
    # the lesion's own mean (one draw for every sequence) and its texture
    u = float(np.clip(rng.standard_normal(), -2.0, 2.0))
    t = texture(rng, hard.shape)[..., None]
    values = look.mean + u * look.between + t * look.within * channel_sign
    values = look.white_matter + scale * (values - look.white_matter)  # this patient's contrast
    values = np.where(present, values, 0.0).astype(np.float32)
    pastes.append(lesion_load.Paste(lo=lo, soft=soft, hard=np.ascontiguousarray(kept),
                                    images=np.ascontiguousarray(values, dtype=np.float32)))
    centres.append(np.argwhere(kept) + lo)
  if not pastes:
    return lesion_load.EMPTY
  return lesion_load.Plan(pastes=tuple(pastes), centres=np.concatenate(centres))


def apply(images: np.ndarray, mask: np.ndarray, plan_: lesion_load.Plan, present=None):
  """The whole exam with the plan's lesions in (for checks and figures; training renders only
  the patches it needs)."""
  shape = images.shape[:3]
  size = max(shape)
  image, label = lesion_load.render(images, mask, (0, 0, 0), size, plan_.pastes, present)
  return image[:shape[0], :shape[1], :shape[2]], label[:shape[0], :shape[1], :shape[2]]
