"""The patch pipeline: brain rule, position targets, determinism, resume, patients, augmentation (msjax/data/pipeline.py)."""
import numpy as np
import pytest

from msjax.data import exams as exams_lib
from msjax.data import lesion_load
from msjax.data import manifest as manifest_lib
from msjax.data import nifti
from msjax.data import patches as patch_lib
from msjax.data import pipeline

P = 16


def _spec(**kw):
  base = dict(task="segmentation", patch_size=P, patches_per_exam=6, seed=3)
  base.update(kw)
  return pipeline.SamplerSpec(**base)


def _batches(cohort, spec, n, exams=None):
  exams = exams or cohort.select(split="train", labelled=spec.task == "segmentation" or None)
  ds = pipeline.make_dataset(exams, spec, exams_lib.ExamCache(8, patch_size=P), n)
  return exams, [ds[i] for i in range(n)]


C = 5


T1W, FLAIR = lesion_load.T1W, lesion_load.FLAIR


def test_box_fractions_match_brute_force():
  rng = np.random.default_rng(0)
  m = rng.random((9, 8, 7)) > 0.4
  f = patch_lib.box_fractions(m, 3)
  assert f.shape == (7, 6, 5)
  for idx in [(0, 0, 0), (6, 5, 4), (3, 2, 1)]:
    x, y, z = idx
    assert np.isclose(f[idx], m[x:x + 3, y:y + 3, z:z + 3].mean())


def test_every_patch_is_mostly_brain(tiny_cohort):
  spec = _spec(lesion_fraction=0.5)
  exams, batches = _batches(tiny_cohort, spec, 6)
  for b in batches:
    exam = exams[int(b["exam_index"][0])]
    brain = exams_lib.load_exam(exam, patch_size=P).brain
    for corner in b["corner"]:
      assert patch_lib.cut(brain, corner, P).mean() >= 0.75


def test_position_target_is_the_patch_position(tiny_cohort):
  spec = _spec(task="position")
  exams, batches = _batches(tiny_cohort, spec, 3, exams=list(tiny_cohort.select(split="train")))
  for b in batches:
    exam = exams[int(b["exam_index"][0])]
    arrays = exams_lib.load_exam(exam, patch_size=P)
    for k in range(len(b["corner"])):
      corner = b["corner"][k]
      np.testing.assert_array_equal(b["image"][k], patch_lib.cut(arrays.images, corner, P))
      np.testing.assert_allclose(b["position"][k] * np.array(arrays.shape), corner + P / 2,
                                 atol=1e-4)
      assert np.all((b["position"][k] > 0) & (b["position"][k] < 1))


def test_one_exam_per_batch_and_masks_from_its_raters(tiny_cohort):
  exams, batches = _batches(tiny_cohort, _spec(lesion_fraction=1.0), 8)
  seen_lesion = False
  for b in batches:
    assert len(set(b["exam_index"].tolist())) == 1
    arrays = exams_lib.load_exam(exams[int(b["exam_index"][0])], patch_size=P)
    matches = [all(np.array_equal(b["mask"][k, ..., 0], patch_lib.cut(m, b["corner"][k], P))
                   for k in range(len(b["corner"]))) for m in arrays.masks]
    assert any(matches)  # one rater's mask for the whole batch
    seen_lesion |= bool(b["mask"].any())
  assert seen_lesion  # lesion-centred patches contain lesion


def test_same_seed_same_batches_and_resume(tiny_cohort):
  spec = _spec()
  exams = tiny_cohort.select(split="train", labelled=True)
  ds = pipeline.make_dataset(exams, spec, exams_lib.ExamCache(2, patch_size=P), 6)
  it = pipeline.make_iterator(ds)
  full = [next(it) for _ in range(6)]
  it2 = pipeline.make_iterator(pipeline.make_dataset(
      exams, spec, exams_lib.ExamCache(2, patch_size=P), 6))
  for _ in range(3):
    next(it2)
  state = it2.get_state()
  it3 = pipeline.make_iterator(pipeline.make_dataset(
      exams, spec, exams_lib.ExamCache(2, patch_size=P), 6))
  it3.set_state(state)
  for k in range(3, 6):
    b = next(it3)
    for key in full[k]:
      np.testing.assert_array_equal(b[key], full[k][key])
  other = pipeline.make_dataset(exams, _spec(seed=4), exams_lib.ExamCache(2, patch_size=P), 1)[0]
  assert not np.array_equal(other["corner"], full[0]["corner"])


def test_missing_modalities_are_zero_channels(tiny_cohort):
  exams, batches = _batches(tiny_cohort, _spec(task="position"), 10,
                            exams=list(tiny_cohort.select(split="train")))
  checked = 0
  for b in batches:
    exam = exams[int(b["exam_index"][0])]
    for c, m in enumerate(manifest_lib.MODALITIES):
      if m not in exam.images:
        assert not b["image"][..., c].any()
        checked += 1
      else:
        assert b["image"][..., c].any()
  assert checked > 0


def test_modality_dropout_keeps_one_channel(tiny_cohort):
  exams, batches = _batches(tiny_cohort, _spec(modality_dropout=0.9), 10)
  zeroed = 0
  for b in batches:
    exam = exams[int(b["exam_index"][0])]
    live = [b["image"][..., c].any() for c in range(5)]
    assert any(live)
    zeroed += len(exam.images) - sum(live)
  assert zeroed > 0


def test_pretraining_keeps_ms_at_half(tiny_cohort):
  exams = list(tiny_cohort.select(split="train"))
  source = pipeline.PatchSource(exams, _spec(task="position"), exams_lib.ExamCache(1))
  ms = [exams[source.group_plan(b, 0)[0]].ms for b in range(400)]
  assert 0.4 < np.mean(ms) < 0.6


def test_cache_is_bounded(tiny_cohort):
  cache = exams_lib.ExamCache(2, patch_size=P)
  exams = tiny_cohort.exams[:4]
  for e in exams + exams:
    cache.get(e)
  assert len(cache._items) == 2 and cache.loads == 8


def test_split_patients_is_seeded_and_disjoint():
  pats = [f"p{i}" for i in range(10)]
  tr, va = pipeline.split_patients(pats, 0.3, seed=1, repeat=0)
  assert len(va) == 3 and not set(tr) & set(va) and sorted(tr + va) == pats
  assert pipeline.split_patients(pats, 0.3, seed=1, repeat=0) == (tr, va)
  assert pipeline.split_patients(pats, 0.3, seed=1, repeat=1) != (tr, va)


def test_segmentation_refuses_unlabelled_exams(tiny_cohort):
  with pytest.raises(ValueError, match="unlabelled"):
    pipeline.PatchSource(list(tiny_cohort.exams), _spec(), exams_lib.ExamCache(1))


def test_groups_draw_a_patient_then_one_of_its_exams(tiny_cohort):
  """The paper's batches: a patient with three exams is drawn as often as one with one exam
  (group_by="patient"); drawing exams instead gives it three times the share."""
  import dataclasses
  base = [e for e in tiny_cohort.select(split="train", labelled=True)][:2]
  longitudinal = [dataclasses.replace(base[0], exam_id=f"{base[0].exam_id}_t{k}") for k in range(3)]
  exams = longitudinal + [base[1]]
  counts = {}
  for group_by in ("patient", "exam"):
    source = pipeline.PatchSource(exams, _spec(group_by=group_by), exams_lib.ExamCache(1))
    plans = [source.group_plan(b, 0)[0] for b in range(4000)]
    counts[group_by] = np.bincount(plans, minlength=4) / len(plans)
  assert abs(counts["patient"][:3].sum() - 0.5) < 0.03
  assert all(abs(c - 1 / 6) < 0.03 for c in counts["patient"][:3])  # its exams share its half
  assert abs(counts["exam"][:3].sum() - 0.75) < 0.03
  with pytest.raises(ValueError, match="group_by"):
    pipeline.PatchSource(exams, _spec(group_by="site"), exams_lib.ExamCache(1))


def test_augment_flips_image_and_mask_together_and_keeps_missing_channels_zero():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(8, 8, 8, 5)).astype(np.float32)
  image[..., 1] = 0  # a missing modality
  mask = np.zeros((8, 8, 8, 1), np.float32)
  mask[0, 1, 2] = 1
  image[0, 1, 2, 3] = 100.0  # a marker that must travel with the mask voxel
  seen = set()
  for seed in range(64):
    img, m = pipeline.augment(image, mask, np.random.default_rng(seed))
    where = tuple(np.argwhere(m[..., 0] > 0)[0])
    seen.add(where)
    assert img[where + (3,)] > 80 and (img[..., 1] == 0).all()
    assert m.sum() == 1 and img.flags["C_CONTIGUOUS"]
  assert len(seen) == 8  # all 2³ flip combinations occur


def test_zoomed_cut_keeps_the_centre_and_scales_a_lesion():
  images = np.zeros((40, 40, 40, 5), np.float32)
  mask = np.zeros((40, 40, 40), np.uint8)
  mask[18:22, 18:22, 18:22] = 1  # a 4³ lesion at the centre of the patch cut at corner 12
  images[..., 3] = mask * 5.0
  corner = np.array([12, 12, 12])
  plain = pipeline.cut_zoomed(images, mask, corner, 16, 1.0)[1]
  np.testing.assert_array_equal(plain, mask[12:28, 12:28, 12:28])  # zoom 1 = the plain cut
  for zoom, expected in ((2.0, 8 ** 3), (0.5, 2 ** 3)):
    img, m = pipeline.cut_zoomed(images, mask, corner, 16, zoom)
    assert img.shape == (16, 16, 16, 5) and m.shape == (16, 16, 16)
    assert abs(int(m.sum()) - expected) <= 0.2 * expected  # the lesion grew / shrank by zoom³
    centre = np.argwhere(m).mean(0)
    np.testing.assert_allclose(centre, [7.5, 7.5, 7.5], atol=0.6)
    assert img[..., 3][m > 0].min() > 2.5 and (img[..., 0] == 0).all()
  # a patch at the volume's edge, shrunk: outside the volume reads as zero
  img, _ = pipeline.cut_zoomed(images + 1, mask, np.array([0, 0, 0]), 16, 0.7)
  assert img[0, 0, 0, 0] == 0 and img[-1, -1, -1, 0] > 0.9


def test_intensity_augmentation_keeps_zeros_and_changes_tissue():
  rng = np.random.default_rng(0)
  image = rng.normal(0, 1, (16, 16, 16, C)).astype(np.float32)
  image[..., 1] = 0          # a missing modality
  image[:4] = 0              # outside the brain
  changed = 0
  for seed in range(20):
    out = pipeline.intensity_augment(image, np.random.default_rng(seed))
    assert (out[..., 1] == 0).all() and (out[:4] == 0).all()
    assert np.isfinite(out).all() and out.dtype == np.float32
    changed += not np.allclose(out, image)
  assert changed >= 10


def _two_lesions():
  """A 40³ all-brain exam with a 1000-voxel lesion and an 8-voxel one."""
  import types
  mask = np.zeros((40, 40, 40), np.uint8)
  mask[10:20, 10:20, 10:20] = 1
  mask[28:30, 28:30, 28:30] = 1
  return types.SimpleNamespace(brain=np.ones_like(mask), masks=[mask], shape=mask.shape,
                               exam=None), mask


def _share_on_small(corners, mask):
  centres = np.asarray(corners) + P // 2
  return float(np.mean(centres.min(axis=1) >= 25)), bool(mask[tuple(centres.T)].all())


def test_sampling_by_lesion_gives_a_small_lesion_the_share_of_a_large_one():
  arrays, mask = _two_lesions()
  index = patch_lib.sampling_index(arrays, P, 0.75)
  np.testing.assert_allclose(index.lesion_weights.sum(), 1.0)
  rng = np.random.default_rng(0)
  by_lesion = [patch_lib.draw_corner(rng, index, True, by_lesion=True) for _ in range(2000)]
  by_voxel = [patch_lib.draw_corner(rng, index, True) for _ in range(2000)]
  share, on_lesion = _share_on_small(by_lesion, mask)
  assert on_lesion and 0.45 < share < 0.55  # one lesion in two (binomial sd 0.011)
  share, on_lesion = _share_on_small(by_voxel, mask)
  assert on_lesion and share < 0.02          # 8 voxels of 1008


def test_sampling_by_lesion_weighs_pasted_lesions_alike():
  arrays, mask = _two_lesions()
  index = patch_lib.sampling_index(arrays, P, 0.75)
  big = np.argwhere(mask[:25, :25, :25] > 0)
  small = np.argwhere(mask > 0)
  small = small[small.min(axis=1) >= 25]
  centres = np.concatenate([big, small])
  ids = np.repeat([0, 1], [len(big), len(small)])
  weights = patch_lib.per_lesion_weights(ids)
  np.testing.assert_allclose([weights[ids == 0].sum(), weights[ids == 1].sum()], [0.5, 0.5])
  empty = index.__class__(index.corners, np.zeros((0, 3), np.int32), index.ok)  # pasted only
  rng = np.random.default_rng(1)
  drawn = [patch_lib.draw_corner(rng, empty, True, centres, P, weights, by_lesion=True)
           for _ in range(2000)]
  share, on_lesion = _share_on_small(drawn, mask)
  assert on_lesion and 0.45 < share < 0.55


def test_pipeline_samples_pasted_lesions_by_lesion_when_asked(tiny_cohort):
  exams = tiny_cohort.select(split="train", labelled=True)
  load = lesion_load.LoadSpec(probability=1.0, added_ml=(20.0, 40.0))
  spec = _spec(lesion_fraction=0.5, lesion_load=load, lesion_centring="lesion")
  source = pipeline.PatchSource(exams, spec, exams_lib.ExamCache(8, patch_size=P))
  plan = source.load_plan(0, 0, 0)
  assert len(plan.pastes) >= 2
  starts = np.cumsum([0] + [int(p.hard.sum()) for p in plan.pastes])
  shares = [plan.centre_weights[a:b].sum() for a, b in zip(starts[:-1], starts[1:])]
  np.testing.assert_allclose(shares, 1 / len(plan.pastes))
  voxel = pipeline.PatchSource(exams, _spec(lesion_fraction=0.5, lesion_load=load),
                               exams_lib.ExamCache(8, patch_size=P))
  assert voxel.load_plan(0, 0, 0).centre_weights is None
  with pytest.raises(ValueError, match="lesion_centring"):
    pipeline.PatchSource(exams, _spec(lesion_centring="blob"), exams_lib.ExamCache(8, patch_size=P))


def test_patches_centred_by_lesion_land_on_smaller_lesions(tiny_cohort):
  from scipy import ndimage

  def sizes_at_centres(centring):
    spec = _spec(lesion_fraction=1.0, lesion_centring=centring)
    exams, batches = _batches(tiny_cohort, spec, 12)
    sizes = []
    for b in batches:
      arrays = exams_lib.load_exam(exams[int(b["exam_index"][0])], patch_size=P)
      lesion = np.any([m > 0 for m in arrays.masks], axis=0)
      labels, _ = ndimage.label(lesion, structure=ndimage.generate_binary_structure(3, 1))
      counts = np.bincount(labels.ravel())
      sizes += [counts[labels[tuple(c + P // 2)]] for c in b["corner"]]
    return np.array(sizes)
  by_voxel, by_lesion = sizes_at_centres("voxel"), sizes_at_centres("lesion")
  assert (by_lesion > 0).all()  # every patch still centred on a lesion
  assert np.median(by_lesion) < 0.5 * np.median(by_voxel)


def test_grid_phases_show_each_exam_at_half_voxel_placements_image_and_mask_alike(tiny_cohort):
  """data.grid_phases=8: each group's exam is sampled onto the (32³) model grid at one of its 8
  half-voxel phases. Every patch is a cut of exactly one phase's exam, its mask a cut of that
  phase's mask (one of its raters'); the phases vary over groups; the groups' exams are those
  drawn with 1 (the corners are drawn from the phase's own brain and lesions)."""
  shape = (32, 32, 32)
  exams = tiny_cohort.select(split="train", labelled=True)

  def batches(phases):
    spec = _spec(grid_phases=phases, patches_per_exam=4, min_brain_fraction=0.3)
    cache = exams_lib.ExamCache(4 * phases, patch_size=P, model_shape=shape)
    return [pipeline.make_dataset(exams, spec, cache, 12)[i] for i in range(12)]

  on, off = batches(8), batches(1)
  loaded = {(e.exam_id, ph): exams_lib.load_exam(e, model_shape=shape, patch_size=P,
                                                 phase=ph if any(ph) else None)
            for e in exams for ph in nifti.half_voxel_phases()}
  seen = set()
  for b_on, b_off in zip(on, off):
    np.testing.assert_array_equal(b_on["exam_index"], b_off["exam_index"])
    for image, mask, corner, index in zip(b_on["image"], b_on["mask"], b_on["corner"],
                                          b_on["exam_index"]):
      exam = exams[int(index)]
      matches = [ph for ph in nifti.half_voxel_phases()
                 if np.array_equal(image, patch_lib.cut(loaded[(exam.exam_id, ph)].images,
                                                        corner, P))]
      assert len(matches) == 1
      a = loaded[(exam.exam_id, matches[0])]
      assert any(np.array_equal(mask[..., 0], patch_lib.cut(m, corner, P)) for m in a.masks)
      seen.add(matches[0])
  assert len(seen) >= 4
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(on, off))
