"""Reading and validating NIfTI files, reorientation, resampling, atomic writes (msjax/data/nifti.py)."""
import os

import nibabel as nib
import numpy as np
import pytest

from msjax.data import nifti
from nifti_files import brainlike, expect, save


def _save_with_sform(path, srows):
  h = nib.Nifti1Header()
  h.set_data_shape((8, 8, 8))
  h.set_data_dtype("f4")
  h["pixdim"][1:4] = 1
  h["qform_code"], h["sform_code"] = 0, 1
  h["srow_x"], h["srow_y"], h["srow_z"] = srows
  nib.save(nib.Nifti1Image(brainlike((8, 8, 8)), None, h), str(path))
  return path


def test_unreadable_file_names_file(tmp_path):
  p = tmp_path / "junk.nii.gz"
  p.write_bytes(b"this is not a nifti file")
  msg = expect("cannot be read", nifti.read_nifti, p)
  assert str(p) in msg



def test_a_file_whose_name_and_compression_disagree_says_which(tmp_path):
  """A .nii.gz stored uncompressed and a .nii gzip-compressed (a download or copy that changed
  one and not the other) are refused saying what their bytes are and how to name them; a file
  that is no NIfTI at all gets no such hint."""
  import gzip
  good = save(tmp_path / "good.nii.gz", brainlike((12, 12, 12)))
  plain = tmp_path / "plain.nii.gz"
  plain.write_bytes(gzip.decompress(open(good, "rb").read()))
  packed = tmp_path / "packed.nii"
  packed.write_bytes(open(good, "rb").read())
  assert "an uncompressed NIfTI: name it .nii" in expect("cannot be read", nifti.read_nifti, plain)
  assert "a gzip-compressed NIfTI: name it .nii.gz" in expect("cannot be read", nifti.read_nifti,
                                                              packed)
  junk = tmp_path / "junk.nii.gz"
  junk.write_bytes(b"this is not a nifti file")
  assert "name it" not in expect("cannot be read", nifti.read_nifti, junk)
  cut = tmp_path / "cut.nii"  # a gzip stream cut inside the header: refused, not an EOFError
  cut.write_bytes(open(good, "rb").read()[:40])
  assert "name it" not in expect("cannot be read", nifti.read_nifti, cut)

def test_missing_file(tmp_path):
  expect("does not exist", nifti.read_nifti, tmp_path / "nope.nii.gz")


def test_stand_ins_for_an_image_say_what_they_are_and_how_to_get_the_image(tmp_path):
  """What a user's copy of a dataset holds in place of an image when its content was never
  fetched (a Git LFS pointer, a git-annex pointer file or a broken git-annex link of a DataLad
  dataset) or a download saved a web page: refused naming the file and what to do."""
  lfs = tmp_path / "lfs_FLAIR.nii.gz"
  lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 12345\n")
  assert "Git LFS pointer" in expect("cannot be read", nifti.read_nifti, lfs)
  pointer = tmp_path / "pointer_FLAIR.nii.gz"
  pointer.write_bytes(b"/annex/objects/MD5E-s12345--0123abcd.nii.gz\n")
  assert "git-annex pointer" in expect("cannot be read", nifti.read_nifti, pointer)
  link = tmp_path / "link_FLAIR.nii.gz"
  os.symlink("../.git/annex/objects/Xk/9Q/MD5E-s1--ab.nii.gz/MD5E-s1--ab.nii.gz", link)
  assert "datalad get" in expect("git-annex link", nifti.read_nifti, link)
  dangling = tmp_path / "dangling_FLAIR.nii.gz"
  os.symlink(tmp_path / "moved_away.nii.gz", dangling)
  assert "moved_away.nii.gz, which does not exist" in expect("symbolic link", nifti.read_nifti,
                                                             dangling)
  n2 = tmp_path / "nifti2_FLAIR.nii.gz"  # nibabel reads it, ITK (preprocessing) does not
  nib.save(nib.Nifti2Image(brainlike((12, 12, 12)), np.eye(4)), str(n2))
  assert nifti.read_nifti(n2).data.shape == (12, 12, 12)
  assert "save it as NIfTI-1" in nifti.itk_problem(str(n2))
  assert nifti.itk_problem(str(save(tmp_path / "one.nii", brainlike((12, 12, 12))))) is None
  page = tmp_path / "page_FLAIR.nii.gz"
  page.write_bytes(b"\n<!DOCTYPE html><html><head><title>Sign in</title></head></html>")
  assert "a web page" in expect("cannot be read", nifti.read_nifti, page)


def test_truncated_file(tmp_path):
  p = save(tmp_path / "full.nii.gz", brainlike((30, 30, 30)))
  raw = open(p, "rb").read()
  t = tmp_path / "trunc.nii.gz"
  t.write_bytes(raw[: len(raw) // 2])
  msg = expect("truncated|cannot be read", nifti.read_nifti, t)
  assert str(t) in msg


def test_a_multi_member_gzip_is_read(tmp_path):
  """gzip allows several members one after the other (pigz and some exporters write them);
  nibabel reads them, and so must msjax, though the trailer gives the last member's size."""
  import gzip
  p = save(tmp_path / "one.nii", brainlike((30, 30, 30)))
  raw = open(p, "rb").read()
  half = len(raw) // 2
  multi = tmp_path / "multi.nii.gz"
  multi.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
  v = nifti.read_nifti(multi)
  np.testing.assert_array_equal(v.data, nifti.read_nifti(p).data)
  # and a multi-member file cut short is still refused
  cut = tmp_path / "cut.nii.gz"
  data = multi.read_bytes()
  cut.write_bytes(data[: len(data) - len(gzip.compress(raw[half:])) // 2])
  expect("truncated|cannot be read", nifti.read_nifti, cut)


def test_not_3d(tmp_path):
  expect("expected a 3D volume", nifti.read_nifti, save(tmp_path / "a.nii", np.ones((8, 8)) + 1))
  expect("4D series", nifti.read_nifti, save(tmp_path / "b.nii", brainlike((8, 8, 8, 2))))


def test_singleton_dims_are_dropped(tmp_path):
  v = nifti.read_nifti(save(tmp_path / "a.nii", brainlike((8, 9, 10, 1))))
  assert v.data.shape == (8, 9, 10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
  d = brainlike()
  d[3, 4, 5] = bad
  expect("1 voxels are NaN, 1 of them inside the image" if np.isnan(bad) else "NaN or infinite",
         nifti.read_nifti,
         save(tmp_path / "a.nii", d))


def test_nan_in_the_background_around_the_head_is_no_data(tmp_path):
  """NaN on regions that reach the volume's faces (where a resliced image has no data, as SPM
  writes it) reads as 0; in a mask, or beside an infinite voxel, it is refused."""
  d = brainlike((12, 12, 12))
  d[:, :, :3] = np.nan   # below the field of view
  d[0, 0, 5:] = np.nan   # a corner column, its own region
  v = nifti.read_nifti(save(tmp_path / "a.nii", d))
  assert v.data[:, :, :3].max() == 0 and np.isfinite(v.data).all()
  np.testing.assert_array_equal(v.data[1:, 1:, 3:], brainlike((12, 12, 12))[1:, 1:, 3:])
  m = np.zeros((12, 12, 12))
  m[:, :, :3] = np.nan
  expect("NaN or infinite", nifti.read_nifti, save(tmp_path / "m.nii", m), kind="mask")
  d[5, 5, 0] = np.inf
  expect("NaN or infinite", nifti.read_nifti, save(tmp_path / "b.nii", d))


def test_complex_data(tmp_path):
  d = brainlike().astype(np.complex64)
  expect("complex or RGB", nifti.read_nifti, save(tmp_path / "a.nii", d))


def test_rgb_data(tmp_path):
  rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
  rgb["R"] = 5
  expect("complex or RGB", nifti.read_nifti, save(tmp_path / "a.nii", rgb))


def test_singular_affine(tmp_path):
  p = _save_with_sform(tmp_path / "a.nii", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
  expect("singular", nifti.read_nifti, p)


def test_sheared_affine_refused_and_oblique_one_read(tmp_path):
  """A shear ITK cannot hold (preprocessing would read the file elsewhere) is refused; an oblique
  but perpendicular grid, and a converter's rounding, are read."""
  p = _save_with_sform(tmp_path / "a.nii", [[1, 0.15, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
  expect(r"shears the voxel grid \(axes 8.53 degrees", nifti.read_nifti, p)
  c, s = np.cos(0.3), np.sin(0.3)
  p = _save_with_sform(tmp_path / "b.nii", [[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 3, 0]])
  assert nifti.read_nifti(p).data.shape == (8, 8, 8)
  p = _save_with_sform(tmp_path / "c.nii", [[1, 1e-5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
  assert nifti.read_nifti(p).data.shape == (8, 8, 8)


def test_non_finite_affine(tmp_path):
  p = _save_with_sform(tmp_path / "a.nii", [[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
  expect("not finite", nifti.read_nifti, p)


def test_zero_voxel_size(tmp_path):
  p = save(tmp_path / "a.nii", brainlike())
  raw = bytearray(open(p, "rb").read())
  raw[84:88] = np.float32(0.0).tobytes()  # pixdim[2] of the NIfTI-1 header: y voxel size
  open(p, "wb").write(bytes(raw))
  expect("voxel size", nifti.read_nifti, p)


def test_mask_values_other_than_01(tmp_path):
  m = np.zeros((10, 10, 10), np.uint8)
  m[2, 2, 2] = 2
  msg = expect("only 0 and 1", nifti.read_nifti, save(tmp_path / "m.nii", m), kind="mask")
  assert "2" in msg


def test_constant_and_all_zero_images(tmp_path):
  expect("constant", nifti.read_nifti, save(tmp_path / "c.nii", np.full((8, 8, 8), 3.0)))
  msg = expect("constant", nifti.read_nifti, save(tmp_path / "z.nii", np.zeros((8, 8, 8))))
  assert "empty" in msg


def test_reorientation_round_trip(tmp_path):
  data = brainlike((6, 7, 8))
  lps = np.diag([-2.0, -2.0, 3.0, 1.0])
  lps[:3, 3] = [10, 20, -5]
  p = save(tmp_path / "a.nii.gz", data, lps)
  v = nifti.read_nifti(p)
  assert nib.aff2axcodes(v.grid.affine) == ("R", "A", "S")
  assert v.grid.source_axcodes == ("L", "P", "S")
  # same world position for the same voxel value
  i, j, k = 1, 2, 3
  world = lps @ [i, j, k, 1]
  ci, cj, ck = np.round(np.linalg.inv(v.grid.affine) @ world)[:3].astype(int)
  assert v.data[ci, cj, ck] == data[i, j, k]
  out = nifti.write_in_source_space(v.data, v.grid, str(tmp_path / "back.nii.gz"))
  back = nib.load(out)
  np.testing.assert_array_equal(np.asarray(back.dataobj), data)
  np.testing.assert_allclose(back.affine, lps)


def test_resample_box_grid_and_round_trip():
  rng = np.random.default_rng(0)
  src = np.zeros((182, 218, 182), np.float32)
  src[80:100, 90:120, 70:95] = 1
  grid = nifti.Grid(affine=np.diag([1.0, 1, 1, 1]), shape=src.shape, source_affine=np.eye(4),
                    source_shape=src.shape, source_axcodes=("R", "A", "S"))
  small = nifti.resample_mask(src, (128, 128, 128))
  g = nifti.resampled_grid(grid, (128, 128, 128))
  np.testing.assert_allclose(g.spacing, (182 / 128, 218 / 128, 182 / 128))
  # the field of view is unchanged: outer voxel faces coincide
  np.testing.assert_allclose((g.affine @ [-0.5, -0.5, -0.5, 1])[:3], [-0.5, -0.5, -0.5])
  np.testing.assert_allclose((g.affine @ [127.5, 127.5, 127.5, 1])[:3], [181.5, 217.5, 181.5])
  back = nifti.resample_mask(small, src.shape)
  assert abs(int(back.sum()) - int(src.sum())) / src.sum() < 0.15
  del rng


def test_a_grid_phase_samples_where_its_grid_says_and_comes_back():
  """resample_box with an offset samples a linear image at the world points resampled_grid's
  affine (with that offset) gives its voxels; back_offset brings the volume back onto the source
  voxels. Trilinear interpolation is exact on a linear image, so away from the border (where
  coordinates are clipped) both hold to float precision."""
  shape, small, offset = (30, 36, 24), (16, 16, 16), (0.5, 0.0, 0.25)
  affine = np.array([[0, -1.0, 0, 90], [1.2, 0, 0, -40], [0, 0, 2.0, 7], [0, 0, 0, 1]])
  grid = nifti.Grid(affine=affine, shape=shape, source_affine=affine, source_shape=shape,
                    source_axcodes=("P", "R", "S"))
  ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  world = ijk @ affine[:3, :3].T + affine[:3, 3]
  weights = np.array([0.3, 0.7, 1.1])
  data = (world @ weights).astype(np.float32)
  moved = nifti.resample_box(data, small, offset=offset)
  g = nifti.resampled_grid(grid, small, offset)
  small_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in small], indexing="ij"), -1)
  expected = (small_ijk @ g.affine[:3, :3].T + g.affine[:3, 3]) @ weights
  inner = (slice(1, -1),) * 3
  np.testing.assert_allclose(moved[inner], expected[inner], atol=1e-3)
  # not the unmoved grid's values: the offset moves the samples (0.5 voxel = 0.9 world units)
  assert np.abs(nifti.resample_box(data, small)[inner] - expected[inner]).max() > 0.3
  back = nifti.resample_box(moved, shape, offset=nifti.back_offset(offset, small, shape))
  inner_native = (slice(3, -3),) * 3
  np.testing.assert_allclose(back[inner_native], data[inner_native], atol=1e-3)


def test_write_is_atomic_no_temp_left(tmp_path):
  nifti.write_nifti(np.ones((4, 4, 4)), np.eye(4), str(tmp_path / "x.nii.gz"))
  assert sorted(os.listdir(tmp_path)) == ["x.nii.gz"]
