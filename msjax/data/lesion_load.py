"""Lesion-load augmentation: training exams with heavier and more varied lesion loads, made of
real lesions (CarveMix, Zhang et al. MICCAI 2021, on co-registered exams).

A few labelled patients carry a few mL of small lesions; a patient with 50 mL of confluent
periventricular lesions looks like nothing the network has seen. Here, for a share of the batch
groups, the group's exam gets extra lesions pasted in:

- the lesion bank: every connected lesion of the labelled training exams, carved out with its
  intensities in every channel, its mask, a soft border (partial volume) and its local
  background (the median of the brain shell around it);
- a paste: a bank lesion, optionally grown by dilation (the new rim takes the lesion's mean
  intensity: lesions thicken and merge into confluent ones), optionally mirrored left-right,
  with its contrast to the local background scaled, placed at its own position or at another
  bank lesion's (all exams share the model grid, so lesion-prone places, periventricular above
  all, carry over) with a jitter, and accepted only where the target is brain and not CSF
  (dark on FLAIR);
- a plan: pastes drawn until a log-uniform added volume is reached. It is a pure function of the
  group's seed, so the same seed gives the same batches and a resumed run continues exactly.

Patches are rendered from the target volume with the pastes that reach them blended in
(image ← (1 − soft)·image + soft·lesion) and the mask following (mask ∪ hard), so nothing the
size of an exam is copied per group.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

T1W, FLAIR = 0, 3  # channels in msjax.data.manifest.MODALITIES
# white matter is the brightest tissue on T1: the tissue next to the Lesjak lesions has a T1W
# z-score (in the brain) of 0.75 at the median, the brain as a whole 0.23, grey matter and CSF less
WHITE_MATTER_T1W_Z = 0.3
SIX = ndimage.generate_binary_structure(3, 1)


@dataclasses.dataclass(frozen=True)
class LoadSpec:
  probability: float = 0.0            # share of groups whose exam gets lesions pasted in
  added_ml: tuple = (1.0, 50.0)       # added volume, log-uniform (mL)
  max_grow: int = 2                   # dilation radius drawn in 0..max_grow voxels
  contrast: tuple = (0.6, 1.2)        # lesion-to-background contrast factor, uniform
  jitter: int = 6                     # placement jitter (voxels)
  min_voxels: int = 3                 # smallest lesion kept in the bank


@dataclasses.dataclass(frozen=True)
class Lesion:
  """One lesion carved out of an exam on the model grid."""
  exam_id: str
  lo: np.ndarray          # (3,) corner of its box in the source volume
  hard: np.ndarray        # (x, y, z) bool, the lesion
  images: np.ndarray      # (x, y, z, C) source intensities in the box
  present: np.ndarray     # (C,) channels the source has
  background: np.ndarray  # (C,) median of the brain shell around the lesion
  mean: np.ndarray        # (C,) mean intensity inside the lesion

  @property
  def voxels(self) -> int:
    return int(self.hard.sum())


MARGIN = 4  # voxels of context around each lesion: room for growth and the soft border


def carve(exam_id: str, images: np.ndarray, brain: np.ndarray, mask: np.ndarray,
          present: np.ndarray, min_voxels: int = 3) -> list[Lesion]:
  """Every 6-connected lesion of `mask` with at least `min_voxels` voxels."""
  labels, n = ndimage.label(mask > 0, structure=SIX)
  out = []
  for k, sl in enumerate(ndimage.find_objects(labels), start=1):
    lo = np.array([max(s.start - MARGIN, 0) for s in sl])
    hi = np.array([min(s.stop + MARGIN, d) for s, d in zip(sl, mask.shape)])
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    hard = labels[box] == k
    if hard.sum() < min_voxels:
      continue
    img = images[box]
    shell = ndimage.binary_dilation(hard, SIX, iterations=2) & ~hard & (brain[box] > 0) & \
        ~(mask[box] > 0)
    background = (np.median(img[shell], axis=0) if shell.any() else
                  np.zeros(images.shape[-1], np.float32))
    out.append(Lesion(exam_id=exam_id, lo=lo, hard=hard, images=np.array(img, np.float32),
                      present=np.asarray(present, bool),
                      background=np.asarray(background, np.float32),
                      mean=img[hard].mean(axis=0).astype(np.float32)))
  return out


@dataclasses.dataclass(frozen=True)
class Paste:
  """A lesion ready to blend: box corner in the target, soft weight, hard mask, intensities."""
  lo: np.ndarray
  soft: np.ndarray     # (x, y, z) float32 in [0, 1]: 1 on the lesion, fading over ~2 voxels
  hard: np.ndarray     # (x, y, z) bool
  images: np.ndarray   # (x, y, z, C)

  @property
  def hi(self) -> np.ndarray:
    return self.lo + np.array(self.hard.shape)


def make_paste(lesion: Lesion, lo, grow: int, mirror: bool, contrast: float) -> Paste:
  hard = lesion.hard
  img = lesion.images
  if grow > 0:
    grown = ndimage.binary_dilation(hard, SIX, iterations=grow)
    img = np.where(grown[..., None] & ~hard[..., None], lesion.mean, img)
    hard = grown
  # contrast to the local background, per channel (z-scored images: background ~ normal tissue)
  img = lesion.background + contrast * (img - lesion.background)
  soft = np.maximum(hard, ndimage.gaussian_filter(hard.astype(np.float32), 1.0) * 1.5)
  soft = np.clip(soft, 0, 1).astype(np.float32)
  if mirror:
    hard, soft, img = hard[::-1], soft[::-1], img[::-1]
  return Paste(lo=np.asarray(lo), soft=soft, hard=np.ascontiguousarray(hard),
               images=np.ascontiguousarray(img, dtype=np.float32))


def _plausible(paste: Paste, images: np.ndarray, brain: np.ndarray, present: np.ndarray) -> bool:
  """Inside the volume, the lesion in the brain, not on CSF (dark on FLAIR), in white matter
  (bright on T1: a lesion pasted onto cortex teaches the network that bright cortex is lesion)."""
  if (paste.lo < 0).any() or (paste.hi > np.array(brain.shape)).any():
    return False
  box = tuple(slice(a, b) for a, b in zip(paste.lo, paste.hi))
  inside = brain[box][paste.hard]
  if inside.mean() < 0.98:
    return False
  if present[FLAIR]:
    flair = images[box][..., FLAIR][paste.hard]
    if (flair < -1.5).mean() > 0.1:  # CSF is the darkest tissue on FLAIR
      return False
  if present[T1W]:
    if np.median(images[box][..., T1W][paste.hard]) < WHITE_MATTER_T1W_Z:
      return False
  return True


@dataclasses.dataclass(frozen=True)
class Plan:
  pastes: tuple[Paste, ...]
  centres: np.ndarray  # (M, 3) voxels of pasted lesions (for lesion-centred patches)
  # (mean, sd) per channel of the exam's brain with the pastes in, in the exam's z units: its
  # patches are z-scored again by them (renormalised); None: as loaded
  brain_stats: tuple[np.ndarray, np.ndarray] | None = None
  # (M,) probabilities over centres giving each paste (one lesion) the same share, for sampling
  # by lesion (SamplerSpec.lesion_centring); None: every centre alike
  centre_weights: np.ndarray | None = None


def brain_sums(images: np.ndarray, brain: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
  """(voxels, sum, sum of squares per channel) over the brain: an exam's, computed once."""
  values = images[brain > 0].astype(np.float64)
  return values.shape[0], values.sum(axis=0), (values ** 2).sum(axis=0)


def renormalised(plan: Plan, images: np.ndarray, brain: np.ndarray, present: np.ndarray,
                 sums: tuple | None = None) -> Plan:
  """The plan with the brain statistics of the exam its pastes make. The loader z-scores every
  exam over its own brain (exams.load_exam), lesions included: a brain carrying 50 mL of lesions
  reaches the network with its mean raised and its spread widened, its lesions less bright than
  the same lesions in a light-load brain. An exam given pasted lesions is z-scored again with
  them, so that a heavy load in training looks as a heavy load looks at inference. Draws
  nothing. `sums`: the exam's brain_sums (computed here when not given); only the box the
  pastes span is rendered, the brain's sums corrected where they changed."""
  if not plan.pastes:
    return plan
  n, total, squares = sums or brain_sums(images, brain)
  lo = np.min([p.lo for p in plan.pastes], axis=0).clip(0)
  hi = np.minimum(np.max([p.hi for p in plan.pastes], axis=0), images.shape[:3])
  box = tuple(slice(a, b) for a, b in zip(lo, hi))
  touched = np.zeros(tuple(hi - lo), bool)
  for p in plan.pastes:
    touched[tuple(slice(max(a - o, 0), b - o) for a, b, o in zip(p.lo, p.hi, lo))] = True
  changed = touched & (brain[box] > 0)
  # the pastes blended in order into the box they span, as render blends them into a patch
  no_mask = np.broadcast_to(np.uint8(0), images.shape[:3])  # a view: nothing allocated
  canvas, _ = render(images, no_mask, lo, tuple(hi - lo), plan.pastes, present)
  before = images[box][changed].astype(np.float64)
  after = canvas[changed].astype(np.float64)
  mean = (total + after.sum(axis=0) - before.sum(axis=0)) / n
  mean_square = (squares + (after ** 2).sum(axis=0) - (before ** 2).sum(axis=0)) / n
  sd = np.sqrt(np.maximum(mean_square - mean ** 2, 0.0))
  mean = np.where(present, mean, 0.0).astype(np.float32)
  sd = np.where(present & (sd > 1e-6), sd, 1.0).astype(np.float32)
  return dataclasses.replace(plan, brain_stats=(mean, sd))


def renormalise(image: np.ndarray, brain_stats) -> np.ndarray:
  """A rendered patch z-scored again by its exam's brain statistics with the pastes in (zeros,
  outside the brain or a missing sequence, stay zero)."""
  if brain_stats is None:
    return image
  mean, sd = brain_stats
  return np.where(image != 0, (image - mean) / sd, 0.0).astype(np.float32)


EMPTY = Plan(pastes=(), centres=np.zeros((0, 3), np.int64))


def plan(rng: np.random.Generator, bank: list[Lesion], images: np.ndarray, brain: np.ndarray,
         present: np.ndarray, voxel_ml: float, spec: LoadSpec) -> Plan:
  """Pastes for one exam, drawn until a log-uniform added volume is reached."""
  if not bank or rng.random() >= spec.probability:
    return EMPTY
  usable = [l for l in bank if (l.present >= present).all()]  # every channel the target has
  if not usable:
    return EMPTY
  lo_ml, hi_ml = spec.added_ml
  target = np.exp(rng.uniform(np.log(lo_ml), np.log(hi_ml))) / voxel_ml
  weights = np.sqrt([l.voxels for l in usable])
  weights = weights / weights.sum()
  shape = np.array(brain.shape)
  pastes, centres, added, tries = [], [], 0, 0
  while added < target and tries < 200:
    tries += 1
    lesion = usable[int(rng.choice(len(usable), p=weights))]
    anchor = usable[int(rng.integers(len(usable)))] if rng.random() < 0.5 else lesion
    mirror = bool(rng.random() < 0.5)
    grow = int(rng.integers(spec.max_grow + 1))
    contrast = float(rng.uniform(*spec.contrast))
    size = np.array(lesion.hard.shape)
    centre = anchor.lo + np.array(anchor.hard.shape) // 2
    if mirror:
      centre[0] = shape[0] - 1 - centre[0]
    lo = centre - size // 2 + rng.integers(-spec.jitter, spec.jitter + 1, 3)
    paste = make_paste(lesion, lo, grow, mirror, contrast)
    if not _plausible(paste, images, brain, present):
      continue
    pastes.append(paste)
    vox = np.argwhere(paste.hard) + paste.lo
    centres.append(vox)
    added += len(vox)
  if not pastes:
    return EMPTY
  return Plan(pastes=tuple(pastes), centres=np.concatenate(centres))


def render(images: np.ndarray, mask: np.ndarray, lo, size, pastes=(), present=None) -> tuple:
  """The size³ region (or one of shape `size`, a 3-tuple) at corner `lo` (may reach outside the
  volume: zeros there) with the pastes that reach it blended in; `present` (C,) keeps missing
  channels at zero. Returns (image (s, s, s, C) float32, mask (s, s, s) uint8)."""
  lo = np.asarray(lo, int)
  shape = np.array(images.shape[:3])
  dims = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
  size = np.array(dims)
  region = np.zeros(dims + (images.shape[-1],), np.float32)
  region_mask = np.zeros(dims, np.uint8)
  a, b = np.maximum(lo, 0), np.minimum(lo + size, shape)
  if (b > a).all():
    src = tuple(slice(s, e) for s, e in zip(a, b))
    dst = tuple(slice(s - o, e - o) for s, e, o in zip(a, b, lo))
    region[dst] = images[src]
    region_mask[dst] = mask[src]
  if present is None:
    present = np.ones(images.shape[-1], bool)
  for p in pastes:
    a, b = np.maximum(lo, p.lo), np.minimum(lo + size, p.hi)
    if not (b > a).all():
      continue
    dst = tuple(slice(s - o, e - o) for s, e, o in zip(a, b, lo))
    sub = tuple(slice(s - o, e - o) for s, e, o in zip(a, b, p.lo))
    soft = p.soft[sub][..., None]
    blended = region[dst] * (1 - soft) + p.images[sub] * soft
    region[dst] = np.where(present, blended, 0.0)  # a missing channel stays missing
    region_mask[dst] |= p.hard[sub].astype(np.uint8)
  return region, region_mask
