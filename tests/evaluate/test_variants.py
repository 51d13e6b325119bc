"""Test exams as users have them: fewer sequences, 2D thick-slice acquisitions."""
import nibabel as nib
import numpy as np
import pytest

from msjax.data import manifest
from msjax.evaluate import variants


def _exam(tmp_path, affine=np.eye(4)):
  rng = np.random.default_rng(0)
  images = {}
  for m in ("FLAIR", "T1W", "T2W"):
    data = np.zeros((24, 24, 24), np.float32)
    data[2:-2, 2:-2, 2:-2] = 100 + rng.normal(0, 10, (20, 20, 20))  # fine texture, zero outside
    path = tmp_path / f"{m}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    images[m] = str(path)
  return manifest.Exam(exam_id="p1", patient_id="p1", ms=True, images=images,
                       consensus=str(tmp_path / "mask.nii.gz"))


def test_sequence_subsets_keep_only_what_they_name(tmp_path):
  exam = _exam(tmp_path)
  assert variants.make(exam, "all", str(tmp_path)) is exam
  flair = variants.make(exam, "FLAIR", str(tmp_path))
  assert set(flair.images) == {"FLAIR"} and flair.consensus == exam.consensus
  assert set(variants.make(exam, "FLAIR+T2W", str(tmp_path)).images) == {"FLAIR", "T2W"}
  with pytest.raises(ValueError, match="p1: variant FLAIR\\+PDW needs \\['PDW'\\]"):
    variants.make(exam, "FLAIR+PDW", str(tmp_path))


@pytest.mark.parametrize("variant", ["thick4mm", "slab4mm"])
@pytest.mark.parametrize("superior_axis", [2, 0])
def test_thick_slices_blur_along_the_axial_axis_only(tmp_path, superior_axis, variant):
  affine = np.eye(4)[[1, 2, 0, 3]] if superior_axis == 0 else np.eye(4)  # voxel axis 0 -> S
  exam = _exam(tmp_path, affine)
  thick = variants.make(exam, variant, str(tmp_path / "out"))
  assert set(thick.images) == set(exam.images)
  for m, path in thick.images.items():
    a, b = nib.load(exam.images[m]), nib.load(path)
    assert path != exam.images[m] and b.shape == a.shape and np.allclose(b.affine, a.affine)
    x, y = np.asarray(a.dataobj), np.asarray(b.dataobj)
    assert np.array_equal(y == 0, x == 0)  # outside stays outside
    inner = (slice(4, -4),) * 3
    rough = lambda v, axis: float(np.abs(np.diff(v[inner], axis=axis)).mean())  # noqa: E731
    along = rough(y, superior_axis)  # slices 4 voxels thick along the superior axis
    across = [rough(y, k) for k in range(3) if k != superior_axis]
    assert along < 0.3 * rough(x, superior_axis) and along < 0.5 * min(across)
    assert abs(y[inner].mean() - x[inner].mean()) < 2.0


def test_the_slab_variant_is_not_the_training_simulator(tmp_path):
  """slab<N>mm (rectangular profile, gap, cubic) must not reproduce thick<N>mm (the robust
  training's Gaussian profile, linear): a test variant made by the training augmentation is not
  evidence of robustness."""
  exam = _exam(tmp_path, np.eye(4))
  a = variants.make(exam, "thick4mm", str(tmp_path / "a"))
  b = variants.make(exam, "slab4mm", str(tmp_path / "b"))
  for m in exam.images:
    x = np.asarray(nib.load(exam.images[m]).dataobj, np.float32)
    ya, yb = (np.asarray(nib.load(v.images[m]).dataobj, np.float32) for v in (a, b))
    inner = (slice(4, -4),) * 3
    change = np.abs(ya - x)[inner].mean()
    assert np.abs(ya - yb)[inner].mean() > 0.25 * change


def test_slab_slices_average_a_slab_and_pass_through_its_centres():
  x = np.zeros((4, 4, 40), np.float32)
  x[..., :] = np.arange(1, 41, dtype=np.float32)  # a ramp along the slice axis: slabs average it
  y = variants.slab_slices(x, 2, thickness=4.0, gap=1.0)
  # slab 0 covers voxels 0..3 (centre 1.5), slab 1 voxels 5..8 (centre 6.5): a ramp stays a ramp
  np.testing.assert_allclose(y[0, 0, 2:35], np.arange(3, 36), atol=0.05)
  x[..., 20:22] = 100.0  # a thin bright line: a slab smears it over its thickness
  y = variants.slab_slices(x, 2, thickness=4.0, gap=1.0)
  assert y[0, 0, 20:22].max() < 70


def test_unknown_variants_are_refused():
  assert variants.parse("all, FLAIR+T1W,thick4mm") == ["all", "FLAIR+T1W", "thick4mm"]
  for bad in ("flair", "FLAIR+T3", "thick4"):
    with pytest.raises(ValueError, match="input variant"):
      variants.parse(bad)
