"""grain datasets of training batches over a cohort.

One record is one patch. Record i belongs to batch b = i // (G·P), group g (one exam) and slot
i % P, where P = patches per exam (12 in the paper) and G = exams per batch (1 in the paper; one
per device when training data-parallel). What is shared by a group (the exam, the rater, the
zeroed modalities) is drawn from a generator seeded by (seed, b, g); what differs per patch (its
position) comes from grain's per-record seed, and the robust-training draws (sequence dropout,
msjax/data/acquisition.py) from a generator seeded by (seed, b, g, slot). So batch b is a pure
function of (seed, b): the same seed gives the same batches, and a restored iterator continues
exactly.
"""
from __future__ import annotations

import collections
import dataclasses
import threading

import grain
import numpy as np

from msjax.data import acquisition
from msjax.data import lesions as lesions_lib
from msjax.data import lesion_load
from msjax.data import nifti
from msjax.data import patches as patch_lib
from msjax.data import transplant as transplant_lib
from msjax.data.exams import ExamArrays, ExamCache
from msjax.data.manifest import MODALITIES, Exam


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  task: str                        # "segmentation" or "position"
  patch_size: int = 32
  patches_per_exam: int = 12
  exams_per_batch: int = 1
  min_brain_fraction: float = 0.75
  lesion_fraction: float = 0.0     # share of each group's patches centred on a lesion voxel
  lesion_centring: str = "voxel"   # which lesion voxel: any alike ("voxel", nnU-Net), or a lesion
                                   # first, each alike, then one of its voxels ("lesion")
  modality_dropout: float = 0.0    # probability of zeroing each present modality (≥ 1 kept)
  sequence_dropout: float = 0.0    # per patch: probability of dropping non-FLAIR sequences
                                   # (drop_sequences; FLAIR is never dropped)
  ms_fraction: float = 0.5         # position task: share of groups drawn from MS exams
  group_by: str = "patient"        # a group's patches come from one exam of a drawn "patient"
                                   # (the paper: longitudinal patients are not oversampled) or
                                   # from a drawn "exam"
  augment: bool = False            # segmentation: scaling, mirroring, intensity jitter
  intensity: bool = False          # segmentation: nnU-Net's gamma, contrast and brightness
  lesion_load: lesion_load.LoadSpec = lesion_load.LoadSpec()  # segmentation: pasted lesions
  transplant: transplant_lib.Spec = transplant_lib.Spec()  # segmentation: other patients' lesions
  blob_labels: bool = False        # segmentation: each patch's lesions numbered ("blobs", for
                                   # blob loss: lesions.blob_labels)
  renormalise: bool = False        # an exam given pasted lesions z-scored again with them in
                                   # (lesion_load.renormalised)
  acquisition: acquisition.Spec = acquisition.Spec()  # segmentation: thick slices, bias, noise
  grid_phases: int = 1             # segmentation: 8, each group's exam sampled onto the model
                                   # grid at one of its 8 half-voxel phases (from the exam's own
                                   # finer grid), drawn per group; 1, the grid as it is
  seed: int = 0
  group_offset: int = 0            # multi-process: index of this process's first group

  @property
  def batch_size(self) -> int:
    return self.patches_per_exam * self.exams_per_batch


@dataclasses.dataclass(frozen=True)
class _Prepared:
  arrays: ExamArrays
  index: patch_lib.SamplingIndex
  gates: tuple | None = None  # transplant.where_lesions_go, when transplant is on
  sums: tuple | None = None   # lesion_load.brain_sums, when renormalise is on


class PatchSource:
  """Turns record indices into patches. Thread-safe: the only shared state is the exam cache."""

  def __init__(self, exams: list[Exam], spec: SamplerSpec, cache: ExamCache):
    if not exams:
      raise ValueError(f"no exam to sample {spec.task} batches from")
    if spec.task == "segmentation":
      unlabelled = [e.exam_id for e in exams if not e.training_masks]
      if unlabelled:
        raise ValueError(f"segmentation needs lesion masks; unlabelled exams: {unlabelled}")
    elif spec.task != "position":
      raise ValueError(f"unknown task {spec.task!r}")
    if spec.lesion_centring not in ("voxel", "lesion"):
      raise ValueError(f"lesion_centring must be 'voxel' or 'lesion', got "
                       f"{spec.lesion_centring!r}")
    if spec.group_by not in ("patient", "exam"):
      raise ValueError(f"group_by must be 'patient' or 'exam', got {spec.group_by!r}")
    self.exams, self.spec, self.cache = list(exams), spec, cache
    # units a group is drawn from: patients (each a list of its exams) or single exams; for the
    # position task, split by MS status so that MS exams keep their share of groups
    units: dict[tuple, list[int]] = {}
    for i, e in enumerate(self.exams):
      units.setdefault((e.patient_id if spec.group_by == "patient" else i, e.ms), []).append(i)
    self.units = list(units.values())
    self.ms = [u for u, (_, ms) in enumerate(units) if ms]
    self.non_ms = [u for u, (_, ms) in enumerate(units) if not ms]
    self._lock = threading.Lock()
    self._bank: list | None = None
    self._plans: collections.OrderedDict = collections.OrderedDict()
    self._donors = (transplant_lib.DonorBank(spec.transplant.maps,
                                                    spec.transplant.maps_registration)
                    if spec.task == "segmentation" and spec.transplant.probability > 0 else None)
    self._looks: dict = {}

  def prepared(self, exam: Exam, phase=None) -> _Prepared:
    spec, transplanting = self.spec, self._donors is not None
    return self.cache.get(exam, derive=lambda a: _Prepared(
        a, patch_lib.sampling_index(a, spec.patch_size, spec.min_brain_fraction),
        transplant_lib.where_lesions_go(a.images, a.brain, _label(a), a.present)
        if transplanting else None,
        lesion_load.brain_sums(a.images, a.brain) if spec.renormalise else None), phase=phase)

  def phase_of(self, batch: int, group: int):
    """The grid phase of a group's exam (grid_phases=8: one of nifti.half_voxel_phases, its own
    generator, so that switching it on leaves every other draw as it was); None with 1. A
    network trained on one placement of each exam on the grid sees every small lesion aliased
    one way; drawn phases show it each lesion at 8 placements, as test-time phases give it."""
    if self.spec.grid_phases <= 1 or self.spec.task != "segmentation":
      return None
    rng = np.random.default_rng([self.spec.seed, batch, group, 5153])
    return nifti.half_voxel_phases()[int(rng.integers(8))]

  def group_plan(self, batch: int, group: int):
    """(exam index, rater index, channel keep-mask) shared by the patches of one group."""
    spec = self.spec
    rng = np.random.default_rng([spec.seed, batch, group])
    if spec.task == "position" and self.ms and self.non_ms:
      pool = self.ms if rng.random() < spec.ms_fraction else self.non_ms
    else:
      pool = range(len(self.units))
    unit = self.units[int(rng.choice(list(pool)))]
    # one exam per patient draws nothing more: such cohorts get the same batches either way
    exam_index = unit[0] if len(unit) == 1 else unit[int(rng.integers(len(unit)))]
    exam = self.exams[exam_index]
    rater = int(rng.integers(len(exam.training_masks))) if exam.training_masks else -1
    keep = np.array([m in exam.images for m in MODALITIES])
    if spec.modality_dropout > 0:
      drop = rng.random(len(MODALITIES)) < spec.modality_dropout
      candidate = keep & ~drop
      if candidate.any():
        keep = candidate
      else:  # never zero every present modality: keep one at random
        only = rng.choice(np.flatnonzero(keep))
        keep = np.zeros_like(keep)
        keep[only] = True
    return exam_index, rater, keep

  def bank(self) -> list:
    """Every lesion of the training exams (built once, in exam order: deterministic)."""
    with self._lock:
      if self._bank is None:
        bank = []
        for exam in self.exams:
          a = self.prepared(exam).arrays
          mask = _label(a)
          bank += lesion_load.carve(exam.exam_id, a.images, a.brain, mask, a.present,
                                    self.spec.lesion_load.min_voxels)
        self._bank = bank
      return self._bank

  def look(self, exam_index: int) -> transplant_lib.Look:
    """How lesions look in this exam (its own, or its white matter shifted by the contrast of
    the cohort's labelled lesions); measured once per exam, in exam order."""
    with self._lock:
      if not self._looks:
        for i, exam in enumerate(self.exams):
          a = self.prepared(exam).arrays
          self._looks[i] = transplant_lib.measure_look(a.images, a.brain, _label(a), a.present)
      own = list(self._looks.values())
      return transplant_lib.borrowed(self._looks[exam_index], own)

  def load_plan(self, batch: int, group: int, exam_index: int, phase=None) -> lesion_load.Plan:
    """The group's added lesions: a donor's transplanted (with probability transplant.p), else
    the training exams' own pasted (lesion_load.p); a pure function of (seed, batch, group),
    cached per group. Each option off draws no random number."""
    spec = self.spec
    if spec.task != "segmentation" or (spec.lesion_load.probability <= 0 and
                                       self._donors is None):
      return lesion_load.EMPTY
    key = (batch, group)
    with self._lock:
      if key in self._plans:
        return self._plans[key]
    prep = self.prepared(self.exams[exam_index], phase)
    a = prep.arrays
    plan = lesion_load.EMPTY
    if self._donors is not None:
      rng = np.random.default_rng([spec.seed, batch, group, 8191])
      plan = transplant_lib.plan(rng, self._donors.donors(a.grid), self.look(exam_index),
                                 a.images, a.brain, _label(a), a.present, spec.transplant,
                                 prep.gates)
    if not plan.pastes and spec.lesion_load.probability > 0:
      bank = self.bank()
      rng = np.random.default_rng([spec.seed, batch, group, 4099])
      plan = lesion_load.plan(rng, bank, a.images, a.brain, a.present, a.grid.voxel_ml,
                              spec.lesion_load)
    if spec.renormalise:
      plan = lesion_load.renormalised(plan, a.images, a.brain, a.present, prep.sums)
    if spec.lesion_centring == "lesion" and plan.pastes:
      ids = np.repeat(np.arange(len(plan.pastes)), [int(p.hard.sum()) for p in plan.pastes])
      plan = dataclasses.replace(plan, centre_weights=patch_lib.per_lesion_weights(ids))
    with self._lock:
      self._plans[key] = plan
      while len(self._plans) > 16:
        self._plans.popitem(last=False)
    return plan

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    spec = self.spec
    index = int(index)
    batch, within = divmod(index, spec.batch_size)
    group, slot = divmod(within, spec.patches_per_exam)
    # groups are seeded by their global index: the global batch does not depend on how many
    # processes share it
    g = spec.group_offset + group
    exam_index, rater, keep = self.group_plan(batch, g)
    phase = self.phase_of(batch, g)
    prep = self.prepared(self.exams[exam_index], phase)
    a = prep.arrays
    # the robust-training draws have their own generator: switching them on leaves every other
    # draw (corner, zoom, mirroring, intensity) as it was
    robust = (np.random.default_rng([spec.seed, batch, g, slot, 6007])
              if spec.sequence_dropout > 0 or spec.acquisition.on else None)
    if spec.sequence_dropout > 0 and robust.random() < spec.sequence_dropout:
      keep = drop_sequences(keep, robust)
    plan = self.load_plan(batch, g, exam_index, phase)
    n_lesion = int(round(spec.lesion_fraction * spec.patches_per_exam))
    p = spec.patch_size
    corner = patch_lib.draw_corner(rng, prep.index, lesion_centred=slot < n_lesion,
                                   extra_centres=plan.centres, patch=p,
                                   extra_weights=plan.centre_weights,
                                   by_lesion=spec.lesion_centring == "lesion")
    record = {"corner": corner.astype(np.int32), "exam_index": np.int32(exam_index)}
    if spec.task == "position":
      record["image"] = np.ascontiguousarray(patch_lib.cut(a.images, corner, p) *
                                             keep.astype(np.float32), dtype=np.float32)
      record["position"] = patch_lib.position_target(corner, p, a.shape)
      return record
    mask = a.masks[rater]
    zoom = draw_zoom(rng) if spec.augment else 1.0
    if zoom != 1.0:
      image, mask = cut_zoomed(a.images, mask, corner, p, zoom, plan.pastes, a.present)
    else:
      image, mask = lesion_load.render(a.images, mask, corner, p, plan.pastes, a.present)
    image = lesion_load.renormalise(image, plan.brain_stats) * keep.astype(np.float32)
    mask = mask[..., None]
    if spec.acquisition.on:  # the scanner first (zeros still mark outside / missing), then the
      # normalisation jitter of augment, which shifts the background off zero
      image = acquisition.augment(image, robust, spec.acquisition,
                                  tuple(s / zoom for s in a.grid.spacing))
    if spec.augment:
      image, mask = augment(image, mask, rng)
    if spec.intensity:
      image = intensity_augment(image, rng)
    record["image"] = np.ascontiguousarray(image, dtype=np.float32)
    record["mask"] = mask.astype(np.float32)
    if spec.blob_labels:
      record["blobs"] = lesions_lib.blob_labels(mask[..., 0])
    return record


FLAIR = MODALITIES.index("FLAIR")


def _label(a: ExamArrays):
  return a.reference if a.reference is not None else (a.masks[0] if a.masks else None)


def drop_sequences(keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Sequence dropout: `keep` (which channels the patch has) with some of its non-FLAIR
  sequences dropped, their channel zero as the paper feeds a missing sequence. The number of
  non-FLAIR sequences kept is uniform in 0..n-1 (n = those present), then which ones uniformly,
  so FLAIR alone is 1/n of the dropouts (1/3 with T1W, T1WKS, T2W), and every subset containing
  FLAIR is seen. FLAIR is never dropped; without FLAIR nothing is (no anchor sequence). Robust
  training in the way of MindGlide (any single contrast) and HeMIS-style modality dropout, with
  FLAIR the sequence every MS exam has."""
  others = np.flatnonzero(keep)
  others = others[others != FLAIR]
  if not keep[FLAIR] or len(others) == 0:
    return keep
  n_kept = int(rng.integers(len(others)))
  kept = rng.choice(others, n_kept, replace=False)
  out = np.zeros_like(keep)
  out[FLAIR] = True
  out[kept] = True
  return out


def sequence_subsets(modalities, sequence_dropout: float, modality_dropout: float = 0.0
                     ) -> list[tuple[str, ...]]:
  """The sequence subsets that training with these dropouts shows the network when an exam has
  `modalities`: every subset containing FLAIR with sequence dropout, every non-empty subset with
  modality dropout, else the full set only (each in MODALITIES order, larger subsets first)."""
  full = tuple(m for m in MODALITIES if m in set(modalities))
  if modality_dropout > 0:
    required = ()
  elif sequence_dropout > 0 and "FLAIR" in full:
    required = ("FLAIR",)
  else:
    return [full]
  others = [m for m in full if m not in required]
  subsets = []
  for bits in range(2 ** len(others)):
    chosen = {o for k, o in enumerate(others) if bits >> k & 1} | set(required)
    if chosen:
      subsets.append(tuple(m for m in MODALITIES if m in chosen))
  return sorted(subsets, key=lambda t: (-len(t), [MODALITIES.index(m) for m in t]))


def trained_subsets(exams: list[Exam], spec: SamplerSpec) -> list[list[str]]:
  """Every sequence subset a run with `spec` shows the network over `exams` (what a model may be
  said to take; a union over the exams' own sequences)."""
  seen = set()
  for e in exams:
    seen.update(sequence_subsets(e.images, spec.sequence_dropout, spec.modality_dropout))
  return [list(t) for t in sorted(seen, key=lambda t: (-len(t), [MODALITIES.index(m) for m in t]))]


ZOOM_PROBABILITY, ZOOM_RANGE = 0.3, (0.7, 1.4)  # nnU-Net's scaling augmentation


def draw_zoom(rng: np.random.Generator) -> float:
  """1.0 (no scaling) with probability 0.7, else log-uniform in ZOOM_RANGE (> 1 magnifies)."""
  if rng.random() >= ZOOM_PROBABILITY:
    return 1.0
  lo, hi = np.log(ZOOM_RANGE[0]), np.log(ZOOM_RANGE[1])
  return float(np.exp(rng.uniform(lo, hi)))


def cut_zoomed(images: np.ndarray, mask: np.ndarray, corner, patch: int, zoom: float,
               pastes=(), present=None):
  """The patch with the same centre as `corner`'s, showing a (patch/zoom)³ region resampled to
  patch³ (linear; the mask thresholded at 0.5). Outside the volume reads as 0."""
  from scipy import ndimage
  q = max(2, int(round(patch / zoom)))
  centre = np.asarray(corner) + patch / 2.0
  lo = np.round(centre - q / 2.0).astype(int)
  region, region_mask = lesion_load.render(images, mask, lo, q, pastes, present)
  f = patch / q
  image = ndimage.zoom(region, (f, f, f, 1), order=1, grid_mode=True, mode="grid-constant")
  out_mask = ndimage.zoom(region_mask.astype(np.float32), (f, f, f), order=1, grid_mode=True,
                          mode="grid-constant") >= 0.5
  return image.astype(np.float32), out_mask.astype(np.uint8)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
  """nnU-Net-style mirroring along each axis (p = 0.5 each) and, per channel, a scale in
  [0.9, 1.1] and a shift in [-0.1, 0.1] (images are z-scores). Segmentation only: a mirrored
  patch has no defined position target. Zeroed (missing) channels stay zero."""
  flips = tuple(np.flatnonzero(rng.random(3) < 0.5))
  if flips:
    image, mask = np.flip(image, flips), np.flip(mask, flips)
  c = image.shape[-1]
  present = (image != 0).any(axis=(0, 1, 2))
  scale = rng.uniform(0.9, 1.1, c).astype(np.float32)
  shift = rng.uniform(-0.1, 0.1, c).astype(np.float32) * present
  return (np.ascontiguousarray(image * scale + shift, dtype=np.float32),
          np.ascontiguousarray(mask))


GAMMA_P, GAMMA_RANGE = 0.3, (0.7, 1.5)            # nnU-Net's gamma augmentation
CONTRAST_P, CONTRAST_RANGE = 0.15, (0.75, 1.25)    # nnU-Net's contrast augmentation
BRIGHTNESS_P, BRIGHTNESS_RANGE = 0.15, (0.75, 1.25)  # nnU-Net's multiplicative brightness


def intensity_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """nnU-Net's intensity augmentations, each channel on its own: multiplicative brightness,
  contrast (about the channel's mean, clipped to its former range) and gamma (on the channel's
  [min, max], mean and std restored afterwards, as nnU-Net's retain_stats). Zero (missing or
  outside the brain) voxels stay zero, so only tissue intensities change."""
  out = image.copy()
  for c in range(image.shape[-1]):
    x = out[..., c]
    tissue = x != 0
    if tissue.sum() < 2:
      continue
    v = x[tissue]
    if rng.random() < BRIGHTNESS_P:
      v = v * rng.uniform(*BRIGHTNESS_RANGE)
    if rng.random() < CONTRAST_P:
      mean, lo, hi = v.mean(), v.min(), v.max()
      v = np.clip((v - mean) * rng.uniform(*CONTRAST_RANGE) + mean, lo, hi)
    if rng.random() < GAMMA_P:
      mean, std, lo, hi = v.mean(), v.std(), v.min(), v.max()
      gamma = rng.uniform(*GAMMA_RANGE)
      v = ((v - lo) / max(hi - lo, 1e-6)) ** gamma * (hi - lo) + lo
      v = (v - v.mean()) / max(v.std(), 1e-6) * std + mean
    x[tissue] = v
  return out


def make_dataset(exams: list[Exam], spec: SamplerSpec, cache: ExamCache,
                 num_batches: int) -> grain.MapDataset:
  """A MapDataset of `num_batches` batches: dict of (B, ...) arrays, B = spec.batch_size."""
  source = PatchSource(exams, spec, cache)
  ds = grain.MapDataset.range(num_batches * spec.batch_size)
  ds = ds.random_map(source, seed=spec.seed)
  return ds.batch(spec.batch_size, drop_remainder=True)


def make_iterator(ds: grain.MapDataset, num_threads: int = 2, prefetch: int = 2):
  """An iterator whose `get_state()`/`set_state()` are saved with checkpoints for exact resume."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=prefetch))
  return iter(it)


def split_patients(patients: list[str], val_fraction: float, seed: int, repeat: int = 0
                   ) -> tuple[list[str], list[str]]:
  """Repeated random sub-sampling: repeat r draws its own seeded train/validation split of
  patients (never of exams, so one patient's exams stay on one side)."""
  patients = sorted(set(patients))
  if val_fraction <= 0 or len(patients) < 2:
    return patients, []
  rng = np.random.default_rng([seed, repeat, 7919])
  order = list(rng.permutation(patients))
  n_val = min(len(patients) - 1, max(1, int(round(val_fraction * len(patients)))))
  return sorted(order[n_val:]), sorted(order[:n_val])
