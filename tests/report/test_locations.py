"""Location classes on a synthetic exam built from the MNI152 template with one lesion in each
location, and the atlas rules they rest on; and on lesions drawn by hand at MNI coordinates
chosen from the template's anatomy, independent of the atlas code (`hand_drawn`)."""
import itertools

import numpy as np
import pytest
from scipy import ndimage

from msjax.data import mni
from msjax.report import atlas, locations, table

from .synthetic_exam import class_centres, mni_grid, paint, template_exam


@pytest.fixture(scope="module")
def exam():
  shape, affine = mni_grid(2.0)
  images, brain, a = template_exam(shape, affine)
  labels, truth = paint(shape, class_centres(a, affine))
  images = dict(images)
  images["FLAIR"] = np.where(labels > 0, 1.3, images["FLAIR"]).astype(np.float32)  # bright
  return shape, affine, images, brain, labels, truth


@pytest.fixture(scope="module")
def with_images(exam):
  shape, affine, images, brain, labels, truth = exam
  return locations.classify(labels, affine, flair=images["FLAIR"], t1=images["T1W"], brain=brain)


@pytest.fixture(scope="module")
def template_only(exam):
  """Without the exam's images: the template's ventricles and cortex as they are."""
  shape, affine, images, brain, labels, truth = exam
  return locations.classify(labels, affine)


@pytest.mark.parametrize("cls", locations.CLASSES)
def test_each_class_on_its_lesion(exam, with_images, cls):
  truth = exam[-1]
  lid = next(k for k, v in truth.items() if v == cls)
  assert with_images.classes[lid] == cls, with_images.details[lid]
  assert with_images.method.startswith("the exam's FLAIR and T1")


@pytest.mark.parametrize("cls", locations.CLASSES)
def test_each_class_from_the_template_alone(exam, template_only, cls):
  truth = exam[-1]
  lid = next(k for k, v in truth.items() if v == cls)
  assert template_only.classes[lid] == cls, template_only.details[lid]
  assert template_only.method.startswith("template")


def test_native_grid_through_a_registration(exam):
  """The same lesions on a grid turned and shifted in its own world, with the map to MNI given
  as a function (as msjax.preprocess.native.native_to_mni is): same classes."""
  shape, affine, images, brain, labels, truth = exam
  world = np.array([[0.0, 1, 0, 12], [-1, 0, 0, -30], [0, 0, 1, 5], [0, 0, 0, 1]])
  native_affine = world @ affine
  to_mni = lambda p: (np.c_[p, np.ones(len(p))] @ np.linalg.inv(world).T)[:, :3]  # noqa: E731
  loc = locations.classify(labels, native_affine, to_mni=to_mni, flair=images["FLAIR"],
                           t1=images["T1W"])
  assert loc.classes == truth


def test_counts_volumes_and_rows(exam, with_images):
  shape, affine, images, brain, labels, truth = exam
  rows, loc = table.lesion_rows(labels, affine, locations=with_images,
                                probability=np.where(labels > 0, 0.9, 0.0),
                                spread=np.where(labels > 0, 0.1, 0.0))
  assert set(rows) == set(truth)
  assert all(rows[k]["location"] == truth[k] for k in truth)
  assert all(r["confidence"] == 1.0 and r["mean_uncertainty"] == pytest.approx(0.1)
             for r in rows.values())
  summary = table.class_summary(labels, affine, loc)
  assert summary["lesions"] == 4
  assert all(summary["classes"][c]["count"] == 1 for c in locations.CLASSES)
  assert summary["classes"]["deep_white_matter"]["volume_ml"] == pytest.approx(7 * 8 / 1000)


def test_infratentorial_rule():
  pts = np.array([[0, -25, -30],    # pons
                  [0, -30, -12],    # midbrain
                  [20, -65, -35],   # cerebellar hemisphere
                  [-40, -70, -30],  # cerebellar hemisphere, lateral
                  [0, -10, 5],      # thalamus/third ventricle
                  [40, -20, -25],   # temporal lobe
                  [15, -90, 0],     # occipital lobe
                  [0, 20, 40]], float)
  assert atlas.infratentorial_mni(pts).tolist() == [True] * 4 + [False] * 4


def test_template_regions():
  a = atlas.mni_atlas()
  ml = lambda m: m.sum() / 1000  # noqa: E731  1 mm voxels
  assert 12 < ml(a.ventricles) < 25  # the template's lateral ventricles, 17.8 mL
  assert 20 < ml(a.deep_gm) < 60
  assert not (a.cortex & (a.deep_gm | a.infratentorial)).any()
  assert 100 < ml(a.infratentorial & ((a.gm + a.wm) >= 0.5)) < 250


def test_to_mni_must_be_affine():
  shape, affine = mni_grid(4.0)
  with pytest.raises(ValueError, match="not affine"):
    atlas.world_to_mni_affine(lambda p: p + 0.01 * p ** 2, affine, shape)
  m = atlas.world_to_mni_affine(lambda p: 2 * p + 1, affine, shape)
  np.testing.assert_allclose(m[:3], np.c_[2 * np.eye(3), np.ones(3)], atol=1e-9)


# Lesions drawn by hand at MNI152 coordinates: independent of the atlas code above. The lesions
# of `exam` are placed with the very atlas (ventricles, cortex, distances) the classifier reads,
# so a classifier wrong in the same way as the atlas (a template read back to front, the wrong
# CSF taken for the ventricles) places and finds them alike and passes; these are not.
HAND_DRAWN_MNI = {
    "periventricular": (30, -42, 15),
    "juxtacortical": (-20, 30, 48),
    "cerebellum": (20, -60, -35),
    "pons": (-6, -28, -27),
    "deep_white_matter": (-25, -20, 35),
}
HAND_DRAWN_CLASS = {"periventricular": "periventricular", "juxtacortical": "juxtacortical",
                    "cerebellum": "infratentorial", "pons": "infratentorial",
                    "deep_white_matter": "deep_white_matter"}


@pytest.fixture(scope="module")
def hand_drawn():
  """An exam that is the MNI152 template itself, on the template's own 1 mm grid
  (197x233x189; voxel (i, j, k) is MNI (i - 98, j - 134, k - 72) mm), read from nilearn's files
  with msjax.data.mni.load_template (the file loader only: nothing of msjax.report.atlas), with
  a ball of 2 mm radius (33 voxels) at each point of HAND_DRAWN_MNI.

  How each point was chosen: by printing the template's tissue (GM >= 0.5, WM >= 0.5,
  CSF = 1 - GM - WM >= 0.5 inside T1 > 0.2) on coronal, sagittal and axial slices through it and
  measuring, by brute force over the voxels, the distance from the ball to the nearest CSF and
  GM voxels:
  - periventricular (30, -42, 15), right: in the white matter lateral to the atrium (trigone) of
    the right lateral ventricle, the tapetum / optic radiation, where MS lesions line the
    ventricle. At z = 15, y = -42 the atrium's CSF runs x = 19..27, a partial-volume voxel at
    28, white matter from 29: the ball (x 28..32) sits on the wall, its edge voxel face to face
    with CSF >= 0.5 (no white matter between). The grey-labelled voxels within 3 mm are the
    wall's partial-volume rim (GM of about 0.5, the rest CSF); solid grey matter (GM >= 0.7) is
    5.7 mm away.
  - juxtacortical (-20, 30, 48), left: in the white-matter core of the superior frontal gyrus
    (coronal y = 30: a finger of white matter x = -22..-6 under the gyrus's grey matter, the
    superior frontal sulcus lateral to it). The ball's lateral edge (x = -22) is in contact
    with the gyrus's grey matter at x = -23 (one voxel of it, -21,31,47, is grey), no white
    matter between: a U-fibre lesion. Lateral ventricle beyond 30 mm.
  - cerebellum (20, -60, -35), right: the white-matter core of the right cerebellar hemisphere
    (sagittal x = 20: white matter z = -42..-30 from y = -71 to -30, the folia's grey matter
    around it, 2.5 mm from the ball), all 33 voxels WM.
  - pons (-6, -28, -27), left: the white matter of the left half of the pons (sagittal and
    coronal y = -28 slices: the brainstem's white-matter band z = -29..-25 at |x| < 10), in front
    of the fourth ventricle.
  - deep white matter (-25, -20, 35), left: the centrum semiovale above the body of the left
    lateral ventricle, all 33 voxels WM; the nearest CSF (the ventricle's superolateral angle)
    8.5 mm and the nearest grey matter (the caudate body's top, -19,-21,29) 7.1 mm from the ball,
    the nearest cortex (cingulate sulcus, -16,-23,37) 7.9 mm: with no lesion-to-structure
    distance under 7 mm, no reasonable threshold makes it periventricular or juxtacortical.
  The FLAIR is made from the tissue probabilities as template_exam makes it (CSF dark, grey
  brighter than white), lesions bright; the brain mask is T1 > 0.2 (nilearn's rule)."""
  t1, affine = mni.load_template("t1")
  gm, wm = mni.load_template("gm")[0], mni.load_template("wm")[0]
  brain = t1 > 0.2
  csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0)
  labels = np.zeros(gm.shape, np.int32)
  ball = [d for d in itertools.product(range(-2, 3), repeat=3) if np.dot(d, d) <= 4]
  names = {}
  for lid, (name, point) in enumerate(HAND_DRAWN_MNI.items(), start=1):
    centre = np.linalg.solve(affine, [*point, 1.0])[:3]
    assert np.allclose(centre, np.round(centre))  # MNI mm land on voxel centres of this grid
    for d in ball:
      labels[tuple(np.round(centre).astype(int) + d)] = lid
    names[lid] = name
  rng = np.random.default_rng(0)
  flair = 0.08 * csf + 0.75 * gm + 0.55 * wm + rng.normal(0, 0.01, gm.shape)
  flair = np.where(labels > 0, 1.3, np.where(brain, flair, 0.0)).astype(np.float32)
  t1_exam = np.where(brain, t1, 0.0).astype(np.float32)
  return affine, labels, names, {"flair": flair, "t1": t1_exam, "brain": brain}, (gm, wm)


def test_hand_drawn_points_are_where_the_docstring_says(hand_drawn):
  """The tissue under each ball, read from the template files: a guard on the hand-drawn
  placement (not on the classifier)."""
  affine, labels, names, images, (gm, wm) = hand_drawn
  for lid, name in names.items():
    inside = labels == lid
    assert inside.sum() == 33
    assert (wm[inside] >= 0.5).mean() >= 0.8, name  # white matter, as chosen
  pv = labels == next(k for k, v in names.items() if v == "periventricular")
  csf = np.where(images["brain"], 1.0 - gm - wm, 0.0) >= 0.5
  assert not (csf & pv).any() and (csf & ndimage.binary_dilation(pv)).any()  # on the wall


@pytest.mark.parametrize("use_images", [True, False], ids=["exam_images", "template_only"])
def test_hand_drawn_lesions_classes(hand_drawn, use_images):
  """Each hand-drawn lesion gets the class its anatomy implies: through the exam's FLAIR, T1 and
  brain mask (the path msjax segment takes, brain fit included), and from the template alone."""
  affine, labels, names, images, _ = hand_drawn
  loc = (locations.classify(labels, affine, **images) if use_images
         else locations.classify(labels, affine))
  got = {names[k]: v for k, v in loc.classes.items()}
  want = {name: HAND_DRAWN_CLASS[name] for name in names.values()}
  assert got == want, {names[k]: d for k, d in loc.details.items()}
  assert loc.counts() == {"periventricular": 1, "juxtacortical": 1, "infratentorial": 2,
                          "deep_white_matter": 1}


def test_regions_sampled_together_equal_each_alone():
  """on_grid samples the regions as the bits of one volume: the same voxels as one at a time,
  on an oblique grid (affine_transform) and an axis-aligned one (separable)."""
  src = atlas.mni_atlas()
  theta = np.deg2rad(12)
  oblique = np.array([[1.1 * np.cos(theta), -np.sin(theta), 0, -80],
                      [np.sin(theta), 1.1 * np.cos(theta), 0, -110],
                      [0, 0, 3.0, -60], [0, 0, 0, 1]])
  aligned = np.diag([1.5, 1.5, 1.5, 1.0])
  aligned[:3, 3] = [-90, -126, -72]
  for affine, shape in ((oblique, (150, 170, 45)), (aligned, (120, 140, 110))):
    got = atlas.on_grid(shape, affine, np.eye(4))
    w2m = atlas.world_to_mni_affine(np.eye(4), affine, shape)
    for f in atlas.REGIONS:
      alone = atlas.sample(getattr(src, f).astype(np.uint8), src.affine, shape, affine, w2m,
                           order=0) > 0
      assert alone.any() and np.array_equal(getattr(got, f), alone), f
    only = atlas.on_grid(shape, affine, np.eye(4), fields=("cortex", "gm"))
    assert only.t1 is None and only.ventricles is None
    assert np.array_equal(only.cortex, got.cortex) and np.allclose(only.gm, got.gm)


def test_derived_atlas_is_cached_on_disk_and_read_back(tmp_path, monkeypatch):
  monkeypatch.setenv("MSJAX_ATLAS_CACHE", str(tmp_path))
  path = atlas._cache_path()
  assert path.startswith(str(tmp_path)) and not (tmp_path / path).exists()
  atlas.mni_atlas.cache_clear()
  try:
    first = atlas.mni_atlas()  # derived, then written
    assert len(list(tmp_path.glob("mni_atlas-*.npz"))) == 1
    atlas.mni_atlas.cache_clear()
    derive = atlas._derive_mni_atlas

    def no_derivation():
      raise AssertionError("the atlas was derived again instead of read from its cache file")
    monkeypatch.setattr(atlas, "_derive_mni_atlas", no_derivation)
    again = atlas.mni_atlas()  # read back, never derived
    monkeypatch.setattr(atlas, "_derive_mni_atlas", derive)
    derived = atlas._derive_mni_atlas()
    for f in ("t1", "gm", "csf", "ventricles", "deep_gm", "cortex", "infratentorial", "affine"):
      assert np.array_equal(getattr(again, f), getattr(derived, f)), f
      assert np.array_equal(getattr(first, f), getattr(derived, f)), f
    # a damaged cache file is derived again, not trusted
    open(path, "wb").write(b"not an npz")
    atlas.mni_atlas.cache_clear()
    assert np.array_equal(atlas.mni_atlas().cortex, derived.cortex)
  finally:
    atlas.mni_atlas.cache_clear()
    atlas._packed_regions.cache_clear()


@pytest.mark.parametrize("mm", [0.5, 3.0, 7.0])
def test_growing_on_the_masks_box_is_growing_on_the_whole_grid(mm):
  """_grow measures distances on the mask's box grown by mm only: the same voxels as the
  distance map of the whole grid, for masks in the middle, at an edge and filling the grid."""
  rng = np.random.default_rng(3)
  spacing = np.array([0.8, 1.0, 3.0])
  middle = np.zeros((40, 36, 20), bool)
  middle[12:20, 10:14, 8:10] = rng.random((8, 4, 2)) > 0.5
  edge = np.zeros((40, 36, 20), bool)
  edge[0:3, 30:36, 17:20] = True
  edge[25, 5, 0] = True
  for mask in (middle, edge, np.ones((6, 5, 4), bool)):
    whole = ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm
    np.testing.assert_array_equal(locations._grow(mask, mm, spacing), whole)
  assert locations._grow(middle, np.inf, spacing).all()  # no limit: every voxel, as before


def test_each_lesions_least_distance_is_ndimages_minimum():
  rng = np.random.default_rng(4)
  lab, n = ndimage.label(rng.random((30, 30, 12)) > 0.8)
  values = rng.random(lab.shape) * 50
  np.testing.assert_array_equal(locations._lesion_minimum(values, lab, n),
                                ndimage.minimum(values, lab, np.arange(1, n + 1)))
