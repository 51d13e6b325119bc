"""skull_strip=atlas: the threshold head mask bounded by the MNI template's brain mask.

A synthetic head: the MNI152 template's brain, placed in a subject by a known affine, with a dark
CSF/skull gap, a bright scalp shell beyond it, and bright bridges (neck below the brainstem,
vessels across the gap) that keep Otsu + morphology (`threshold_brain_mask`) from separating scalp
and neck from the brain. The atlas mask must drop them and match the brain; without the template
step (the threshold mask alone) it does not.
"""
import dataclasses
import os

import nibabel as nib
import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK", reason="preprocessing extra not installed: "
                                               "pip install -e '.[preprocess]'")
from msjax.data import manifest as manifest_lib  # noqa: E402
from msjax.errors import InvalidInputError  # noqa: E402
from conftest import load_config  # noqa: E402
from msjax.preprocess import grid as grid_lib  # noqa: E402
from msjax.preprocess import run as run_lib  # noqa: E402
from msjax.preprocess import steps  # noqa: E402


def known_to_mni() -> sitk.AffineTransform:
  """MNI points -> subject points (LPS): turned 6° and 4°, 5 % larger, shifted."""
  a, b = np.deg2rad(6.0), np.deg2rad(-4.0)
  r = (np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
       @ np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]]))
  t = sitk.AffineTransform(3)
  t.SetMatrix([float(v) for v in (1.05 * r).ravel()])
  t.SetTranslation((4.0, -7.0, 10.0))
  return t


def synthetic_head():
  """(image, brain, scalp) on a 2 mm subject grid."""
  to_mni = known_to_mni()
  grid = sitk.Image([110, 130, 115], sitk.sitkFloat32)
  grid.SetSpacing((2.0, 2.0, 2.0))
  grid.SetOrigin((-110.0, -140.0, -110.0))
  _, template_mask = steps.mni_template()
  brain = steps.resample(sitk.Cast(template_mask, sitk.sitkFloat32), grid,
                         to_mni.GetInverse()) >= 0.5
  outside = grid_lib.to_numpy(sitk.SignedMaurerDistanceMap(
      brain, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
  brain = grid_lib.to_numpy(brain) > 0
  scalp = (outside > 8.0) & (outside < 22.0)
  idx = np.indices(brain.shape)
  centre = np.argwhere(brain).mean(0)
  # the neck: a bright column from below the brainstem down out of the image
  lowest = np.argwhere(brain)[:, 2].min()
  neck = (((idx[0] - centre[0]) ** 2 + (idx[1] - centre[1] + 8) ** 2 < 12 ** 2)
          & (idx[2] < lowest + 6) & ~brain)
  # vessels across the gap, over the vertex and at the sides
  bridges = np.zeros_like(brain)
  for axis, sign in ((2, 1), (0, 1), (0, -1), (1, 1)):
    line = np.ones_like(brain)
    for k in range(3):
      if k != axis:
        line &= np.abs(idx[k] - centre[k]) < 4
    line &= sign * (idx[axis] - centre[axis]) > 0
    bridges |= line & (outside > 0) & (outside < 22.0)
  rng = np.random.default_rng(0)
  image = np.full(brain.shape, 8.0, np.float32)  # CSF, skull, air
  image[brain] = 100.0 + 10 * rng.standard_normal(brain.sum())
  image[scalp | neck | bridges] = 140.0
  return grid_lib.from_numpy(image, grid), brain, scalp | neck, to_mni


def dice(a, b):
  return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_atlas_mask_drops_scalp_and_neck_that_the_threshold_mask_keeps():
  image, brain, scalp, to_mni = synthetic_head()
  head = grid_lib.to_numpy(steps.threshold_brain_mask(image)) > 0
  # the case the atlas step is for: the threshold mask alone keeps scalp and neck
  assert (head & scalp).sum() > 0.5 * scalp.sum()
  assert dice(head, brain) < 0.8
  atlas = steps.atlas_brain_mask(image, to_mni)
  atlas = grid_lib.to_numpy(atlas) > 0
  assert dice(atlas, brain) > 0.97, dice(atlas, brain)
  assert (atlas & scalp).sum() < 0.01 * scalp.sum()


def test_atlas_mask_reaches_below_a_t1_that_stops_short_when_flair_fills_in():
  """A T1 whose field of view stops above FLAIR's (its lowest 25 slices 0 after co-registration,
  as on Lesjak patient01 study 1): with FLAIR given as `fill`, the mask carries the brain on
  through those slices as FLAIR sees it; without, it ends flat at the T1's last slice."""
  flair, brain, scalp, to_mni = synthetic_head()
  arr = grid_lib.to_numpy(flair).copy()
  cut = np.argwhere(brain)[:, 2].min() + 25
  arr[:, :, :cut] = 0.0
  t1 = grid_lib.from_numpy(arr, flair)
  below = brain.copy()
  below[:, :, cut:] = False
  assert below.sum() > 2000  # enough brain below the cut to tell
  alone = grid_lib.to_numpy(steps.atlas_brain_mask(t1, to_mni)) > 0
  filled = grid_lib.to_numpy(steps.atlas_brain_mask(t1, to_mni, fill=flair)) > 0
  assert (alone & below).sum() < 0.05 * below.sum()
  assert (filled & below).sum() > 0.9 * below.sum(), (filled & below).sum() / below.sum()
  assert dice(filled, brain) > 0.97, dice(filled, brain)
  assert (filled & scalp).sum() < 0.01 * scalp.sum()
  # where the T1 has data the mask is the T1's: FLAIR stands in only below the cut
  assert np.array_equal(filled[:, :, cut + 5:], alone[:, :, cut + 5:])


def _template_head():
  """The synthetic head with the MNI template's own intensities inside its brain (at a known
  affine from MNI), scalp, neck and bridges kept."""
  image, brain, scalp, to_mni = synthetic_head()
  template, _ = steps.mni_template()
  inside = grid_lib.to_numpy(steps.resample(template, image, to_mni.GetInverse()))
  arr = grid_lib.to_numpy(image)
  arr[brain] = 100.0 * inside[brain] / inside[brain].max() + 20.0
  return grid_lib.from_numpy(arr, image), brain, scalp, to_mni


def test_preprocess_exam_with_atlas_mask(tmp_path):
  """Through `preprocess_exam`, with the real registration (no stand-in): the threshold-masked
  head registered to MNI, the template's mask brought back; the brain mask on the model grid is
  the head's brain (put there by a known affine), and to_mni.tfm maps points within 2 mm of it."""
  image, brain, _, to_mni = _template_head()
  flair = str(tmp_path / "FLAIR.nii.gz")
  sitk.WriteImage(image, flair)
  exam = manifest_lib.Exam(exam_id="head", patient_id="head", ms=True, images={"FLAIR": flair})
  record = run_lib.preprocess_exam(exam, str(tmp_path / "out"),
                                   run_lib.Options(n4=False, skull_strip="atlas", qc=False))
  assert set(record["times_s"]) >= {"skull_strip", "mni_registration", "atlas_mask", "mni_refine"}
  written = np.asarray(nib.load(record["brain_mask"]).dataobj) > 0
  truth = grid_lib.to_numpy(steps.resample(
      sitk.Cast(grid_lib.from_numpy(brain.astype(np.float32), image), sitk.sitkFloat32),
      grid_lib.reference_image(), to_mni)) >= 0.5
  assert dice(written, truth) > 0.9, dice(written, truth)
  stored = sitk.ReadTransform(os.path.join(os.path.dirname(record["brain_mask"]), "to_mni.tfm"))
  for point in ((10.0, 20.0, 30.0), (-30.0, -40.0, 10.0), (0.0, 0.0, -20.0)):
    assert np.linalg.norm(np.subtract(stored.TransformPoint(point),
                                      to_mni.TransformPoint(point))) < 2.0
  assert record["mni_refine"]["kept"] == "brain" and record["mni_refine"]["moved_mm"] < 2.0


def test_a_brain_registration_that_runs_off_leaves_the_heads_in_place(tmp_path, monkeypatch):
  """The atlas path's second registration (the brain, from the head's affine) is a correction of
  a few mm: one that moves the head's further than ATLAS_REFINE_MAX_MM is taken for a failure, the
  head's registration is kept and the record says so."""
  image, _, _, to_mni = _template_head()
  flair = str(tmp_path / "FLAIR.nii.gz")
  sitk.WriteImage(image, flair)
  registered = steps.register_to_mni

  def runs_off(moving, start=None):
    if start is None:
      return registered(moving)
    off = sitk.AffineTransform(start)
    off.SetTranslation(tuple(np.add(start.GetTranslation(), (12.0, 0.0, 0.0))))
    return off
  monkeypatch.setattr(steps, "register_to_mni", runs_off)
  exam = manifest_lib.Exam(exam_id="head", patient_id="head", ms=True, images={"FLAIR": flair})
  record = run_lib.preprocess_exam(exam, str(tmp_path / "out"),
                                   run_lib.Options(n4=False, skull_strip="atlas", qc=False))
  assert record["mni_refine"]["kept"] == "head"
  assert record["mni_refine"]["moved_mm"] == pytest.approx(12.0, abs=0.5)
  stored = sitk.ReadTransform(os.path.join(os.path.dirname(record["brain_mask"]), "to_mni.tfm"))
  assert steps.mean_distance_mm(stored, to_mni) < 2.0  # the head's, near the truth


def test_head_registration_recovers_the_known_affine_despite_the_scalp():
  """register_head_to_mni on the synthetic head with the template's own intensities inside the
  brain, through the head mask as `preprocess_exam` gives it (scalp, neck and bridges kept): the
  MNI -> subject map it finds lands within 2 mm of the known one over the template's brain."""
  image, _, _, to_mni = _template_head()
  head = steps.threshold_brain_mask(image, erode_mm=steps.ATLAS_HEAD_ERODE_MM)
  found = steps.register_head_to_mni(sitk.Mask(image, head))
  error = steps.distances_mm(found, to_mni)
  assert error.mean() < 2.0 and error.max() < 4.0, (error.mean(), error.max())


def test_brain_registration_from_the_head_affine_lands_on_the_known_one():
  """The atlas path registers the brain again from the head's affine (`register_to_mni(...,
  start=)`, the affine stage alone): from a start 3-4 mm off, the brain's map lands within 1 mm
  of the known one over the template's brain."""
  image, brain, _, to_mni = _template_head()
  inside = sitk.Cast(grid_lib.from_numpy(brain.astype(np.float32), image) > 0.5, sitk.sitkUInt8)
  start = sitk.AffineTransform(to_mni)
  start.SetTranslation(tuple(np.add(to_mni.GetTranslation(), (3.0, -2.0, 2.0))))
  found = steps.register_to_mni(sitk.Mask(image, inside), start=start)
  assert steps.mean_distance_mm(start, to_mni) > 3.0  # where it starts from is off
  assert steps.mean_distance_mm(found, to_mni) < 1.0, steps.mean_distance_mm(found, to_mni)


@pytest.mark.parametrize("bad", [{"skull_strip": "bet"}, {"skull_strip": "atlas", "mni": False}])
def test_unknown_or_impossible_skull_strip_refused(bad):
  with pytest.raises(ValueError, match="skull_strip"):
    run_lib.Options(**bad)


@pytest.mark.parametrize("spacing, thick_axis", [((0.7, 0.7, 4.0), 2), ((3.0, 0.9, 0.9), 0),
                                                 ((1.0, 1.0, 1.0), None), ((2.0, 2.0, 2.0), None),
                                                 ((1.0, 1.0, 1.2), None)])
def test_atlas_mask_leaves_out_the_end_slices_of_a_2d_stack_only(spacing, thick_axis):
  """The first and last acquired slice of a 2D stack (inflow-bright on FLAIR) are out of the
  atlas mask; a 3D acquisition, isotropic or nearly, keeps every slice."""
  mask = sitk.GetImageFromArray(np.ones((6, 7, 8), np.uint8))  # image size (8, 7, 6)
  mask.SetSpacing(spacing)
  mask.SetOrigin((3.0, -2.0, 5.0))
  out = steps.without_end_slices(mask)
  a = sitk.GetArrayFromImage(out)  # numpy (z, y, x): image axis k is array axis 2 - k
  assert out.GetSpacing() == mask.GetSpacing() and out.GetOrigin() == mask.GetOrigin()
  if thick_axis is None:
    assert a.all()
    return
  kept = np.moveaxis(a, 2 - thick_axis, 0)
  assert not kept[0].any() and not kept[-1].any() and kept[1:-1].all()


@pytest.mark.parametrize("spacing, acquired, gone", [((0.7, 0.7, 3.0), (2.2, 2.2, 6.0), 2),
                                                     ((1.0, 1.0, 1.0), (0.7, 0.7, 4.0), 4),
                                                     ((0.7, 0.7, 4.0), (0.7, 0.7, 4.0), 1),
                                                     ((1.0, 1.0, 1.0), (1.0, 1.0, 1.2), 0)])
def test_end_slices_are_the_acquired_ones_on_a_finer_working_grid(spacing, acquired, gone):
  """On FLAIR's frame sampled finer (`run.working_grid`), the stack is judged by the acquired
  voxels, and the first and last acquired slice take as many of the mask's slices as they span."""
  mask = sitk.GetImageFromArray(np.ones((12, 7, 8), np.uint8))  # image size (8, 7, 12)
  mask.SetSpacing(spacing)
  a = sitk.GetArrayFromImage(steps.without_end_slices(mask, acquired=acquired))
  per_slice = a.reshape(12, -1).all(axis=1)  # image axis 2 is array axis 0
  assert list(per_slice) == [False] * gone + [True] * (12 - 2 * gone) + [False] * gone


def test_other_msjax_code_or_options_make_an_exam_again(tmp_path, monkeypatch):
  """The reuse key of a preprocessed exam (`made_from`) moves with the brain extraction asked
  for, and with msjax's code (msjax.code_version, its source's digest): an exam made by code
  that has since changed (the atlas path's, the working grid's) is made again."""
  flair, t1 = tmp_path / "FLAIR.nii.gz", tmp_path / "T1W.nii.gz"
  flair.write_bytes(b"not read as an image here")
  t1.write_bytes(b"nor this")  # with a T1W: ROBEX's exam (run.for_exam)
  exam = manifest_lib.Exam(exam_id="e", patient_id="p", ms=True,
                           images={"FLAIR": str(flair), "T1W": str(t1)})
  atlas, robex = run_lib.Options(skull_strip="atlas"), run_lib.Options(skull_strip="robex")
  before = (run_lib.made_from(exam, atlas, None), run_lib.made_from(exam, robex, None))
  assert before[0] != before[1] and run_lib.made_from(exam, robex, None) == before[1]
  # other code under the same version number (a checkout that moved on): every exam made again
  import msjax
  assert msjax.code_version().startswith(msjax.__version__ + "+")
  monkeypatch.setattr(msjax, "_CODE_VERSION", [msjax.__version__ + "+0123456789ab"])
  assert run_lib.made_from(exam, atlas, None) != before[0]
  assert run_lib.made_from(exam, robex, None) != before[1]


def test_a_raw_exam_whose_file_is_a_broken_link_is_refused_naming_it(tmp_path):
  """A DataLad dataset not fetched holds git-annex links to absent content: segment's raw path
  (preprocess_one, its reuse key first) names the file and how to fetch it, not an OSError."""
  flair = tmp_path / "FLAIR.nii.gz"
  os.symlink("../.git/annex/objects/Xk/9Q/MD5E-s1--ab.nii.gz/MD5E-s1--ab.nii.gz", flair)
  exam = manifest_lib.Exam(exam_id="e", patient_id="p", ms=True, images={"FLAIR": str(flair)})
  with pytest.raises(InvalidInputError, match=f"{flair}: a git-annex link .* `datalad get`"):
    run_lib.preprocess_one(exam, str(tmp_path / "out"), run_lib.Options(), None)


def test_a_raw_exam_s_label_mask_and_a_nifti2_file_reach_preprocessing_right(tmp_path):
  """A BIDS dseg mask (`file::value`) is hashed from its file, each label apart (it was opened
  as a file named with the label); a NIfTI-2 image, which nibabel reads and ITK does not, is
  refused by preprocessing naming the file, before ITK sees it."""
  flair, dseg = tmp_path / "FLAIR.nii.gz", tmp_path / "x_dseg.nii.gz"
  nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(flair))
  nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(dseg))
  exam = lambda mask: manifest_lib.Exam(exam_id="e", patient_id="p", ms=True,  # noqa: E731
                                        images={"FLAIR": str(flair)}, consensus=mask)
  keys = {run_lib.made_from(exam(f"{dseg}::{v}"), run_lib.Options(), None) for v in (1, 2)}
  assert len(keys) == 2
  n2 = tmp_path / "n2" / "FLAIR.nii.gz"
  n2.parent.mkdir()
  nib.save(nib.Nifti2Image(np.random.default_rng(0).random((16, 16, 16), np.float32),
                           np.diag([2.0, 2.0, 2.0, 1.0])), str(n2))
  two = manifest_lib.Exam(exam_id="n2", patient_id="p", ms=True, images={"FLAIR": str(n2)})
  with pytest.raises(InvalidInputError, match=f"{n2}: a NIfTI-2 file"):
    run_lib.preprocess_exam(two, str(tmp_path / "out"), run_lib.Options(n4=False, qc=False))


def test_a_flair_only_exam_takes_the_atlas_path_not_robex(tmp_path, monkeypatch):
  """ROBEX is a T1-weighted tool (on a real FLAIR it kept the skull: run.for_exam's docstring):
  an exam without a T1W, under the default skull_strip='robex', is brain-extracted by the atlas
  path; the record says which, the mask is the head's brain, and its reuse key is the atlas
  path's (an exam made by ROBEX before is made again)."""
  def no_robex(_):
    raise AssertionError("ROBEX ran on a FLAIR")
  monkeypatch.setattr(steps, "robex_mask", no_robex)
  image, brain, _, to_mni = _template_head()
  flair = str(tmp_path / "FLAIR.nii.gz")
  sitk.WriteImage(image, flair)
  exam = manifest_lib.Exam(exam_id="head", patient_id="head", ms=True, images={"FLAIR": flair})
  robex = run_lib.Options(n4=False, qc=False)
  assert robex.skull_strip == "robex"
  record = run_lib.preprocess_exam(exam, str(tmp_path / "out"), robex)
  assert record["skull_strip"] == "atlas" and "atlas_mask" in record["times_s"]
  written = np.asarray(nib.load(record["brain_mask"]).dataobj) > 0
  truth = grid_lib.to_numpy(steps.resample(
      sitk.Cast(grid_lib.from_numpy(brain.astype(np.float32), image), sitk.sitkFloat32),
      grid_lib.reference_image(), to_mni)) >= 0.5
  assert dice(written, truth) > 0.9, dice(written, truth)
  atlas = dataclasses.replace(robex, skull_strip="atlas")
  assert run_lib.made_from(exam, robex, None) == run_lib.made_from(exam, atlas, None)
  # segment's report page and row name the exam's own brain extraction, not the run's robex
  made = manifest_lib.preprocessing_record(run_lib.exam_of(record))
  assert (made["skull_strip"], made["n4_mm"]) == ("atlas", None)
  from msjax import segment
  config = load_config("segment")
  assert config.preprocess.skull_strip == "robex"
  bundle = {"preprocessing": {}, "path": "model", "threshold": 0.5}
  options = segment.inference_options(config, bundle)
  assert "brain extraction atlas, no N4" in segment.made_with(config, bundle, options, made)
  assert "brain extraction robex, N4 fit at" in segment.made_with(config, bundle, options)


def test_only_an_exam_without_t1w_or_its_own_mask_leaves_robex():
  robex = run_lib.Options()
  flair_t1 = manifest_lib.Exam(exam_id="a", patient_id="a", ms=True,
                               images={"FLAIR": "f.nii.gz", "T1W": "t1.nii.gz"})
  flair_t2 = manifest_lib.Exam(exam_id="b", patient_id="b", ms=True,
                               images={"FLAIR": "f.nii.gz", "T2W": "t2.nii.gz"})
  masked = dataclasses.replace(flair_t2, brain_mask="brain.nii.gz")
  assert run_lib.for_exam(flair_t1, robex) is robex
  assert run_lib.for_exam(masked, robex) is robex
  assert run_lib.for_exam(flair_t2, robex).skull_strip == "atlas"
  no_mni = run_lib.Options(mni=False)  # the atlas path needs the MNI registration
  assert run_lib.for_exam(flair_t2, no_mni) is no_mni
  threshold = run_lib.Options(skull_strip="threshold")  # asked for by name: kept
  assert run_lib.for_exam(flair_t2, threshold) is threshold
