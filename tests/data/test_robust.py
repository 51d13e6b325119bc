"""Robust training (issue 21): sequence dropout (msjax/data/pipeline.py) and the acquisition
augmentation, thick slices, bias field, noise (msjax/data/acquisition.py)."""
import itertools

import numpy as np
import pytest

from msjax.data import acquisition as acq
from msjax.data import exams as exams_lib
from msjax.data import pipeline
from msjax.data.manifest import MODALITIES

P = 16
FLAIR = MODALITIES.index("FLAIR")
LESJAK = np.array([m in ("T1W", "T1WKS", "T2W", "FLAIR") for m in MODALITIES])


def _batches(cohort, n, **kw):
  spec = pipeline.SamplerSpec(**dict(dict(task="segmentation", patch_size=P, patches_per_exam=6,
                                          seed=3), **kw))
  exams = cohort.select(split="train", labelled=spec.task == "segmentation" or None)
  ds = pipeline.make_dataset(exams, spec, exams_lib.ExamCache(8, patch_size=P), n)
  return exams, [ds[i] for i in range(n)]


def test_drop_sequences_keeps_flair_and_shows_every_subset_with_it():
  rng = np.random.default_rng(0)
  draws = [pipeline.drop_sequences(LESJAK, rng) for _ in range(3000)]
  assert all(d[FLAIR] and not (d & ~LESJAK).any() for d in draws)  # FLAIR kept, nothing added
  subsets = {tuple(np.flatnonzero(d)) for d in draws}
  others = [c for c in np.flatnonzero(LESJAK) if c != FLAIR]
  expected = {tuple(sorted(set(s) | {FLAIR})) for k in range(3)
              for s in itertools.combinations(others, k)}
  assert subsets == expected  # all 7 proper subsets with FLAIR, never the full set
  flair_only = np.mean([d.sum() == 1 for d in draws])
  assert abs(flair_only - 1 / 3) < 0.04  # kept count uniform in 0..2
  # without FLAIR, or with FLAIR alone, nothing is dropped
  no_flair = LESJAK.copy()
  no_flair[FLAIR] = False
  np.testing.assert_array_equal(pipeline.drop_sequences(no_flair, rng), no_flair)
  only = np.zeros(5, bool)
  only[FLAIR] = True
  np.testing.assert_array_equal(pipeline.drop_sequences(only, rng), only)


def test_sequence_dropout_zeroes_whole_channels_and_leaves_the_rest(tiny_cohort):
  exams, plain = _batches(tiny_cohort, 8)
  _, dropped = _batches(tiny_cohort, 8, sequence_dropout=0.5)
  _, again = _batches(tiny_cohort, 8, sequence_dropout=0.5)
  n_patches, n_flair_only, n_dropped, n_expected = 0, 0, 0, 0.0
  for a, b, c in zip(plain, dropped, again):
    for key in a:
      np.testing.assert_array_equal(b[key], c[key])  # seeded
    # the same patches and masks: dropout draws from its own generator
    np.testing.assert_array_equal(a["corner"], b["corner"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    exam = exams[int(a["exam_index"][0])]
    has = np.array([m in exam.images for m in MODALITIES])
    for k in range(len(a["image"])):
      live = b["image"][k].any(axis=(0, 1, 2))
      for ch in range(5):
        if live[ch]:
          np.testing.assert_array_equal(b["image"][k][..., ch], a["image"][k][..., ch])
        else:
          assert not b["image"][k][..., ch].any()
      if has[FLAIR]:
        assert live[FLAIR]
        n_others = int(has.sum()) - 1
        n_expected += 0.5 / n_others if n_others else 0.0
        n_flair_only += n_others > 0 and live.sum() == 1
      n_dropped += int(has.sum() - live.sum()) > 0
      n_patches += 1
  assert 0.3 * n_patches < n_dropped < 0.7 * n_patches
  assert abs(n_flair_only - n_expected) < 3 * np.sqrt(n_expected) + 1


def test_pretraining_sequence_dropout_keeps_flair(tiny_cohort):
  exams, batches = _batches(tiny_cohort, 6, task="position", sequence_dropout=1.0)
  dropped = 0
  for b in batches:
    exam = exams[int(b["exam_index"][0])]
    live = b["image"].any(axis=(1, 2, 3))
    if "FLAIR" in exam.images:
      assert live[:, FLAIR].all()
    dropped += int((len(exam.images) - live.sum(axis=1)).sum())
  assert dropped > 0


def test_sequence_subsets_name_what_training_shows():
  full = ["T1W", "T1WKS", "T2W", "FLAIR"]
  assert pipeline.sequence_subsets(full, 0.0) == [("T1W", "T1WKS", "T2W", "FLAIR")]
  subsets = pipeline.sequence_subsets(full, 0.5)
  assert len(subsets) == 8 and all("FLAIR" in s for s in subsets)
  assert subsets[0] == ("T1W", "T1WKS", "T2W", "FLAIR") and subsets[-1] == ("FLAIR",)
  assert ("T1W", "FLAIR") in subsets and ("T2W", "FLAIR") in subsets
  assert pipeline.sequence_subsets(["T1W", "T2W"], 0.5) == [("T1W", "T2W")]  # no FLAIR
  assert len(pipeline.sequence_subsets(full, 0.0, modality_dropout=0.2)) == 15


def _smooth_channel(rng, n=32):
  """A brain-like channel: smooth structure plus texture, zero outside a ball."""
  i = np.indices((n, n, n)).astype(np.float32)
  x = (np.sin(i[0] / 2.0) + np.sin(i[1] / 2.0) + np.sin(i[2] / 2.0)
       + 0.3 * rng.normal(size=(n, n, n))).astype(np.float32)
  ball = ((i - (n - 1) / 2) ** 2).sum(0) < (0.45 * n) ** 2
  return np.where(ball, x, 0).astype(np.float32)


def _hf(x, axis):
  return float(np.mean(np.diff(x, axis=axis) ** 2))


def test_thick_slices_blur_along_their_axis_only():
  n = 32
  i = np.indices((n, n, n)).astype(np.float32)
  ball = ((i - (n - 1) / 2) ** 2).sum(0) < (0.45 * n) ** 2
  for axis in range(3):
    for a in range(3):
      # a 4.5 mm texture (3 voxels of 1.5 mm) along axis a only, in a brain-like ball
      x = np.where(ball, 1 + np.sin(2 * np.pi * i[a] / 3), 0).astype(np.float32)
      y = acq.thick_slices(x, axis, 4.0 / 1.5, phase=1.3)  # 4 mm slices
      assert y.shape == x.shape and y.dtype == np.float32
      np.testing.assert_array_equal(y == 0, x == 0)  # outside the brain stays zero
      ratio = _hf(y, a) / _hf(x, a)
      assert ratio < 0.1 if a == axis else ratio > 0.95, (axis, a, ratio)
      assert abs(y[ball].mean() - x[ball].mean()) < 0.05
  # a realistic channel: the mean kept, less detail along the slice axis than across it
  x = _smooth_channel(np.random.default_rng(0))
  y = acq.thick_slices(x, 2, 4.0 / 1.5, phase=0.2)
  ratios = [_hf(y, a) / _hf(x, a) for a in range(3)]
  assert ratios[2] < 0.8 * min(ratios[:2]), ratios
  assert abs(y[x != 0].mean() - x[x != 0].mean()) < 0.05
  np.testing.assert_array_equal(acq.thick_slices(x, 0, 1.0), x)  # 1 voxel thick: unchanged


def test_thick_slices_sample_every_slice_and_interpolate_linearly():
  # a linear ramp survives blur, sampling and linear interpolation (away from the edges)
  ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None] + 1, (4, 32, 4)).copy()
  y = acq.thick_slices(ramp, 1, 3.0, phase=0.5)
  np.testing.assert_allclose(y[:, 6:-6], ramp[:, 6:-6], atol=1e-3)
  down, up = acq.slice_matrices(32, 3.0, 0.5)
  np.testing.assert_allclose(down.sum(1), 1, atol=1e-6)
  np.testing.assert_allclose(up.sum(1), 1, atol=1e-6)
  assert 11 <= len(down) <= 13  # one sample per 3 voxels (plus the edge slices)


def test_slices_with_a_gap_sample_at_their_spacing():
  # slices 3 voxels thick, 4.5 apart: fewer samples, a ramp still survives, the rows still weigh 1
  down, up = acq.slice_matrices(32, 3.0, 0.5, spacing=4.5)
  np.testing.assert_allclose(down.sum(1), 1, atol=1e-6)
  np.testing.assert_allclose(up.sum(1), 1, atol=1e-6)
  assert 8 <= len(down) <= 9
  assert set(np.diff(np.argmax(down, axis=1))[1:-1]) <= {4, 5}  # the edge slices clamp
  ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None] + 1, (4, 32, 4)).copy()
  y = acq.thick_slices(ramp, 1, 3.0, phase=0.5, spacing=4.5)
  np.testing.assert_allclose(y[:, 8:-8], ramp[:, 8:-8], atol=1e-3)
  # slices one voxel thick two voxels apart still lose every other voxel's own detail
  x = _smooth_channel(np.random.default_rng(3))
  assert not np.allclose(acq.thick_slices(x, 2, 1.0, phase=0.0, spacing=2.0), x, atol=1e-3)


def test_slice_draws_stay_in_their_ranges():
  spec = acq.Spec(thick_exam=1.0, slice_mm=(3.0, 6.0), slice_gap=(0.1, 0.3))
  rng = np.random.default_rng(0)
  past_thickness = 0
  for _ in range(200):
    axis, thickness, phase, step = acq.draw_slices(rng, spec, (1.5, 1.0, 3.0))
    mm = thickness * (1.5, 1.0, 3.0)[axis]
    assert 3.0 <= mm <= 6.0
    assert thickness * 1.1 <= step <= thickness * 1.3 and 0.0 <= phase < step
    past_thickness += phase > thickness  # the slice positions cover the whole spacing
  assert past_thickness > 5
  # augment slices at the drawn spacing: the same draws by hand give the same patch
  image = np.stack([_smooth_channel(np.random.default_rng(1))] * 2, -1)
  r = np.random.default_rng(5)
  assert r.random() < 1.0  # the patch's draw of thick_exam
  axis, thickness, phase, step = acq.draw_slices(r, spec, (1.5, 1.5, 1.5))
  expect = acq.thick_slices(image[..., 0], axis, thickness, phase, spacing=step)
  out = acq.augment(image, np.random.default_rng(5), spec)
  np.testing.assert_allclose(out[..., 0], expect)
  with pytest.raises(ValueError, match="slice_gap"):
    acq.Spec(slice_gap=(-0.2, 0.1))
  for bad in (dict(thick_exam=1.5), dict(thick_slices=-0.1), dict(noise=2.0),
              dict(bias_field=-1.0)):
    with pytest.raises(ValueError, match=f"{next(iter(bad))} = .*a probability"):
      acq.Spec(**bad)
  with pytest.raises(ValueError, match="slice_mm"):
    acq.Spec(slice_mm=(6.0, 2.0))


def test_thick_exam_slices_every_sequence_along_one_axis():
  rng = np.random.default_rng(0)
  image = np.stack([_smooth_channel(rng) for _ in range(5)], -1)
  image[..., 1] = 0  # a missing modality
  spec = acq.Spec(thick_exam=1.0, slice_mm=(5.0, 6.0), slice_gap=(0.1, 0.3))
  axes = set()
  for seed in range(6):
    out = acq.augment(image, np.random.default_rng(seed), spec)
    np.testing.assert_array_equal(out, acq.augment(image, np.random.default_rng(seed), spec))
    np.testing.assert_array_equal(out == 0, image == 0)
    present = [c for c in range(5) if image[..., c].any()]
    # per channel, the axis that lost the most detail: the same one for every sequence
    lost = [int(np.argmin([_hf(out[..., c], a) / _hf(image[..., c], a) for a in range(3)]))
            for c in present]
    assert len(set(lost)) == 1, lost
    axes.add(lost[0])
  assert len(axes) > 1  # the axis is drawn
  # one protocol for all: two identical sequences (no noise, no bias) come out identical
  twins = np.stack([image[..., 0], image[..., 0]], -1)
  for seed in range(4):
    out = acq.augment(twins, np.random.default_rng(seed), spec)
    assert not np.allclose(out[..., 0], twins[..., 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
  # per channel (thick_exam off, no gap): the draws and result of a single thick_slices call
  spec = acq.Spec(thick_slices=1.0, slice_mm=(2.0, 6.0))
  one = image[..., :1]
  r = np.random.default_rng(7)
  assert r.random() < 1.0  # the channel's draw of thick_slices
  axis = int(r.integers(3))
  thickness = r.uniform(2.0, 6.0) / 1.5
  expect = acq.thick_slices(one[..., 0], axis, thickness, r.uniform(0, thickness))
  np.testing.assert_allclose(acq.augment(one, np.random.default_rng(7), spec)[..., 0], expect)


def test_bias_field_is_smooth_and_positive():
  rng = np.random.default_rng(1)
  for _ in range(10):
    b = acq.bias_field((32, 32, 32), rng, acq.BIAS_STD)
    assert b.shape == (32, 32, 32) and (b > 0).all()
    log = np.log(b)
    for a in range(3):  # tiny voxel-to-voxel steps
      assert np.abs(np.diff(log, axis=a)).max() < 4 * acq.BIAS_STD / 32 * 3
      # trilinear in 3³ control points a patch apart: the slope changes on one plane at most
      across = tuple(k for k in range(3) if k != a)
      kinks = (np.abs(np.diff(log, n=2, axis=a)) > 1e-9).any(axis=across)
      assert kinks.sum() <= 2
    assert log.std() < 1.0


def test_acquisition_augmentation_seeded_keeps_zeros_and_changes_tissue():
  rng = np.random.default_rng(0)
  image = np.stack([_smooth_channel(rng) for _ in range(5)], -1)
  image[..., 1] = 0  # a missing modality
  spec = acq.Spec(thick_slices=0.5, slice_mm=(2.0, 6.0), bias_field=0.5, noise=0.5)
  changed = 0
  for seed in range(12):
    out = acq.augment(image, np.random.default_rng(seed), spec)
    np.testing.assert_array_equal(out, acq.augment(image, np.random.default_rng(seed), spec))
    assert out.shape == image.shape and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out == 0, image == 0)
    assert np.isfinite(out).all()
    tissue = image[..., 0] != 0
    assert abs(out[..., 0][tissue].mean() - image[..., 0][tissue].mean()) < 0.5
    changed += not np.allclose(out, image)
  assert changed >= 8
  assert not acq.Spec().on
  np.testing.assert_array_equal(acq.augment(image, rng, acq.Spec()), image)


def test_acquisition_in_the_pipeline_leaves_masks_and_patches(tiny_cohort):
  # the tiny cohort has 4 mm voxels: slices of 8-16 mm are 2-4 voxels
  spec = acq.Spec(thick_slices=1.0, slice_mm=(8.0, 16.0), bias_field=1.0, noise=1.0)
  _, plain = _batches(tiny_cohort, 4, augment=True)
  _, aug = _batches(tiny_cohort, 4, augment=True, acquisition=spec)
  _, again = _batches(tiny_cohort, 4, augment=True, acquisition=spec)
  for a, b, c in zip(plain, aug, again):
    np.testing.assert_array_equal(b["image"], c["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    np.testing.assert_array_equal(a["corner"], b["corner"])
    np.testing.assert_array_equal(a["image"] == 0, b["image"] == 0)
    assert not np.allclose(a["image"], b["image"])


def test_config_fields_reach_the_sampler_per_task():
  from conftest import load_config
  from msjax import config_base
  from msjax.train import inputs
  c = load_config("finetune")
  assert c.data.sequence_dropout == 0 and not inputs.sampler_spec(c, "segmentation").acquisition.on
  c = load_config("lesjak")
  d = c.data
  assert d.sequence_dropout > 0 and d.pretrain_sequence_dropout > 0 and d.thick_slices > 0
  stage = config_base.stage("finetune", d, c.model, c.finetune)
  seg = inputs.sampler_spec(stage, "segmentation")
  assert seg.sequence_dropout == d.sequence_dropout
  assert seg.acquisition.thick_slices == d.thick_slices
  stage.data.thick_exam, stage.data.slice_gap = 0.25, (0.0, 0.3)
  assert inputs.sampler_spec(stage, "segmentation").acquisition.thick_exam == 0.25
  assert inputs.sampler_spec(stage, "segmentation").acquisition.slice_gap == (0.0, 0.3)
  stage.data.pretrain_sequence_dropout = 0.25
  assert inputs.sampler_spec(stage, "position").sequence_dropout == 0.25
  assert load_config("lesjak", "full").data.sequence_dropout == 0
