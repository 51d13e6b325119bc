"""A built-in synthetic MS cohort, written to disk as NIfTI with a manifest so that the demo and the
tests go through the same loader as real scans.

Each exam is a procedural skull-stripped head: an irregular brain ellipsoid with a cortical grey
matter band, a thin outer CSF rim and two lateral ventricles, white matter inside. MS exams get
lesions of varied size, mostly periventricular. The five modalities follow the real contrasts
(FLAIR: lesions bright, CSF dark; T2W: CSF and lesions bright; T1W: lesions hypo-intense; T1WKS:
some lesions enhance; PDW: CSF and lesions bright-ish), with partial-volume blur, a smooth
multiplicative bias field and Rician noise. 1–3 raters' masks disagree at lesion borders; the
consensus is the true lesion mask. Some exams are non-MS, some miss modalities, and every other
exam is stored in LPS voxel order so that reorientation is exercised.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging
from scipy import ndimage

from msjax.data import manifest as manifest_lib
from msjax.data import nifti
from msjax.data.manifest import MODALITIES

# Mean intensity per tissue and modality (arbitrary units, white matter of T1W = 1).
_TISSUES = ("csf", "gm", "wm", "lesion")
_CONTRAST = {
    "T1W":   {"csf": 0.25, "gm": 0.65, "wm": 1.00, "lesion": 0.45},
    "T1WKS": {"csf": 0.25, "gm": 0.65, "wm": 1.00, "lesion": 0.45},
    "T2W":   {"csf": 1.00, "gm": 0.60, "wm": 0.40, "lesion": 0.85},
    "FLAIR": {"csf": 0.10, "gm": 0.60, "wm": 0.45, "lesion": 1.00},
    "PDW":   {"csf": 0.85, "gm": 0.75, "wm": 0.60, "lesion": 0.90},
}
_ENHANCING = 1.35  # T1WKS intensity of an enhancing lesion
# Modalities missing, by exam index modulo 4 (index 0: all five present).
_MISSING = ({}, {"PDW"}, {"T1WKS", "PDW"}, {"T2W"})


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  n_ms: int = 8
  n_non_ms: int = 4
  n_test: int = 3                  # MS exams marked split="test" (never trained on)
  shape: tuple[int, int, int] = (64, 64, 64)
  spacing_mm: float = 2.5
  lesions: tuple[int, int] = (4, 10)
  lesion_radius_vox: tuple[float, float] = (1.0, 4.5)
  noise: float = 0.03
  bias: float = 0.15
  seed: int = 0


def _smooth_noise(rng, shape, sigma):
  field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
  return field / (field.std() + 1e-8)


def _head(rng, shape):
  """Tissue label volume: 0 background, 1 CSF, 2 GM, 3 WM; plus ventricle mask."""
  axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
  x, y, z = np.meshgrid(*axes, indexing="ij")
  radii = np.array([0.78, 0.88, 0.72]) * rng.uniform(0.93, 1.05, 3)
  r = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
  r = r + 0.04 * _smooth_noise(rng, shape, sigma=max(shape) / 10)
  brain = r < 1.0
  folds = 0.035 * _smooth_noise(rng, shape, sigma=max(shape) / 24)
  labels = np.zeros(shape, np.uint8)
  labels[brain] = 3
  labels[brain & (r > 0.80 + folds)] = 2
  labels[brain & (r > 0.96)] = 1
  vent = np.zeros(shape, bool)
  for side in (-1, 1):
    c = np.array([side * 0.13, 0.05, 0.08]) + rng.normal(0, 0.015, 3)
    vr = np.array([0.07, 0.28, 0.11]) * rng.uniform(0.8, 1.25, 3)
    vent |= ((x - c[0]) / vr[0]) ** 2 + ((y - c[1]) / vr[1]) ** 2 + ((z - c[2]) / vr[2]) ** 2 < 1
  labels[vent & brain] = 1
  return labels, vent


def _lesions(rng, labels, vent, spec):
  """Ellipsoidal lesions in white matter, about 70 % touching the ventricles' surroundings."""
  shape = labels.shape
  wm = labels == 3
  near_vent = wm & ndimage.binary_dilation(vent, iterations=3)
  lesion = np.zeros(shape, bool)
  enhancing = np.zeros(shape, bool)
  n = rng.integers(spec.lesions[0], spec.lesions[1] + 1)
  grid = np.indices(shape, dtype=np.float32)
  for k in range(n):
    pool = near_vent if (rng.random() < 0.7 and near_vent.any()) else wm
    candidates = np.argwhere(pool)
    centre = candidates[rng.integers(len(candidates))].astype(np.float32)
    # log-uniform radius: many small lesions, a few large ones
    lo, hi = spec.lesion_radius_vox
    rad = np.exp(rng.uniform(np.log(lo), np.log(hi))) * rng.uniform(0.7, 1.3, 3)
    d = sum(((grid[i] - centre[i]) / rad[i]) ** 2 for i in range(3))
    blob = (d < 1.0) & (labels >= 2)
    if not blob.any():
      blob = np.zeros(shape, bool)
      blob[tuple(centre.astype(int))] = True
    lesion |= blob
    if rng.random() < 0.3:
      enhancing |= blob
  return lesion, enhancing


def _rater(rng, consensus):
  """A rater's mask: the consensus with border voxels randomly added and removed."""
  if not consensus.any():
    return consensus.copy()
  inner = consensus & ~ndimage.binary_erosion(consensus)
  outer = ndimage.binary_dilation(consensus) & ~consensus
  out = consensus.copy()
  out[inner & (rng.random(consensus.shape) < 0.25)] = False
  out[outer & (rng.random(consensus.shape) < 0.25)] = True
  return out


def _images(rng, labels, lesion, enhancing, brain, spec):
  shape = labels.shape
  pv = {}
  for name, lab in (("csf", 1), ("gm", 2), ("wm", 3)):
    pv[name] = ndimage.gaussian_filter(((labels == lab) & ~lesion).astype(np.float32), 0.6)
  pv["lesion"] = ndimage.gaussian_filter(lesion.astype(np.float32), 0.6)
  pv_enh = ndimage.gaussian_filter(enhancing.astype(np.float32), 0.6)
  axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
  x, y, z = np.meshgrid(*axes, indexing="ij")
  images = {}
  for m in MODALITIES:
    c = _CONTRAST[m]
    img = sum(c[t] * pv[t] for t in _TISSUES)
    if m == "T1WKS":
      img = img + (_ENHANCING - c["lesion"]) * pv_enh
    coef = rng.normal(0, 1, 6) * spec.bias / 2
    bias = np.exp(coef[0] * x + coef[1] * y + coef[2] * z + coef[3] * x * y
                  + coef[4] * (x ** 2 - 0.3) + coef[5] * (z ** 2 - 0.3))
    img = img * bias * rng.uniform(200, 1200)  # arbitrary scanner scale
    sigma = spec.noise * img[labels == 3].mean()
    noisy = np.sqrt((img + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    images[m] = np.where(brain, noisy, 0.0).astype(np.float32)
  return images


def _affine(shape, spacing, lps: bool):
  aff = np.diag([spacing, spacing, spacing, 1.0])
  aff[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
  if lps:  # flip x and y voxel axes: same anatomy, different voxel order
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3] = shape[0] - 1
    flip[1, 3] = shape[1] - 1
    aff = aff @ flip
  return aff


def _store(array, lps):
  return array[::-1, ::-1, :] if lps else array


def write_synthetic_cohort(folder: str, spec: SyntheticSpec = SyntheticSpec(),
                           log=print) -> manifest_lib.Cohort:
  """Writes the cohort (NIfTI files + cohort.json) into `folder` and returns it. Deterministic."""
  folder = os.path.abspath(folder)
  os.makedirs(folder, exist_ok=True)
  exams = []
  n = spec.n_ms + spec.n_non_ms
  for i in range(n):
    rng = np.random.default_rng([spec.seed, i])
    ms = i < spec.n_ms
    exam_id = f"synth{i:03d}"
    labels, vent = _head(rng, spec.shape)
    brain = labels > 0
    if ms:
      lesion, enhancing = _lesions(rng, labels, vent, spec)
    else:
      lesion = enhancing = np.zeros(spec.shape, bool)
    images = _images(rng, labels, lesion, enhancing, brain, spec)
    lps = i % 2 == 1
    affine = _affine(spec.shape, spec.spacing_mm, lps)
    d = os.path.join(folder, exam_id)
    paths = {}
    for m in MODALITIES:
      if m in _MISSING[i % 4]:
        continue
      paths[m] = nifti.write_nifti(_store(images[m], lps), affine,
                                   os.path.join(d, f"{m}.nii.gz"))
    raters, consensus = [], None
    if ms:
      for k in range(1 + i % 3):
        raters.append(nifti.write_nifti(_store(_rater(rng, lesion), lps), affine,
                                        os.path.join(d, f"rater{k + 1}.nii.gz"), dtype=np.uint8))
      consensus = nifti.write_nifti(_store(lesion, lps), affine,
                                    os.path.join(d, "consensus.nii.gz"), dtype=np.uint8)
    brain_path = nifti.write_nifti(_store(brain, lps), affine,
                                   os.path.join(d, "brain_mask.nii.gz"), dtype=np.uint8)
    split = "test" if ms and i >= spec.n_ms - spec.n_test else "train"
    exams.append(manifest_lib.Exam(exam_id=exam_id, patient_id=exam_id, ms=ms, images=paths,
                                 raters=tuple(raters), consensus=consensus,
                                 brain_mask=brain_path, split=split))
    voxel_ml = spec.spacing_mm ** 3 / 1000
    log(f"[synthetic] {i + 1}/{n} {exam_id}: {'MS' if ms else 'non-MS'}, {split}, "
        f"{len(paths)} modalities, {len(raters)} rater(s), lesions {lesion.sum() * voxel_ml:.2f} mL")
  cohort = manifest_lib.Cohort(root=folder, exams=tuple(exams))
  manifest_lib.save_cohort(cohort)
  return cohort


def run(config, workdir: str):
  folder = config.output or os.path.join(workdir, "cohort")
  spec = SyntheticSpec(n_ms=config.n_ms, n_non_ms=config.n_non_ms, n_test=config.n_test,
                                 shape=tuple(config.shape), spacing_mm=config.spacing_mm,
                                 seed=config.seed)
  cohort = write_synthetic_cohort(folder, spec, log=logging.info)
  print(f"wrote a synthetic cohort of {len(cohort.exams)} exams to {folder} "
        f"(manifest {os.path.join(folder, 'cohort.json')})")
  return cohort
