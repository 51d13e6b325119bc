"""Acquisition augmentation: a training patch made to look like another scanner's exam.

Clinical MS exams are often 2D multi-slice (3-6 mm slices, sharp in-plane), carry a residual
bias field after N4, and are noisier than research 3D scans. Each channel of a patch, on its own
(sequences are acquired separately), may get, in the order the scanner produces them:
  - a smooth multiplicative bias field (SynthSeg, Billot et al. 2023: exp of an upsampled coarse
    Gaussian grid, log-std up to BIAS_STD);
  - thick slices along a random axis (SynthSeg/SynthSR's resolution randomisation): a Gaussian
    slice profile of FWHM = slice thickness, one sample every slice spacing (the thickness plus
    the gap a clinical protocol leaves between slices: SynthSeg draws the thickness no larger
    than the spacing) with a random phase, Gaussian noise added to those samples, then linear
    interpolation back to the model grid;
  - or, when not thick-sliced, Gaussian noise on the grid (nnU-Net: variance U(0, 0.1)).
A clinical 2D exam acquires every sequence that way along one axis: `thick_exam` gives a whole
patch that acquisition (one axis, thickness, gap and slice positions for all its sequences, each
its own noise), which the per-channel draws almost never make (0.4 per channel, a random axis each:
all four Lesjak sequences thick along one axis in about 1 patch of 1,000).
Images are z-scores in the brain and 0 outside it or where a sequence is missing: zero voxels
stay zero (the mask is applied after resampling, as the preprocessing does), and the blur is a
normalised convolution over tissue voxels, so the brain's edge does not darken. Masks are never
touched: the label is the true lesion, which is what the network must find in the degraded scan.

Each operation is a P×P matrix applied along one axis (cheap in grain workers: ~1 ms a channel
at 32³).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from msjax import errors

BIAS_STD = 0.3        # log-field std drawn in U(0, BIAS_STD) (SynthSeg: 0.5, before N4)
BIAS_OFFSET = 3.0     # z-scores -> positive intensities: z + mean/std of the raw brain (Lesjak
                      # FLAIR 3.9, T1W 2.9, T1WKS 3.3, T2W 2.4 measured in lesjak_mni)
BIAS_SPACING = 1.0    # control-point spacing, in patches (32 voxels = 48 mm on the 1.5 mm grid:
                      # SynthSeg's ~45 mm at 1 mm); the patch sits at a random offset in the grid
NOISE_VARIANCE = 0.1  # noise variance drawn in U(0, NOISE_VARIANCE) (nnU-Net's GaussianNoise)


@dataclasses.dataclass(frozen=True)
class Spec:
  thick_slices: float = 0.0               # per channel: probability of 2D thick-slice simulation
  slice_mm: tuple[float, float] = (2.0, 6.0)  # its slice thickness, uniform (mm)
  # the gap between slices as a share of their thickness, uniform (clinical protocols: 0-30 %);
  # (0, 0) draws nothing: the spacing is the thickness
  slice_gap: tuple[float, float] = (0.0, 0.0)
  thick_exam: float = 0.0                 # per patch: every sequence as one 2D protocol
  bias_field: float = 0.0                 # per channel: probability of a bias field
  noise: float = 0.0                      # per channel: probability of Gaussian noise

  def __post_init__(self):
    # the config's data.<field>: InvalidInputError, so main says it in one line, no traceback
    for name in ("thick_slices", "thick_exam", "bias_field", "noise"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise errors.InvalidInputError(
            f"data.{name} = {getattr(self, name)}: a probability, 0 <= p <= 1")
    if not 0.0 < self.slice_mm[0] <= self.slice_mm[1]:
      raise errors.InvalidInputError(
          f"data.slice_mm {self.slice_mm}: a slice thickness in mm, 0 < low <= high")
    lo, hi = self.slice_gap
    if not 0.0 <= lo <= hi:
      raise errors.InvalidInputError(
          f"data.slice_gap {self.slice_gap}: a share of the slice thickness, 0 <= low <= high "
          "(a negative gap would overlap the slices)")

  @property
  def on(self) -> bool:
    return (self.thick_slices > 0 or self.thick_exam > 0 or self.bias_field > 0
            or self.noise > 0)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
  """(n, n): row i = the weights of a Gaussian of `sigma` voxels centred on i (renormalised at
  the edges)."""
  i = np.arange(n, dtype=np.float64)
  if sigma <= 0:
    return np.eye(n)
  w = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  w[w < 1e-6] = 0.0  # no float32 denormals (they slow the products a hundredfold)
  return w / w.sum(axis=1, keepdims=True)


def linear_matrix(positions: np.ndarray, n: int) -> np.ndarray:
  """(len(positions), n): linear interpolation of an n-sample signal at real `positions`
  (clamped to [0, n-1])."""
  t = np.clip(np.asarray(positions, np.float64), 0, n - 1)
  lo = np.minimum(np.floor(t).astype(int), n - 2) if n > 1 else np.zeros(len(t), int)
  f = t - lo
  m = np.zeros((len(t), n))
  rows = np.arange(len(t))
  m[rows, lo] += 1 - f
  if n > 1:
    m[rows, lo + 1] += f
  return m


def slice_matrices(n: int, thickness: float, phase: float,
                   spacing: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The thick-slice acquisition along an axis of n voxels, `thickness` and `spacing` (centre to
  centre, the thickness when None) in voxels, as two matrices: `down` (m, n) blurs with the slice
  profile (Gaussian, FWHM = thickness) and samples slice centres phase + j·spacing (j from -1, so
  every voxel lies between two slices), `up` (n, m) interpolates the slices linearly back onto
  the voxels."""
  spacing = thickness if spacing is None else spacing
  centres = phase + spacing * np.arange(-1, int(np.ceil((n - 1 - phase) / spacing)) + 1)
  down = linear_matrix(centres, n) @ gaussian_matrix(n, thickness / 2.3548)
  # voxel i lies between slices floor((i - c0)/spacing) and the next one
  up = np.zeros((n, len(centres)))
  u = (np.arange(n) - centres[0]) / spacing
  j = np.clip(np.floor(u).astype(int), 0, len(centres) - 2)
  f = np.clip(u - j, 0.0, 1.0)
  up[np.arange(n), j] = 1 - f
  up[np.arange(n), j + 1] += f
  return down, up


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a @ b without BLAS: numpy's einsum loop, single-threaded. OpenBLAS would spread these
  small products over threads, 10-30x slower on the busy cores of a training job."""
  return np.einsum("mn,nk->mk", a, b)


def along(m: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
  """m (k, n) applied along `axis` of x (its length n there)."""
  xt = np.ascontiguousarray(np.moveaxis(x, axis, 0))
  out = mm(m, xt.reshape(xt.shape[0], -1)).reshape((len(m),) + xt.shape[1:])
  return np.moveaxis(out, 0, axis)


def thick_slices(x: np.ndarray, axis: int, thickness: float, phase: float = 0.0,
                 noise_std: float = 0.0, rng: np.random.Generator | None = None,
                 spacing: float | None = None) -> np.ndarray:
  """One channel (3D, z-scores, 0 outside the brain) as a 2D multi-slice acquisition of slices
  `thickness` voxels thick, `spacing` voxels apart (the thickness when None), along `axis`,
  resampled back to its grid; zeros stay zeros. Also how to degrade a whole test volume (e.g.
  thickness = 4 mm / 1.5 mm)."""
  spacing = thickness if spacing is None else spacing
  if max(thickness, spacing) <= 1.0 or not x.any():  # one sample a voxel: as it is
    return x.copy()
  n = x.shape[axis]
  # the acquisition axis first, the rest flattened: four small matrix products
  xt = np.ascontiguousarray(np.moveaxis(x, axis, 0)).reshape(n, -1)
  tissue = (xt != 0).astype(np.float32)
  down, up = (m.astype(np.float32) for m in slice_matrices(n, thickness, phase, spacing))
  low, weight = mm(down, xt), mm(down, tissue)
  has = weight > 1e-3
  low = np.where(has, low / np.maximum(weight, 1e-3), 0.0).astype(np.float32)
  if noise_std > 0:
    low += rng.normal(0.0, noise_std, low.shape).astype(np.float32)
  # the slices back on the grid, normalised over slices that saw tissue
  has = has.astype(np.float32)
  out = mm(up, low * has) / np.maximum(mm(up, has), 1e-6)
  out = np.where(tissue > 0, out, 0.0).astype(x.dtype)
  return np.moveaxis(out.reshape((n,) + tuple(np.delete(x.shape, axis))), 0, axis).copy()


def bias_field(shape, rng: np.random.Generator, std: float) -> np.ndarray:
  """A smooth positive field over a patch: exp of a trilinearly interpolated 3³ Gaussian grid of
  control points BIAS_SPACING patches apart, the patch at a random offset inside it."""
  grid = rng.normal(0.0, std, (3, 3, 3))
  weights = []
  for n in shape:
    pos = rng.uniform(0, 2 - 1 / BIAS_SPACING) + np.arange(n) / (n * BIAS_SPACING)
    weights.append(linear_matrix(pos, 3))
  field = grid
  for axis, w in enumerate(weights):  # separable: three small matrix products
    field = along(w, field, axis)
  return np.exp(field)


def draw_slices(rng: np.random.Generator, spec: Spec,
                voxel_mm) -> tuple[int, float, float, float]:
  """One 2D acquisition: (axis, thickness, phase, slice spacing), in voxels of `voxel_mm` mm."""
  axis = int(rng.integers(3))
  thickness = rng.uniform(*spec.slice_mm) / voxel_mm[axis]
  step = thickness
  if spec.slice_gap[1] > 0:
    step = thickness * (1.0 + rng.uniform(*spec.slice_gap))
  return axis, thickness, rng.uniform(0, step), step


def augment(image: np.ndarray, rng: np.random.Generator, spec: Spec,
            spacing=(1.5, 1.5, 1.5)) -> np.ndarray:
  """A (P, P, P, C) patch after the acquisition augmentation of `spec`, each present channel on
  its own (or, with probability spec.thick_exam, every one thick-sliced by the same 2D
  protocol); `spacing` = the patch's voxel size (mm) per axis. Missing (all-zero) channels stay
  zero; the mask is not an argument: it never changes."""
  out = np.moveaxis(image, -1, 0).copy()  # channels first: each channel contiguous
  exam_slices = None
  if spec.thick_exam > 0 and rng.random() < spec.thick_exam:
    exam_slices = draw_slices(rng, spec, spacing)
  for c in range(len(out)):
    x = out[c]
    tissue = x != 0
    if not tissue.any():
      continue
    if spec.bias_field > 0 and rng.random() < spec.bias_field:
      b = bias_field(x.shape, rng, rng.uniform(0, BIAS_STD))
      x = np.where(tissue, (x + BIAS_OFFSET) * b - BIAS_OFFSET, 0.0).astype(np.float32)
    noise_std = 0.0
    if spec.noise > 0 and rng.random() < spec.noise:
      noise_std = float(np.sqrt(rng.uniform(0, NOISE_VARIANCE)))
    slices = exam_slices
    if slices is None and spec.thick_slices > 0 and rng.random() < spec.thick_slices:
      slices = draw_slices(rng, spec, spacing)
    if slices is not None:
      axis, thickness, phase, step = slices
      x = thick_slices(x, axis, thickness, phase, noise_std, rng, spacing=step)
    elif noise_std > 0:
      x = np.where(tissue, x + rng.normal(0.0, noise_std, x.shape), 0.0)
    out[c] = x
  return np.ascontiguousarray(np.moveaxis(out, 0, -1))
