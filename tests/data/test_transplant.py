"""Lesion transplant: other patients' lesion maps placed into a training brain with the look of
its own lesions (msjax/data/transplant.py), through the sampler (msjax/data/pipeline.py)."""
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msjax.data import lesion_load, nifti, pipeline, transplant
from msjax.errors import InvalidInputError
from msjax.data import exams as exams_lib

C = 5
T1W, T2W, FLAIR = 0, 2, 3
SHAPE = (48, 48, 48)


def _brain(seed=0):
  """A spherical brain: white matter (bright on T1) inside a grey-matter shell, dark CSF
  ventricles on FLAIR, and a few real lesions (bright on FLAIR and T2, dark on T1) of known
  intensities with texture: mean per channel LESION, spread between lesions and within."""
  rng = np.random.default_rng(seed)
  x, y, z = np.indices(SHAPE)
  r = np.sqrt((x - 24) ** 2 + (y - 24) ** 2 + (z - 24) ** 2)
  brain = (r < 20).astype(np.uint8)
  wm = r < 15
  images = np.zeros(SHAPE + (C,), np.float32)
  images[..., T1W] = np.where(wm, 0.8, -0.6)
  images[..., FLAIR] = np.where(wm, 0.1, 0.4)
  images[..., T2W] = np.where(wm, -0.5, 0.3)
  csf = (np.abs(x - 24) < 3) & (np.abs(y - 24) < 6) & (np.abs(z - 24) < 4)
  images[csf, FLAIR] = -2.0
  images[csf, T1W] = -1.5
  images[csf, T2W] = 2.0
  images += rng.normal(0, 0.15, images.shape).astype(np.float32)
  mask = np.zeros(SHAPE, np.uint8)
  centres = [(14, 14, 20), (34, 14, 28), (14, 34, 16), (32, 32, 32), (20, 30, 34), (30, 18, 14)]
  for k, c in enumerate(centres):
    ball = np.sqrt(sum((i - ci) ** 2 for i, ci in zip((x, y, z), c))) < 2.6
    mask[ball] = 1
    offset = (k % 3 - 1) * 0.3  # lesions differ in brightness, one offset for every sequence
    images[ball, FLAIR] = LESION[FLAIR] + offset + rng.normal(0, 0.3, ball.sum())
    images[ball, T2W] = LESION[T2W] + offset + rng.normal(0, 0.4, ball.sum())
    images[ball, T1W] = LESION[T1W] - offset + rng.normal(0, 0.3, ball.sum())
  images = np.where(brain[..., None] > 0, images, 0).astype(np.float32)
  images[..., 1] = 0.0  # T1WKS missing
  images[..., 4] = 0.0  # PDW missing
  present = np.array([True, False, True, True, False])
  return images, brain, mask, present, csf


LESION = np.array([-0.4, 0.0, 2.2, 1.9, 0.0], np.float32)


def _donor_maps(folder, n=3, seed=1):
  """Lesion maps on a 1.5x finer grid spanning the same box as the brain's."""
  rng = np.random.default_rng(seed)
  fine = tuple(int(s * 1.5) for s in SHAPE)
  x, y, z = np.indices(fine)
  paths = []
  for d in range(n):
    m = np.zeros(fine, np.uint8)
    for _ in range(4 + 4 * d):  # donors of growing load
      c = rng.uniform(20, 52, 3)
      m[np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < rng.uniform(2, 5)] = 1
    affine = np.diag([1 / 1.5, 1 / 1.5, 1 / 1.5, 1.0])
    affine[:3, 3] = -0.5 + 0.5 / 1.5  # voxel centres of the same box
    path = os.path.join(folder, f"donor{d}_consensus_gt.nii.gz")
    nib.save(nib.Nifti1Image(m, affine), path)
    paths.append(path)
  return paths


@pytest.fixture
def setting(tmp_path):
  images, brain, mask, present, csf = _brain()
  _donor_maps(str(tmp_path))
  grid = nifti.Grid(affine=np.eye(4), shape=SHAPE, source_affine=np.eye(4), source_shape=SHAPE,
                    source_axcodes=("R", "A", "S"))
  return images, brain, mask, present, csf, str(tmp_path), grid


def _plans(images, brain, mask, present, folder, grid, n, probability=1.0, seed=0,
           contrast=(1.0, 1.0)):
  donors = transplant.DonorBank(folder).donors(grid)
  look = transplant.measure_look(images, brain, mask, present)
  spec = transplant.Spec(probability=probability, contrast=contrast)
  return [transplant.plan(np.random.default_rng([seed, i]), donors, look, images, brain, mask,
                          present, spec) for i in range(n)], look


def test_donors_come_onto_the_model_grid_with_their_volume(setting):
  images, brain, mask, present, csf, folder, grid = setting
  donors = transplant.DonorBank(folder).donors(grid)
  assert [d.name.split("_")[0] for d in donors] == ["donor0", "donor1", "donor2"]
  for path, d in zip(sorted(os.listdir(folder)), donors):
    fine = nib.load(os.path.join(folder, path))
    ml = float(np.asarray(fine.dataobj).sum()) * abs(np.linalg.det(fine.affine[:3, :3])) / 1000
    assert d.ml == pytest.approx(ml, rel=0.25)  # resampling moves a blob's volume a little
    assert all(0 <= l.partial.min() and l.partial.max() <= 1 for l in d.lesions)
    assert any(((l.partial > 0) & (l.partial < 1)).any() for l in d.lesions)  # partial volume


def test_transplanted_lesions_look_like_the_brains_own(setting):
  """Per sequence, the core voxels of transplanted lesions have the mean and spread of the
  brain's own lesions' cores. Tolerance: the transplant draws each lesion's mean from the
  between-lesion spread measured on six real lesions, so the pooled mean of ~100 transplanted
  lesions is off by ~spread/10 ≈ 0.03 by chance; the measured mean itself carries the error of
  six lesions (spread/√6 ≈ 0.1); 0.25 z is the sum with room, a tenth of the lesion-to-white-
  matter contrast (1.8–2.7 z), and a transplant with another sequence's look (or none) is off by
  more than 1 z."""
  images, brain, mask, present, csf, folder, grid = setting
  plans, look = _plans(images, brain, mask, present, folder, grid, n=12)
  assert look.lesions == 6
  real_core = ndimage.binary_erosion(mask > 0, transplant.SIX)
  cores = []
  for p in plans:
    out, label = transplant.apply(images, mask, p, present)
    core = np.zeros(SHAPE, bool)
    for q in p.pastes:
      box = tuple(slice(a, b) for a, b in zip(q.lo, q.hi))
      core[box] |= (q.soft >= 0.999) & q.hard
    core &= ~(mask > 0)
    cores.append(out[core])
  voxels = np.concatenate(cores)
  assert len(voxels) > 1000
  for c in (T1W, T2W, FLAIR):
    assert abs(voxels[:, c].mean() - images[real_core, c].mean()) < 0.25, c
    assert voxels[:, c].std() == pytest.approx(images[real_core, c].std(), rel=0.35), c
  # missing sequences stay missing
  assert (voxels[:, 1] == 0).all() and (voxels[:, 4] == 0).all()


def test_contrast_randomisation_scales_each_sequences_contrast_within_its_range(setting):
  """Spec.contrast: per transplant and sequence, the lesions' mean contrast to white matter is the
  look's times a factor in the range, drawn independently per sequence; (1, 1) is the look."""
  images, brain, mask, present, csf, folder, grid = setting
  look = transplant.measure_look(images, brain, mask, present)
  ratios = []
  for p in _plans(images, brain, mask, present, folder, grid, n=16, contrast=(0.6, 1.4))[0]:
    if not p.pastes:
      continue
    mean = np.mean([q.images[q.hard].mean(axis=0) for q in p.pastes], axis=0)  # over lesions
    ratios.append([(mean[c] - look.white_matter[c]) / look.contrast[c] for c in (T1W, T2W, FLAIR)])
  ratios = np.array(ratios)
  assert len(ratios) >= 10
  # a lesion's mean is off the look by the between-lesion spread (≤ 2 sd, averaged over lesions)
  assert (ratios > 0.4).all() and (ratios < 1.6).all()
  assert ratios.std(axis=0).min() > 0.1                     # the factor varies between transplants
  assert abs(np.corrcoef(ratios[:, 1], ratios[:, 2])[0, 1]) < 0.9  # and per sequence
  off = np.array([[(np.mean([q.images[q.hard].mean(axis=0) for q in p.pastes], axis=0)[c] - look.white_matter[c])
                   / look.contrast[c] for c in (T1W, T2W, FLAIR)]
                  for p in _plans(images, brain, mask, present, folder, grid, n=16)[0] if p.pastes])
  assert off.std(axis=0).max() < ratios.std(axis=0).min()


def test_no_transplanted_lesion_outside_the_brain_or_in_csf_and_image_and_mask_align(setting):
  images, brain, mask, present, csf, folder, grid = setting
  plans, _ = _plans(images, brain, mask, present, folder, grid, n=8)
  assert sum(len(p.pastes) for p in plans) > 20
  for p in plans:
    out, label = transplant.apply(images, mask, p, present)
    assert not label[brain == 0].any()
    added = (label > 0) & ~(mask > 0)
    assert not (added & csf).any()
    assert ((label > 0) | ~(mask > 0)).all()  # the label is the union: own lesions stay
    # the image changed exactly where the pastes' soft weights are (aligned with the label)
    changed = np.abs(out - images).max(-1) > 1e-6
    assert changed[added].mean() > 0.99
    soft = np.zeros(SHAPE, np.float32)
    for q in p.pastes:
      box = tuple(slice(a, b) for a, b in zip(q.lo, q.hi))
      soft[box] = np.maximum(soft[box], q.soft)
    assert not changed[soft == 0].any()
    # the images outside the brain are untouched
    np.testing.assert_array_equal(out[brain == 0], images[brain == 0])


def test_heavy_donors_give_heavy_loads_and_a_seed_gives_the_same_exam(setting):
  images, brain, mask, present, csf, folder, grid = setting
  donors = transplant.DonorBank(folder).donors(grid)
  plans, _ = _plans(images, brain, mask, present, folder, grid, n=30)
  loads = [sum(int(q.hard.sum()) for q in p.pastes) for p in plans]
  assert max(loads) > 3 * max(1, min(loads))  # donors of different loads are drawn
  again, _ = _plans(images, brain, mask, present, folder, grid, n=30)
  for a, b in zip(plans, again):
    assert len(a.pastes) == len(b.pastes)
    for x, y in zip(a.pastes, b.pastes):
      np.testing.assert_array_equal(x.lo, y.lo)
      np.testing.assert_array_equal(x.images, y.images)
  assert len(donors) == 3


def test_an_exam_given_lesions_is_z_scored_again_as_the_loader_would(setting):
  """Renormalised: each patch of a transplanted exam is what the loader's z-scoring over the
  brain gives the whole exam with those lesions in (the heavier the load, the less bright its
  lesions stand out); an exam given nothing is left as loaded."""
  images, brain, mask, present, csf, folder, grid = setting
  images = np.stack([exams_lib._zscore_in_brain(images[..., c], brain) if present[c] else
                     images[..., c] for c in range(C)], -1)  # as loaded
  plans, _ = _plans(images, brain, mask, present, folder, grid, n=12)
  heavy = max(plans, key=lambda p: sum(int(q.hard.sum()) for q in p.pastes))
  plan = lesion_load.renormalised(heavy, images, brain, present)
  whole, label = transplant.apply(images, mask, heavy, present)
  got = lesion_load.renormalise(whole, plan.brain_stats)
  for c in np.flatnonzero(present):
    want = exams_lib._zscore_in_brain(whole[..., c], brain)
    np.testing.assert_allclose(got[..., c], want, atol=2e-5)
  assert not got[..., ~present].any() and not got[brain == 0].any()
  mean, sd = plan.brain_stats
  # the load moves the brain's statistics (0 and 1 as loaded): brighter on average, wider
  assert mean[FLAIR] > 0.02 and sd[FLAIR] > 1.02
  added = (label > 0) & ~(mask > 0)
  assert got[added, FLAIR].mean() < whole[added, FLAIR].mean() - 0.05
  assert lesion_load.renormalised(lesion_load.EMPTY, images, brain, present).brain_stats is None
  np.testing.assert_array_equal(lesion_load.renormalise(images, None), images)


def test_renormalising_in_the_sampler_draws_nothing(tiny_cohort, tmp_path):
  """The sampler with renormalise on gives the same patches' places and masks (no random number
  drawn), its images the same patches z-scored again by the group's brain statistics."""
  a = exams_lib.load_exam(list(tiny_cohort.select(labelled=True))[0])
  x, y, z = np.indices(a.grid.shape)
  m = (np.abs(x - 20) < 6) & (np.abs(y - 20) < 5) & (np.abs(z - 20) < 5)
  nifti.write_nifti(m.astype(np.uint8), a.grid.affine, str(tmp_path / "d0.nii.gz"))
  spec = transplant.Spec(probability=1.0, maps=str(tmp_path))
  plain = _source(tiny_cohort, transplant=spec)
  renorm = _source(tiny_cohort, transplant=spec, renormalise=True)
  changed = 0
  for i in range(8):
    r0, r1 = plain(i, np.random.default_rng(i)), renorm(i, np.random.default_rng(i))
    np.testing.assert_array_equal(r0["corner"], r1["corner"])
    np.testing.assert_array_equal(r0["mask"], r1["mask"])
    changed += int(not np.allclose(r0["image"], r1["image"]))
    np.testing.assert_array_equal(r0["image"] == 0, r1["image"] == 0)
  assert changed == 8
  stats = renorm.load_plan(0, 0, int(renorm.group_plan(0, 0)[0])).brain_stats
  want = lesion_load.renormalise(plain(0, np.random.default_rng(0))["image"], stats)
  np.testing.assert_allclose(renorm(0, np.random.default_rng(0))["image"], want, atol=1e-6)


def test_a_brain_without_own_lesions_borrows_the_cohorts_contrast(setting):
  images, brain, mask, present, csf, folder, grid = setting
  own = transplant.measure_look(images, brain, mask, present)
  clean = np.where(mask[..., None] > 0, 0.1, images).astype(np.float32)
  bare = transplant.measure_look(clean, brain, None, present)
  assert bare.lesions == 0
  lent = transplant.borrowed(bare, [own, bare])
  np.testing.assert_allclose(lent.mean - lent.white_matter, own.contrast, atol=1e-5)
  assert lent.mean[FLAIR] > bare.white_matter[FLAIR] + 1.0


def _source(tiny_cohort, **spec):
  cache = exams_lib.ExamCache(maxsize=8, model_shape=None, patch_size=16)
  exams = list(tiny_cohort.select(labelled=True))
  return pipeline.PatchSource(exams, pipeline.SamplerSpec(
      task="segmentation", patch_size=16, patches_per_exam=4, lesion_fraction=0.5, **spec), cache)


def test_the_sampler_off_draws_nothing_and_on_puts_donor_lesions_in(tiny_cohort, tmp_path):
  """Transplant off: the batches are those of a sampler that has no such option (no random
  number drawn); on: groups get extra labelled voxels from the donors."""
  exams = list(tiny_cohort.select(labelled=True))
  a = exams_lib.load_exam(exams[0])
  # donor maps on the synthetic cohort's own grid: a lesion map is a mask of it
  x, y, z = np.indices(a.grid.shape)
  for d in range(2):
    m = ((np.abs(x - 20) < 4) & (np.abs(y - 20 + 6 * d) < 3) & (np.abs(z - 20) < 3))
    nifti.write_nifti(m.astype(np.uint8), a.grid.affine, str(tmp_path / f"d{d}.nii.gz"))
  base = _source(tiny_cohort)
  off = _source(tiny_cohort, transplant=transplant.Spec(probability=0.0, maps=str(tmp_path)))
  on = _source(tiny_cohort, transplant=transplant.Spec(probability=1.0, maps=str(tmp_path)))
  added = 0
  for i in range(16):
    r0, r1 = base(i, np.random.default_rng(i)), off(i, np.random.default_rng(i))
    np.testing.assert_array_equal(r0["image"], r1["image"])
    np.testing.assert_array_equal(r0["mask"], r1["mask"])
  for b in range(4):
    p = on.load_plan(b, 0, 0)
    assert p.pastes, "every group transplanted at probability 1"
    added += sum(int(q.hard.sum()) for q in p.pastes)
  assert added > 0


def test_a_missing_map_folder_is_named(tiny_cohort, tmp_path):
  with pytest.raises(Exception, match="lesion-map folder"):
    _source(tiny_cohort, transplant=transplant.Spec(probability=0.5,
                                                    maps=str(tmp_path / "nowhere")))
  with pytest.raises(Exception, match="no lesion map"):
    _source(tiny_cohort, transplant=transplant.Spec(probability=0.5, maps=str(tmp_path)))


LESJAK = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


@pytest.mark.skipif(not os.path.isdir(os.path.join(LESJAK, "lesjak_lesion_maps")),
                    reason="the real Lesjak lesion maps (../shared/data) are not here")
def test_real_donors_in_a_real_brain_look_like_its_lesions():
  """The 27 real lesion maps into patient26 on the model grid: the loads the maps hold (0.2 to
  50 mL there), nothing outside the brain, and the transplanted cores per sequence within 0.3 z
  of the patient's own lesion cores (the test above says why; the real lesions' between-lesion
  spread is 0.4–0.9 z)."""
  from msjax.data import cohort as cohort_lib
  exam = next(e for e in cohort_lib.load_cohort(os.path.join(LESJAK, "lesjak_mni")).exams
              if e.patient_id == "patient26")
  a = exams_lib.load_exam(exam, model_shape=(128, 128, 128))
  donors = transplant.DonorBank(os.path.join(LESJAK, "lesjak_lesion_maps")).donors(a.grid)
  loads = sorted(d.ml for d in donors)
  assert len(donors) == 27 and loads[0] < 0.5 and loads[-1] > 40
  look = transplant.measure_look(a.images, a.brain, a.reference, a.present)
  cores = []
  for i in range(6):
    p = transplant.plan(np.random.default_rng(i), donors, look, a.images, a.brain, a.reference,
                        a.present, transplant.Spec(probability=1.0))
    out, label = transplant.apply(a.images, a.reference, p, a.present)
    assert not label[a.brain == 0].any()
    core = np.zeros(a.shape, bool)
    for q in p.pastes:
      box = tuple(slice(lo, hi) for lo, hi in zip(q.lo, q.hi))
      core[box] |= (q.soft >= 0.999) & q.hard
    cores.append(out[core & ~(a.reference > 0)])
  voxels = np.concatenate(cores)
  real = a.images[ndimage.binary_erosion(a.reference > 0, transplant.SIX)]
  for c in np.flatnonzero(a.present):
    assert abs(voxels[:, c].mean() - real[:, c].mean()) < 0.3, c


def test_lesion_maps_follow_the_registration_of_the_exams_they_came_with(tmp_path):
  """When the labelled exams are registered again (leave_one_out's preprocess_labelled), the
  maps, which lie in the space those exams came in, follow through the given matrix: a lesion
  at world x lands at the grid point the matrix takes there; a bad matrix file is named."""
  shape = (40, 40, 40)
  lesion = np.zeros(shape, np.uint8)
  lesion[20:26, 10:16, 18:24] = 1  # centre (22.5, 12.5, 20.5) mm, 1 mm voxels, world = index
  volume = nifti.Volume(data=lesion, grid=nifti.Grid(
      affine=np.eye(4), shape=shape, source_affine=np.eye(4), source_shape=shape,
      source_axcodes=("R", "A", "S")), path="")
  grid = nifti.Grid(affine=np.diag([2.0, 2.0, 2.0, 1.0]), shape=(20, 20, 20),
                    source_affine=np.diag([2.0, 2.0, 2.0, 1.0]), source_shape=(20, 20, 20),
                    source_axcodes=("R", "A", "S"))
  # the grid's world is the maps' world shrunk by 0.8 about the origin and shifted by 4 mm in y
  world = np.diag([0.8, 0.8, 0.8, 1.0])
  world[1, 3] = 4.0
  moved = transplant.onto_grid(volume, grid, world)
  centre = ndimage.center_of_mass(moved) @ np.diag([2.0, 2.0, 2.0])  # grid world mm
  expected = (np.array([22.5, 12.5, 20.5]) - [0, 4, 0]) / 0.8
  np.testing.assert_allclose(centre, expected, atol=0.6)
  # volume scales with the inverse of the matrix' determinant (1 mm³ voxels -> 8 mm³)
  assert moved.sum() * 8 == pytest.approx(lesion.sum() / 0.8 ** 3, rel=0.2)
  plain = transplant.onto_grid(volume, grid)  # no registration: where it was
  np.testing.assert_allclose(ndimage.center_of_mass(plain) @ np.diag([2.0, 2.0, 2.0]),
                             [22.5, 12.5, 20.5], atol=0.6)
  path = tmp_path / "m.txt"
  np.savetxt(path, world)
  np.testing.assert_allclose(transplant.read_registration(str(path)), world)
  assert transplant.read_registration("") is None
  np.savetxt(path, np.eye(3))
  with pytest.raises(InvalidInputError, match="m.txt.*4x4"):
    transplant.read_registration(str(path))
