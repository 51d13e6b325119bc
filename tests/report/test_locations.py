"""Location classes on a synthetic exam built from the MNI152 template with one lesion in each
location, and the atlas rules they rest on."""
import numpy as np
import pytest

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
