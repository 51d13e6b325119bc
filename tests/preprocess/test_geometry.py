"""Geometry that a mirror, a flip or an axis swap cannot pass.

A synthetic head is drawn in MNI space with a bright marker in ONE hemisphere (left, anterior,
superior), placed in a subject by a known rigid transform and sampled onto raw grids of several
orientations. Each raw exam goes through the real preprocessing (MNI registration replaced by the
known transform), a prediction stand-in that marks the marker, and the real outputs. At every stage
the marker must be where the geometry says: on the model grid at its MNI position, in native space
on the painted voxels, in the lesion table at the painted centroid (native and MNI), and in the
overlay on the image's right (radiological view: the patient's left on the right).
"""
import csv
import os

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

sitk = pytest.importorskip("SimpleITK", reason="preprocessing extra not installed: "
                                               "pip install -e '.[preprocess]'")
from msjax import config_base, errors  # noqa: E402
from msjax.data import manifest as manifest_lib  # noqa: E402
from msjax.data import nifti  # noqa: E402
from msjax.data.manifest import MODALITIES  # noqa: E402
from msjax.infer import predict as predict_lib  # noqa: E402
from msjax.infer import sliding_window  # noqa: E402
from msjax.preprocess import grid as grid_lib  # noqa: E402
from msjax.preprocess import run as run_lib  # noqa: E402
from msjax.preprocess import steps  # noqa: E402

MARKER_MNI = np.array([-35.0, 20.0, 30.0])  # RAS mm: LEFT hemisphere, anterior, superior
MARKER_RADIUS = 10.0
BRAIN_CENTRE, BRAIN_RADII = np.array([0.0, -18.0, 12.0]), np.array([62.0, 82.0, 58.0])
# subject = R @ mni + t (RAS mm): the head is turned and shifted in the scanner
_a, _b = np.deg2rad(12.0), np.deg2rad(-7.0)
ROTATION = (np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]])
            @ np.array([[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]]))
SHIFT = np.array([6.0, -15.0, 22.0])


def mni_to_subject_itk() -> sitk.Transform:
  """The known registration, as ITK stores it: MNI points -> subject points, both in LPS."""
  flip = np.diag([-1.0, -1.0, 1.0])
  t = sitk.AffineTransform(3)
  t.SetMatrix([float(v) for v in (flip @ ROTATION @ flip).ravel()])
  t.SetTranslation([float(v) for v in flip @ SHIFT])
  return t


def _rotation(axis, degrees):
  a = np.deg2rad(degrees)
  c, s = np.cos(a), np.sin(a)
  i, j = [k for k in range(3) if k != axis]
  r = np.eye(3)
  r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
  return r


# voxel axes (columns: the world direction of +i, +j, +k in RAS) and voxel sizes (mm)
ORIENTATIONS = {
    "LPS": (np.diag([-1.0, -1.0, 1.0]), (2.0, 2.0, 2.0)),
    "RAS": (np.eye(3), (2.0, 2.0, 2.0)),
    "LAS": (np.diag([-1.0, 1.0, 1.0]), (2.0, 2.0, 2.0)),
    "PSR": (np.array([[0.0, 0, 1], [-1, 0, 0], [0, 1, 0]]), (2.0, 2.0, 2.0)),
    "oblique": (_rotation(0, 25) @ _rotation(2, -15) @ np.diag([-1.0, -1.0, 1.0]),
                (2.0, 2.2, 1.8)),
    "thick_slices": (np.diag([-1.0, -1.0, 1.0]), (0.7, 0.7, 4.0)),
}


# grids of other tests: a coarse 2D FLAIR and a finer T1W
OTHER_GRIDS = {"coarse": (np.diag([-1.0, -1.0, 1.0]), (2.2, 2.2, 6.0)),
               "fine": (np.diag([-1.0, -1.0, 1.0]), (1.2, 1.2, 1.2))}


def raw_affine(orientation: str):
  """The raw grid's affine and shape: voxel axes of the orientation, centred on the head, with a
  field of view that holds it."""
  axes, spacing = {**ORIENTATIONS, **OTHER_GRIDS}[orientation]
  m = axes * np.array(spacing)
  extent = np.abs(axes).T @ np.array([180.0, 200.0, 170.0])  # the head's box along each voxel axis
  shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing))
  affine = np.eye(4)
  affine[:3, :3] = m
  affine[:3, 3] = ROTATION @ BRAIN_CENTRE + SHIFT - m @ ((np.array(shape) - 1) / 2)
  return affine, shape


def _world(affine, shape):
  idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
  return (affine[:3, :3] @ idx + affine[:3, 3:]).T.reshape(shape + (3,))


def head(mni, modality: str):
  """The drawn head at MNI points (RAS mm, [..., 3]): the modality's intensities (0 outside the
  brain) and the marker."""
  brain = (((mni - BRAIN_CENTRE) / BRAIN_RADII) ** 2).sum(-1) < 1
  marker = ((mni - MARKER_MNI) ** 2).sum(-1) < MARKER_RADIUS ** 2
  texture = np.sin(mni[..., 0] / 6) * np.sin(mni[..., 1] / 7) * np.sin(mni[..., 2] / 5)
  tissue = 100 + 15 * texture if modality == "FLAIR" else 300 - 40 * texture
  image = np.where(marker, 400.0 if modality == "FLAIR" else 150.0, tissue)
  return np.where(brain, image, 0.0).astype(np.float32), marker


def draw_exam(folder, orientation: str, *, labelled: bool = False, t1_orientation: str = ""):
  """A raw exam of one orientation: FLAIR (and T1W on its own grid, with an identity co-registration
  file) with the marker painted; the marker's voxels and the FLAIR's affine."""
  os.makedirs(folder, exist_ok=True)
  out = {}
  for modality, orient in (("FLAIR", orientation), ("T1W", t1_orientation)):
    if not orient:
      continue
    affine, shape = raw_affine(orient)
    subject = _world(affine, shape)
    mni = (subject - SHIFT) @ ROTATION  # inverse of subject = R @ mni + t (R orthonormal)
    image, marker = head(mni, modality)
    nib.save(nib.Nifti1Image(image, affine), os.path.join(folder, f"{modality}.nii.gz"))
    if modality == "FLAIR":
      out.update(marker=marker, affine=affine, shape=shape)
      if labelled:
        nib.save(nib.Nifti1Image(marker.astype(np.uint8), affine),
                 os.path.join(folder, "consensus_gt.nii.gz"))
  if t1_orientation:
    sitk.WriteTransform(sitk.Transform(3, sitk.sitkIdentity),
                        os.path.join(folder, "T1W_intrastudy_to_FLAIR.txt"))
  return out


def raw_exam(folder, labelled=False, t1=False):
  images = {"FLAIR": os.path.join(folder, "FLAIR.nii.gz")}
  if t1:
    images["T1W"] = os.path.join(folder, "T1W.nii.gz")
  consensus = os.path.join(folder, "consensus_gt.nii.gz") if labelled else None
  return manifest_lib.Exam(exam_id="exam", patient_id="exam", ms=True, images=images,
                           consensus=consensus)


@pytest.fixture
def known_registration(monkeypatch):
  monkeypatch.setattr(steps, "register_to_mni", lambda brain_t1: mni_to_subject_itk())


def preprocess(exam, out_root, qc=False, grid=(128, 128, 128)):
  # from a job's preprocess block, as preprocess mode makes it (preprocess.grid included)
  options = run_lib.Options.from_config(config_base.preprocess(n4=False, skull_strip="none",
                                                               qc=qc, grid=grid))
  record = run_lib.preprocess_exam(exam, str(out_root), options)
  run_lib.standardise([record])
  return record


class MarkerPredictor:
  """Stands in for the network: lesion = FLAIR brighter than halfway between tissue and marker."""
  model_shape, patch, mirror = (128, 128, 128), 32, False

  def warm_up(self, options):
    return 0.0

  def predict_exam(self, arrays, sampler="sliding", overlap=0.5, n_random=150, seed=0):
    flair = arrays.images[..., MODALITIES.index("FLAIR")]
    inside = flair[arrays.brain > 0]
    level = 0.5 * (np.median(inside) + inside.max())
    probability = ((flair > level) & (arrays.brain > 0)).astype(np.float32)
    return sliding_window.Prediction(probability=probability,
                                     spread=np.zeros_like(probability),
                                     coverage=np.ones_like(probability)), 1


def world_centroid(mask, affine):
  return nib.affines.apply_affine(affine, np.argwhere(mask).mean(0))


def dice(a, b):
  return 2 * (a & b).sum() / (a.sum() + b.sum())


def overlay_marker_side(png: str) -> float:
  """Where the red outline sits across its panel: 0 = the image's left edge, 1 = its right."""
  rgb = matplotlib.image.imread(png)[..., :3]
  red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
  assert red.any(), f"{png}: no red outline"
  rows, cols = np.nonzero(red)
  col = float(np.median(cols))
  band = rgb[rows.min():rows.max() + 1]
  painted = (band < 0.9).any(-1).any(0)  # the panel's columns (the outline closes white inside it)
  runs = np.flatnonzero(np.diff(np.r_[0, painted.astype(np.int8), 0]))
  for start, stop in zip(runs[::2], runs[1::2]):
    if start <= col < stop:
      return (col - start) / (stop - start)
  raise AssertionError(f"{png}: the red outline is not inside a panel")


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_marker_stays_in_the_left_hemisphere(orientation, known_registration, tmp_path):
  raw = draw_exam(tmp_path / "raw", orientation)
  record = preprocess(raw_exam(str(tmp_path / "raw")), tmp_path / "cohort")

  # on the model grid, the marker is where the stored transform puts it: the MNI position
  written = nib.load(record["images"]["FLAIR"])
  data = np.asarray(written.dataobj)
  level = 0.5 * (np.median(data[data > 0]) + data.max())
  on_grid = world_centroid(data > level, written.affine)
  np.testing.assert_allclose(on_grid, MARKER_MNI, atol=1.8)
  stored = sitk.ReadTransform(record["transform"])
  native_point = np.array(stored.TransformPoint(tuple(on_grid * [-1, -1, 1]))) * [-1, -1, 1]
  np.testing.assert_allclose(native_point, world_centroid(raw["marker"], raw["affine"]), atol=2.0)
  brain = nib.load(record["brain_mask"])
  np.testing.assert_allclose(brain.affine, written.affine)
  assert np.asarray(brain.dataobj)[data > level].all()  # the brain mask is not mirrored either

  # the network's view, then back to the raw FLAIR's grid: on the painted voxels
  exam = run_lib.exam_of(record)
  row = predict_lib.predict_exam(MarkerPredictor(), exam, str(tmp_path / "out"))
  mask_img = nib.load(row["mask"])
  np.testing.assert_allclose(mask_img.affine, raw["affine"], atol=1e-4)
  mask = np.asarray(mask_img.dataobj) > 0
  assert dice(mask, raw["marker"]) >= 0.8, dice(mask, raw["marker"])

  # the lesion table: native centroid within one voxel, MNI centroid at the marker's MNI position
  (lesion,) = list(csv.DictReader(open(row["table"])))
  native = np.array([float(lesion[f"centroid_{a}_mm"]) for a in "xyz"])
  voxel = max(ORIENTATIONS[orientation][1])
  assert np.abs(native - world_centroid(raw["marker"], raw["affine"])).max() <= voxel
  mni_point = np.array([float(lesion[f"mni_{a}_mm"]) for a in "xyz"])
  np.testing.assert_allclose(mni_point, MARKER_MNI, atol=max(voxel, 1.8))

  # the overlay: radiological view, so the patient's left hemisphere is on the image's right
  assert overlay_marker_side(row["overlay"]) > 0.6


def test_an_exam_is_made_on_the_model_s_own_grid_and_its_mask_goes_back(known_registration,
                                                                        tmp_path):
  """Options.grid (segment sets the bundle's model grid): the exam is written on that resampling
  of the MNI box, the marker where MNI puts it, and a network of that grid masks the painted
  voxels of the raw FLAIR; the paper's 128³ is only the default."""
  from msjax.data import mni
  raw = draw_exam(tmp_path / "raw", "LPS")
  grid = (96, 112, 96)
  record = preprocess(raw_exam(str(tmp_path / "raw")), tmp_path / "cohort", grid=grid, qc=True)
  written = nib.load(record["images"]["FLAIR"])
  assert written.shape == grid
  np.testing.assert_allclose(written.affine, mni.box_affine(grid))
  assert mni.is_mni_grid(written.shape, written.affine)
  data = np.asarray(written.dataobj)
  level = 0.5 * (np.median(data[data > 0]) + data.max())
  np.testing.assert_allclose(world_centroid(data > level, written.affine), MARKER_MNI, atol=2.0)
  assert nib.load(record["brain_mask"]).shape == grid

  class FinerMarkerPredictor(MarkerPredictor):
    model_shape = grid

  row = predict_lib.predict_exam(FinerMarkerPredictor(), run_lib.exam_of(record),
                                 str(tmp_path / "out"))
  mask_img = nib.load(row["mask"])
  np.testing.assert_allclose(mask_img.affine, raw["affine"], atol=1e-4)
  assert dice(np.asarray(mask_img.dataobj) > 0, raw["marker"]) >= 0.8


def test_reference_mask_and_second_sequence_follow_the_image(known_registration, tmp_path):
  """A labelled raw exam (LPS FLAIR with its consensus mask, PSR T1W on its own grid): on the model
  grid the mask, the T1 marker and the FLAIR marker are one blob in the left hemisphere."""
  draw_exam(tmp_path / "raw", "LPS", labelled=True, t1_orientation="PSR")
  exam = raw_exam(str(tmp_path / "raw"), labelled=True, t1=True)
  record = preprocess(exam, tmp_path / "c", qc=True)
  assert "grid" not in record["coregistration"]  # 2 mm both: FLAIR's grid
  flair = nifti.read_nifti(record["images"]["FLAIR"])
  t1 = nifti.read_nifti(record["images"]["T1W"])
  consensus = nifti.read_nifti(record["consensus"], kind="mask")
  assert flair.grid.same_as(t1.grid) and flair.grid.same_as(consensus.grid)
  brain = flair.data > 0
  bright = flair.data > 0.5 * (np.median(flair.data[brain]) + flair.data.max())
  # the T1 marker is darker than any tissue (tissue 300 ± 40, marker 150)
  dark = brain & (t1.data < 0.5 * (np.percentile(t1.data[brain], 1) + t1.data[brain].min()))
  assert dice(bright, consensus.data > 0) > 0.85
  assert dice(dark, consensus.data > 0) > 0.7
  np.testing.assert_allclose(world_centroid(consensus.data > 0, consensus.grid.affine),
                             MARKER_MNI, atol=1.8)
  assert os.path.getsize(os.path.join(os.path.dirname(record["brain_mask"]), "qc.png")) > 5000


def test_a_coarse_flair_does_not_coarsen_a_finer_t1w(known_registration, tmp_path):
  """A 2.2 x 2.2 x 6 mm FLAIR over a 1.2 mm T1W: the sequences are co-registered onto FLAIR's frame
  sampled at 1.5 mm (`run.working_grid`: the T1W's size, no finer than about the model grid's), so
  the T1W reaches the model grid as acquired, not through 6 mm slices (which took a real T1W's
  brain mask into the scalp)."""
  draw_exam(tmp_path / "raw", "coarse", t1_orientation="fine")
  options = run_lib.Options.from_config(config_base.preprocess(n4=False, skull_strip="none"))
  exam = raw_exam(str(tmp_path / "raw"), t1=True)
  import SimpleITK as sitk  # a machine whose ITK default is another count than the options'
  machine = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
  sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(3)
  try:
    record = run_lib.preprocess_exam(exam, str(tmp_path / "c"), options)
  finally:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(machine)
  assert record["coregistration"]["grid"].startswith("FLAIR's frame at 1.5 x 1.5 x 1.5 mm")
  # ITK's thread count, which N4's and ROBEX's sums depend on, is the options' on any machine
  assert options.itk_threads == 2
  assert (record["itk_threads"], record["registration_threads"]) == (2, 1)
  t1 = nifti.read_nifti(record["images"]["T1W"])
  truth, _ = head(_world(t1.grid.affine, t1.data.shape), "T1W")
  inside = ndimage.binary_erosion(truth > 0, iterations=3)
  error = np.abs(t1.data[inside] - truth[inside])
  # on the working grid: mean error 0.39, 99th percentile 1.12 (tissue 300 ± 40); through FLAIR's
  # 6 mm slices 1.95 and 16.3 (the marker's edge smeared)
  assert error.mean() < 0.8 and np.percentile(error, 99) < 5.0, (error.mean(),
                                                                 np.percentile(error, 99))


def test_an_exam_stored_with_a_negative_offset_is_made_as_the_exam_itself(known_registration,
                                                                          tmp_path):
  """A FLAIR exported 3000 lower (negative intensities): shifted back so that its lowest is 0
  before N4 (`steps.nonnegative`), it is preprocessed as the exam itself, and the record says so."""
  draw_exam(tmp_path / "raw", "LPS")
  img = nib.load(tmp_path / "raw" / "FLAIR.nii.gz")
  os.makedirs(tmp_path / "low")
  nib.save(nib.Nifti1Image(np.asarray(img.dataobj) - 3000.0, img.affine),
           tmp_path / "low" / "FLAIR.nii.gz")
  options = run_lib.Options.from_config(config_base.preprocess(n4=True, skull_strip="none"))
  as_is = run_lib.preprocess_exam(raw_exam(str(tmp_path / "raw")), str(tmp_path / "a"), options)
  low = run_lib.preprocess_exam(raw_exam(str(tmp_path / "low")), str(tmp_path / "b"), options)
  assert low["made_nonnegative"] == {"FLAIR": {"shift": 3000.0}}
  assert "made_nonnegative" not in as_is
  a, b = (nifti.read_nifti(r["images"]["FLAIR"]).data for r in (as_is, low))
  np.testing.assert_allclose(b, a, atol=1e-3 * a.max())


def test_an_exam_with_nan_where_it_has_no_data_is_made_as_the_exam_itself(known_registration,
                                                                         tmp_path):
  """NaN on the background around the head (as SPM writes a resliced image where it has no data):
  read as 0 (`nifti.no_data_to_zero`, `steps.read_scan`), the exam is preprocessed as the exam
  itself; a NaN region inside the image is refused, naming the file."""
  draw_exam(tmp_path / "raw", "LPS")
  img = nib.load(tmp_path / "raw" / "FLAIR.nii.gz")
  data = np.asarray(img.dataobj, np.float32)
  low = ndimage.label(data < 0.02 * data.max())[0]
  background = low == low[0, 0, 0]  # the dark region around the head, from a corner
  assert 0.2 < background.mean() < 0.9
  os.makedirs(tmp_path / "nan")
  nib.save(nib.Nifti1Image(np.where(background, np.nan, data), img.affine),
           tmp_path / "nan" / "FLAIR.nii.gz")
  options = run_lib.Options.from_config(config_base.preprocess(n4=True, skull_strip="none"))
  as_is = run_lib.preprocess_exam(raw_exam(str(tmp_path / "raw")), str(tmp_path / "a"), options)
  nan = run_lib.preprocess_exam(raw_exam(str(tmp_path / "nan")), str(tmp_path / "b"), options)
  a, b = (nifti.read_nifti(r["images"]["FLAIR"]).data for r in (as_is, nan))
  np.testing.assert_allclose(b, a, atol=1e-3 * a.max())
  hole = np.where(background, 0, data)
  centre = tuple(n // 2 for n in data.shape)
  hole[tuple(slice(c - 2, c + 2) for c in centre)] = np.nan  # 64 voxels inside the head
  nib.save(nib.Nifti1Image(hole, img.affine), tmp_path / "nan" / "FLAIR.nii.gz")
  with pytest.raises(errors.InvalidInputError, match=r"FLAIR.nii.gz: 64 voxels are NaN, 64 of "
                                                      "them inside the image"):
    run_lib.preprocess_exam(raw_exam(str(tmp_path / "nan")), str(tmp_path / "c"), options)


def test_negative_padding_outside_the_field_of_view_goes_to_0_not_the_background_up():
  """-32768 on the voxels outside the field of view, the image >= 0 elsewhere: the padding is
  set to 0 (a shift would lift the real background to 32768); an image stored with an offset
  (its median below 0) is shifted so that its lowest is 0; a few negative voxels beside a 0
  background are left."""
  a = np.zeros((20, 20, 20), np.float32)
  a[5:15, 5:15, 5:15] = np.linspace(1.0, 100.0, 1000).reshape(10, 10, 10)
  padded = a.copy()
  padded[:, :, :3] = -32768.0
  out, change = steps.nonnegative(sitk.GetImageFromArray(padded))
  assert change == {"padding": -32768.0}
  np.testing.assert_array_equal(sitk.GetArrayFromImage(out), np.where(padded < 0, 0, padded))
  out, change = steps.nonnegative(sitk.GetImageFromArray(a - 50.0))  # z-scored-like
  assert change == {"shift": 50.0}
  np.testing.assert_allclose(sitk.GetArrayFromImage(out), a, atol=1e-4)
  assert steps.nonnegative(sitk.GetImageFromArray(a))[1] is None
  ringing = a.copy()  # a skull-stripped, interpolated exam: a few voxels below its 0 background
  ringing[5, 5, 5:8] = -20.0
  out, change = steps.nonnegative(sitk.GetImageFromArray(ringing))
  assert change is None and sitk.GetArrayFromImage(out).min() == -20.0


def test_canonical_view_of_an_itk_image():
  """grid_lib.canonical: any ITK image as a RAS-ordered array with its RAS affine."""
  affine, shape = raw_affine("PSR")
  img = sitk.GetImageFromArray(np.zeros(shape[::-1], np.float32))
  img.CopyInformation(grid_lib.reference_image(shape, affine))
  arr = np.zeros(shape, np.float32)
  arr[3, 5, 7] = 1
  img = grid_lib.from_numpy(arr, img)
  canon, canon_affine = grid_lib.canonical(img)
  assert nib.aff2axcodes(canon_affine) == ("R", "A", "S")
  np.testing.assert_allclose(world_centroid(canon > 0, canon_affine),
                             nib.affines.apply_affine(affine, [3, 5, 7]), atol=1e-6)


RAW = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                                   "lesjak_longitudinal_raw"))


@pytest.mark.slow  # the whole raw pipeline on a real exam (N4, registrations): ~40 s
@pytest.mark.skipif(not os.path.isdir(RAW), reason=f"raw Lesjak exams not found at {RAW}")
def test_painted_cube_stays_in_the_left_hemisphere_of_a_real_exam(tmp_path, monkeypatch):
  """The issue's case: a bright 12×12×3-voxel cube painted into the LEFT hemisphere of patient01's
  study-2 FLAIR (LPS, 0.72×0.72×3 mm) is in the left hemisphere on the model grid, where the
  exam's own to_mni.tfm puts it, and `segment`'s mask (a stand-in network that marks the cube)
  lands on the painted voxels, with table and overlay on the same side. The brain mask is the
  atlas one (segment:fast's): which side a voxel ends on is decided by reading, co-registering,
  registering to MNI and mapping back, not by the mask, and ROBEX would add ~100 s (its own
  orientation is checked by test_preprocess's real exam against the MNI brain)."""
  import shutil

  from msjax import segment
  from msjax.preprocess import nyul
  from conftest import load_config
  exam_dir = tmp_path / "raw" / "patient01"
  exam_dir.mkdir(parents=True)
  for name in os.listdir(os.path.join(RAW, "patient01")):
    if name.startswith("study2_"):
      shutil.copy(os.path.join(RAW, "patient01", name), exam_dir / name)
  flair_path = str(exam_dir / "study2_FLAIR.nii.gz")
  img = nib.load(flair_path)
  data = np.asarray(img.dataobj).astype(np.float32)
  cube = np.zeros(data.shape, bool)
  cube[200:212, 154:166, 21:24] = True
  centre = world_centroid(cube, img.affine)
  assert centre[0] < -25  # RAS: the patient's left
  data[cube] = 2.5 * np.percentile(data, 99.9)
  nib.save(nib.Nifti1Image(data.astype(np.uint16), img.affine, img.header), flair_path)

  standard = [float(v) for v in np.linspace(0, 100, len(nyul.PERCENTILES))]
  bundle = {"path": "stand-in", "threshold": 0.5, "patch_size": 32, "model": {},
            "preprocessing": {"nyul_landmarks": {m: {"standard": standard}
                                                 for m in ("FLAIR", "T1W", "T2W")}}}
  monkeypatch.setattr(segment.bundle_lib, "read", lambda path: bundle)
  monkeypatch.setattr(segment.predict, "Predictor", lambda *a, **k: MarkerPredictor())
  config = load_config("segment", "smoke", model="stand-in", input=str(exam_dir),
                       **{"preprocess.skull_strip": "atlas"})
  summary = segment.run(config, str(tmp_path / "out"))
  assert not summary["failed"], summary["failed"]
  (summary_row,) = summary["exams"]
  row = {"exam_id": summary_row["exam_id"],
         **{k: str(tmp_path / "out" / v) for k, v in summary_row["files"].items()}}

  # the model grid: the cube is in the left hemisphere, where to_mni.tfm maps the painted centre
  prepared = tmp_path / "out" / "work" / "preprocessed" / row["exam_id"]
  written = nib.load(str(prepared / f"{row['exam_id']}_FLAIR.nii.gz"))
  grid = np.asarray(written.dataobj)
  level = 0.5 * (np.median(grid[grid > 0]) + grid.max())
  on_grid = world_centroid(grid > level, written.affine)
  inverse = sitk.ReadTransform(str(prepared / "to_mni.tfm")).GetInverse()
  expected = np.array(inverse.TransformPoint(tuple(centre * [-1, -1, 1]))) * [-1, -1, 1]
  assert on_grid[0] < -20 and expected[0] < -20, (on_grid, expected)
  np.testing.assert_allclose(on_grid, expected, atol=2.5)

  # native space: the mask on the painted voxels, the table and the overlay on the left
  mask = np.asarray(nib.load(row["mask"]).dataobj) > 0
  assert (mask & cube).sum() / cube.sum() > 0.7 and dice(mask, cube) > 0.6, dice(mask, cube)
  (lesion,) = list(csv.DictReader(open(row["table"])))
  native = np.array([float(lesion[f"centroid_{a}_mm"]) for a in "xyz"])
  assert np.abs(native - centre).max() < 3.0, (native, centre)
  assert float(lesion["mni_x_mm"]) < -20
  assert overlay_marker_side(row["overlay"]) > 0.6


def test_hot_voxels_are_replaced_by_their_neighbours(known_registration, tmp_path):
  """30 voxels at 100x a FLAIR's maximum (a scanner or export spike) took the brain's spread in
  the z-scoring and N4's fit with them: replaced by their neighbours' median when the scan is
  read (`exams.despike`), the exam is preprocessed as the exam itself and the record counts them;
  the loader's z-scoring does the same for exams given on the model grid."""
  from msjax.data import exams as exams_lib
  draw_exam(tmp_path / "raw", "LPS")
  img = nib.load(tmp_path / "raw" / "FLAIR.nii.gz")
  data = np.asarray(img.dataobj, np.float32)
  rng = np.random.default_rng(0)
  head = np.argwhere(data > np.percentile(data[data > 0], 60))
  hot = tuple(head[rng.choice(len(head), 30, replace=False)].T)
  spiked = data.copy()
  spiked[hot] = 100 * data.max()
  os.makedirs(tmp_path / "hot")
  nib.save(nib.Nifti1Image(spiked, img.affine), tmp_path / "hot" / "FLAIR.nii.gz")
  options = run_lib.Options.from_config(config_base.preprocess(n4=True, skull_strip="none"))
  as_is = run_lib.preprocess_exam(raw_exam(str(tmp_path / "raw")), str(tmp_path / "a"), options)
  hot_run = run_lib.preprocess_exam(raw_exam(str(tmp_path / "hot")), str(tmp_path / "b"), options)
  assert hot_run["despiked"] == {"FLAIR": 30} and "despiked" not in as_is
  a, b = (nifti.read_nifti(r["images"]["FLAIR"]).data for r in (as_is, hot_run))
  inside = b > 0
  assert np.percentile(np.abs(b - a)[inside], 99) < 0.02 * a.max()
  brain = data > 0
  z_clean = exams_lib._zscore_in_brain(data, brain)
  z_hot = exams_lib._zscore_in_brain(spiked, brain)
  away = np.ones(data.shape, bool)
  away[hot] = False
  np.testing.assert_allclose(z_hot[away & brain], z_clean[away & brain], atol=0.02)
  assert np.abs(z_hot - z_clean)[hot].max() < 0.5  # the texture's spread, not 100x the maximum
  plain = (spiked - spiked[brain].mean()) / spiked[brain].std()  # the spread of 30 hot voxels
  assert np.abs(plain - z_clean)[away & brain].max() > 0.5
