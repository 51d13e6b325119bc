"""An exam as model input: its files read and validated, reoriented to RAS, resampled onto the
model grid and z-scored in the brain; a bounded cache of loaded exams for the samplers."""
from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np

from msjax.data import nifti
from msjax.data.manifest import MODALITIES, Exam
from msjax.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class ExamArrays:
  """One exam ready for sampling: canonical RAS arrays on the model grid."""
  exam: Exam
  images: np.ndarray          # (X, Y, Z, 5) float32, z-scored in the brain, 0 outside / missing
  present: np.ndarray         # (5,) bool: which modalities the exam has
  brain: np.ndarray           # (X, Y, Z) uint8
  masks: tuple[np.ndarray, ...]  # training targets (raters, else consensus), uint8
  reference: np.ndarray | None   # evaluation reference, uint8
  grid: nifti.Grid            # model grid (canonical orientation)
  native_grid: nifti.Grid     # the exam's own grid, for writing predictions back

  @property
  def shape(self):
    return self.images.shape[:3]


def read_exam_files(exam: Exam, allow_any_geometry: bool = False, one_grid: bool = True
                    ) -> tuple[dict[str, nifti.Volume], list[str]]:
  """Reads every file of an exam; returns the volumes and a list of problems (never raises).
  A grid that cannot be a brain exam is a problem unless allow_any_geometry; files on different
  grids are one unless one_grid is False (raw exams, before co-registration)."""
  volumes, problems = {}, []
  for role, kind, path in exam.all_paths():
    try:
      volumes[role] = nifti.read_nifti(path, kind=kind)
    except InvalidInputError as e:
      problems.append(str(e))
      continue
    why = None if allow_any_geometry else nifti.geometry_problem(volumes[role].grid)
    if why:
      problems.append(f"{nifti.split_label(path)[0]}: {why}; "
                      "--config.data.allow_any_geometry=True to use it anyway")
  ref_role = next((m for m in ("FLAIR",) + MODALITIES if m in volumes), None)
  if ref_role is not None and one_grid:
    ref = volumes[ref_role]
    for role, v in volumes.items():
      if role != ref_role and not v.grid.same_as(ref.grid):
        problems.append(
            f"{v.path}: {role} is not on the grid of {ref_role} ({ref.path}): shape "
            f"{v.grid.shape} vs {ref.grid.shape}, affines differ by "
            f"{np.abs(v.grid.affine - ref.grid.affine).max():.3g} mm; co-register and resample "
            "them first (configs/preprocess.py)")
  return volumes, problems


# hot voxels: above the 99.9th percentile by this many times its distance from the median. The
# real Lesjak scans have none (their maxima 1.2-2.2x the 99.9th percentile, FLAIR lesions far
# below the ceiling) but 13-20 voxels of lesjak_mni's skull-stripped T1W; 30 voxels at 100x a raw
# FLAIR's maximum took the brain's standard deviation, and with it 0.6 of the exam's 3.3 mL of
# lesion and QC's structure measure (runs/bad6_out, spikes)
SPIKE_FENCE = 3.0


def spike_ceiling(values: np.ndarray) -> float:
  """The intensity above which a voxel of these (brain or foreground) values is a spike (from a
  regular subsample of about 100k of them: a fence three spreads out needs no exact percentile,
  and the loader asks this of every sequence at every grid phase)."""
  values = np.ravel(values)
  values = values[::max(1, len(values) // 100_000)]
  p50, p999 = np.percentile(values, [50, 99.9])
  return float(p999 + SPIKE_FENCE * (p999 - p50))


_NEIGHBOURS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                        if (i, j, k) != (0, 0, 0)])


def may_hold_spikes(values: np.ndarray, mean: float, std: float) -> bool:
  """A cheap first look: can any of these values be above spike_ceiling? Not unless one lies 4
  SD above their mean (the fence sits 5.5-30 SD above it on every real Lesjak scan)."""
  return bool(values.size) and float(values.max()) > mean + 4 * std


def despike(image: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, int]:
  """(the image with each hot voxel, above spike_ceiling of its values `inside`, replaced by the
  median of its 26 neighbours that are not hot (the ceiling where all are), how many there were).
  A spike set to the ceiling would still be the brightest dot of the exam, lesion-like."""
  values = image[inside]
  if not values.size or not may_hold_spikes(values, float(values.mean()), float(values.std())):
    return image, 0
  ceiling = spike_ceiling(values)
  hot = image > ceiling
  n = int(hot.sum())
  if not n:
    return image, 0
  idx = np.argwhere(hot)
  around = np.clip(idx[:, None, :] + _NEIGHBOURS[None], 0, np.array(image.shape) - 1)
  near = image[around[..., 0], around[..., 1], around[..., 2]].astype(np.float64)
  near[near > ceiling] = np.nan  # a hot neighbour is no evidence
  with np.errstate(all="ignore"):
    counts = np.isfinite(near).sum(1)
    fill = np.where(counts > 0, np.nanmedian(np.where(counts[:, None] > 0, near, 0.0), 1),
                    ceiling)
  out = np.array(image, copy=True)
  out[tuple(idx.T)] = fill.astype(out.dtype)
  return out, n


def _zscore_in_brain(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
  values = image[brain > 0]
  mean, std = float(values.mean()), float(values.std())
  if may_hold_spikes(values, mean, std):
    # mean and spread of the brain, not of a few hot voxels (and no hot dot for the network)
    image, n = despike(image, brain > 0)
    if n:
      values = image[brain > 0]
      mean, std = float(values.mean()), float(values.std())
  out = (image - mean) / max(std, 1e-6)
  return np.where(brain > 0, out, 0.0).astype(np.float32)


def _read_or_refuse(exam: Exam, allow_any_geometry: bool) -> dict[str, nifti.Volume]:
  """read_exam_files, raising InvalidInputError with every problem found."""
  volumes, problems = read_exam_files(exam, allow_any_geometry)
  if problems:
    raise InvalidInputError(f"exam {exam.exam_id}:\n  " + "\n  ".join(problems))
  return volumes


def load_exam(exam: Exam, *, model_shape=None, patch_size: int = 32,
              allow_any_geometry: bool = False, phase=None, volumes=None) -> ExamArrays:
  """Reads, validates, reorients, resamples onto the model grid and normalises one exam.

  phase: the model grid moved by that fraction of its voxels along each axis (test-time grid
  phases, msjax/infer/predict.py); only for an exam stored on another grid than the model's.
  volumes: the exam's files as read_exam_files read them without a problem (exam_loader: read
  once, resampled at each phase).
  Raises InvalidInputError listing every problem found in the exam's files.
  """
  if volumes is None:
    volumes = _read_or_refuse(exam, allow_any_geometry)
  native = volumes[next(m for m in ("FLAIR",) + MODALITIES if m in volumes)].grid
  shape = tuple(model_shape) if model_shape else native.shape
  if min(shape) < patch_size:
    raise InvalidInputError(f"{volumes[next(iter(exam.images))].path}: volume {shape} is smaller "
                            f"than one {patch_size}³ patch")
  moved = phase is not None and any(phase)
  if moved and shape == native.shape:
    raise ValueError(f"exam {exam.exam_id} is stored on the model grid {shape}: it has no finer "
                     "grid to sample a grid phase from")
  grid = (nifti.resampled_grid(native, shape, phase) if shape != native.shape or moved
          else native)
  if "brain_mask" in volumes:
    brain = volumes["brain_mask"].data
  else:  # skull-stripped inputs have an exactly-zero background
    brain = np.zeros(native.shape, dtype=bool)
    for m in exam.images:
      brain |= volumes[m].data != 0
    brain = brain.astype(np.uint8)
  brain = nifti.resample_mask(brain, shape, phase)
  if brain.sum() == 0:
    raise InvalidInputError(f"exam {exam.exam_id}: the brain mask is empty")
  images = np.zeros(shape + (len(MODALITIES),), np.float32)
  present = np.zeros(len(MODALITIES), bool)
  for c, m in enumerate(MODALITIES):
    if m in volumes:
      images[..., c] = _zscore_in_brain(nifti.resample_box(volumes[m].data, shape, offset=phase),
                                        brain)
      present[c] = True
  masks = tuple(nifti.resample_mask(volumes[r].data, shape, phase) for r in
                [f"rater{i + 1}" for i in range(len(exam.raters))] or
                (["consensus"] if exam.consensus else []))
  reference = None
  if exam.consensus:
    reference = nifti.resample_mask(volumes["consensus"].data, shape, phase)
  elif len(exam.raters) == 1:
    reference = masks[0]
  return ExamArrays(exam=exam, images=images, present=present, brain=brain, masks=masks,
                    reference=reference, grid=grid, native_grid=native)


def exam_loader(exam: Exam, **load_kwargs):
  """load(phase=None) -> load_exam(exam, phase=phase, **load_kwargs), the exam's files read once
  (on the first call) for every phase."""
  read = []

  def load(phase=None) -> ExamArrays:
    if not read:
      read.append(_read_or_refuse(exam, load_kwargs.get("allow_any_geometry", False)))
    return load_exam(exam, phase=phase, volumes=read[0], **load_kwargs)
  return load


class ExamCache:
  """A bounded LRU of loaded exams, shared by sampler threads: the cohort never sits in memory
  whole, and an exam is read from disk once while it stays in use."""

  def __init__(self, maxsize: int = 4, **load_kwargs):
    self.maxsize = max(1, int(maxsize))
    self.load_kwargs = load_kwargs
    self._items: collections.OrderedDict[str, object] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.loads = 0

  def get(self, exam: Exam, derive=None, phase=None):
    """The exam loaded (and `derive`d), on the model grid moved by `phase` (load_exam) when
    given: each phase is an item of its own."""
    moved = phase is not None and any(phase)
    key = (exam.exam_id, tuple(phase)) if moved else exam.exam_id
    with self._lock:
      if key in self._items:
        self._items.move_to_end(key)
        return self._items[key]
      arrays = load_exam(exam, phase=phase if moved else None, **self.load_kwargs)
      item = derive(arrays) if derive else arrays
      self.loads += 1
      self._items[key] = item
      while len(self._items) > self.maxsize:
        self._items.popitem(last=False)
      return item
