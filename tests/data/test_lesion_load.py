"""Lesion-load augmentation: real lesions pasted where white matter is, masks following (msjax/data/lesion_load.py)."""
import numpy as np
import pytest

from msjax.data import exams as exams_lib
from msjax.data import lesion_load, pipeline

C = 5


T1W, FLAIR = lesion_load.T1W, lesion_load.FLAIR


def _exam(seed=0, shape=(40, 40, 40)):
  """A cubic brain: white matter (bright on T1) inside a grey-matter shell (dark on T1), a dark
  'ventricle' on FLAIR, and three bright lesions."""
  rng = np.random.default_rng(seed)
  brain = np.zeros(shape, np.uint8)
  brain[4:36, 4:36, 4:36] = 1
  images = np.where(brain[..., None] > 0, rng.normal(0, 0.3, shape + (C,)), 0).astype(np.float32)
  wm = np.zeros(shape, bool)
  wm[7:33, 7:33, 7:33] = True
  images[..., T1W] += np.where(wm, 0.8, -0.8) * brain
  csf = np.zeros(shape, bool)
  csf[16:24, 16:24, 16:24] = True
  images[csf, FLAIR] = -3.0
  mask = np.zeros(shape, np.uint8)
  for lo in ((8, 8, 8), (26, 10, 12), (10, 27, 25)):
    sl = tuple(slice(a, a + 3) for a in lo)
    mask[sl] = 1
    images[sl] += np.arange(1, C + 1, dtype=np.float32) * 2  # a distinct value per channel
  return images, brain, mask, np.ones(C, bool), csf


def test_carve_finds_each_lesion_with_its_intensities():
  images, brain, mask, present, _ = _exam()
  bank = lesion_load.carve("e", images, brain, mask, present)
  assert len(bank) == 3 and all(l.voxels == 27 for l in bank)
  for l in bank:
    box = tuple(slice(a, a + s) for a, s in zip(l.lo, l.hard.shape))
    np.testing.assert_array_equal(l.images, images[box])
    assert (mask[box][l.hard] == 1).all()
    np.testing.assert_allclose(l.mean, images[box][l.hard].mean(0), rtol=1e-6)
    assert l.background[FLAIR] < l.mean[FLAIR]  # lesions brighter than their surroundings


@pytest.mark.parametrize("mirror", [False, True])
def test_pasted_voxels_are_real_lesion_voxels_and_the_mask_follows(mirror):
  images, brain, mask, present, _ = _exam()
  lesion = lesion_load.carve("e", images, brain, mask, present)[0]
  paste = lesion_load.make_paste(lesion, (20, 8, 26), grow=0, mirror=mirror, contrast=1.0)
  region, region_mask = lesion_load.render(images, mask, (16, 4, 20), 20, [paste], present)
  hard = lesion.hard[::-1] if mirror else lesion.hard
  src = lesion.images[::-1] if mirror else lesion.images
  off = np.array((20, 8, 26)) - (16, 4, 20)
  box = tuple(slice(o, o + s) for o, s in zip(off, hard.shape))
  # every voxel of the pasted lesion: labelled, with the source lesion's own intensity (all
  # channels); the mask is exactly the old mask plus the lesion
  np.testing.assert_allclose(region[box][hard], src[hard], rtol=1e-6)
  old = mask[16:36, 4:24, 20:40].astype(bool)
  expected = old.copy()
  expected[box] |= hard
  np.testing.assert_array_equal(region_mask.astype(bool), expected)
  # the soft border changes the surroundings a little, nothing beyond it
  far = np.ones(region.shape[:3], bool)
  far[tuple(slice(max(o - 3, 0), o + s + 3) for o, s in zip(off, hard.shape))] = False
  np.testing.assert_array_equal(region[far], images[16:36, 4:24, 20:40][far])


def test_growth_thickens_with_the_lesion_s_mean_and_contrast_scales_about_the_background():
  images, brain, mask, present, _ = _exam()
  lesion = lesion_load.carve("e", images, brain, mask, present)[0]
  grown = lesion_load.make_paste(lesion, lesion.lo, grow=2, mirror=False, contrast=1.0)
  assert grown.hard.sum() > 2 * lesion.voxels
  rim = grown.hard & ~lesion.hard
  np.testing.assert_allclose(grown.images[rim], np.broadcast_to(lesion.mean, (rim.sum(), C)),
                             rtol=1e-5)
  faint = lesion_load.make_paste(lesion, lesion.lo, grow=0, mirror=False, contrast=0.5)
  np.testing.assert_allclose(faint.images[lesion.hard],
                             lesion.background + 0.5 * (lesion.images[lesion.hard]
                                                        - lesion.background), rtol=1e-5)


def test_plan_places_lesions_in_white_matter_and_is_seeded():
  images, brain, mask, present, csf = _exam()
  grey = (brain > 0) & (images[..., T1W] < 0)  # the shell: dark on T1
  bank = lesion_load.carve("e", images, brain, mask, present)
  spec = lesion_load.LoadSpec(probability=1.0, added_ml=(0.5, 0.5), jitter=10)
  plan = lesion_load.plan(np.random.default_rng(7), bank, images, brain, present, 0.001, spec)
  assert plan.pastes and len(plan.centres) >= 500  # 0.5 mL of 1 mm³ voxels
  for p in plan.pastes:
    box = tuple(slice(a, b) for a, b in zip(p.lo, p.hi))
    assert brain[box][p.hard].mean() >= 0.98
    assert csf[box][p.hard].mean() <= 0.1
    assert grey[box][p.hard].mean() < 0.5
  assert brain[tuple(plan.centres.T)].all()
  again = lesion_load.plan(np.random.default_rng(7), bank, images, brain, present, 0.001, spec)
  assert [tuple(p.lo) for p in again.pastes] == [tuple(p.lo) for p in plan.pastes]
  off = lesion_load.LoadSpec(probability=0.0)
  assert lesion_load.plan(np.random.default_rng(7), bank, images, brain, present, 0.001,
                          off) is lesion_load.EMPTY


def test_lesions_missing_a_channel_the_target_has_are_not_pasted():
  images, brain, mask, present, _ = _exam()
  bank = lesion_load.carve("e", images, brain, mask, np.array([1, 0, 1, 1, 1], bool))
  spec = lesion_load.LoadSpec(probability=1.0)
  assert lesion_load.plan(np.random.default_rng(0), bank, images, brain, present, 0.001,
                          spec) is lesion_load.EMPTY


def test_pipeline_with_lesion_load_is_deterministic_and_adds_lesion(tiny_cohort):
  exams = tiny_cohort.select(split="train", labelled=True)
  spec = pipeline.SamplerSpec(task="segmentation", patch_size=16, patches_per_exam=6, seed=5,
                              lesion_fraction=0.5,
                              lesion_load=lesion_load.LoadSpec(probability=1.0,
                                                               added_ml=(20.0, 40.0)))
  plain = pipeline.SamplerSpec(task="segmentation", patch_size=16, patches_per_exam=6, seed=5,
                               lesion_fraction=0.5)

  def batches(s, n=6):
    ds = pipeline.make_dataset(exams, s, exams_lib.ExamCache(8, patch_size=16), n)
    return [ds[i] for i in range(n)]
  a, b = batches(spec), batches(spec)  # two independent sources, same seed
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  ds = pipeline.make_dataset(exams, spec, exams_lib.ExamCache(8, patch_size=16), 6)
  np.testing.assert_array_equal(ds[4]["image"], a[4]["image"])  # any order: resume is exact
  loaded = sum(float(x["mask"].sum()) for x in a)
  assert loaded > 1.2 * sum(float(x["mask"].sum()) for x in batches(plain))
