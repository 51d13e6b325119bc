"""Prediction in each exam's own space, written as BIDS derivatives (msjax/infer/predict.py, outputs.py)."""
import csv
import dataclasses
import functools
import json
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import LESJAK_MNI, needs_lesjak
from msjax.data import cohort as cohort_lib
from msjax.data import exams as exams_lib
from msjax.data import lesions as lesions_lib
from msjax.data import nifti
from msjax.infer import predict


@pytest.mark.slow  # needs the session's trained model
def test_predict_writes_bids_derivatives_in_native_space(trained, tiny_cohort, tmp_path):
  predictor = predict.Predictor(trained)
  exams = [tiny_cohort.by_id("synth001"), tiny_cohort.by_id("synth003")]  # LPS and RAS files
  # a low threshold so that the tiny smoke model predicts some lesion to tabulate
  options = predict.PredictOptions.from_config(batch_size=8, sampler="sliding", threshold=0.2)
  rows = predict.predict_cohort(predictor, exams, str(tmp_path), options)
  for exam, row in zip(exams, rows):
    src = nib.load(exam.images["FLAIR"])
    anat = tmp_path / exam.bids_prefix / "anat"
    assert row["mask"] == str(anat / f"{exam.bids_prefix}_space-orig_desc-lesion_mask.nii.gz")
    for key in ("mask", "probseg", "uncertainty"):
      img = nib.load(row[key])
      assert img.shape == src.shape, key
      np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    mask = np.asarray(nib.load(row["mask"]).dataobj)
    prob = np.asarray(nib.load(row["probseg"]).dataobj)
    np.testing.assert_array_equal(mask, prob >= 0.2)
    assert set(np.unique(mask)) <= {0, 1}
    brain = np.asarray(nib.load(exam.brain_mask).dataobj)
    assert not prob[brain == 0].any()  # nothing outside the brain, in the file's own voxel order
    # one row per 6-connected component; the volumes add up to the mask's
    lesions = list(csv.DictReader(open(row["table"])))
    voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
    assert len(lesions) == row["components"]
    assert abs(sum(float(r["volume_ml"]) for r in lesions) - mask.sum() * voxel_ml) < 1e-3
    for r in lesions:
      assert 0 < float(r["mean_probability"]) <= float(r["max_probability"]) <= 1
      assert r["mni_x_mm"] == ""  # a synthetic head is not on an MNI grid: no MNI coordinates
    assert os.path.getsize(row["overlay"]) > 5000
  assert sum(r["components"] for r in rows) > 0
  description = json.load(open(tmp_path / "dataset_description.json"))
  assert description["DatasetType"] == "derivative"
  assert description["GeneratedBy"][0]["Name"] == "msjax" and trained in str(description)
  with open(tmp_path / "predictions.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["exam_id"] for r in table] == ["synth001", "synth003"]
  assert float(table[0]["volume_ml"]) >= 0


@pytest.mark.slow
def test_paper_sampler_leaves_uncovered_voxels_empty(trained, tiny_cohort):
  predictor = predict.Predictor(trained)
  arrays = exams_lib.load_exam(tiny_cohort.by_id("synth000"), patch_size=16)
  pred, n = predictor.predict_exam(arrays, predict.PredictOptions.from_config(
      batch_size=8, sampler="random", n_random=5))
  assert n == 5
  assert (pred.coverage == 0).any()
  assert not pred.probability[pred.coverage == 0].any()


@pytest.mark.slow
@needs_lesjak()
def test_predict_on_real_lesjak_grid(trained, tmp_path):
  """A smoke model on the real 182×218×182 LAS scans: masks come back on that exact grid."""
  predictor = predict.Predictor(trained)
  predictor.model_shape = (64, 64, 64)  # a coarse model grid keeps this CPU test short
  exam = cohort_lib.load_cohort(LESJAK_MNI).by_id("patient07")
  options = predict.PredictOptions.from_config(batch_size=8, overlap=0.0, threshold=0.05)
  row = predict.predict_cohort(predictor, [exam], str(tmp_path), options)[0]
  img, src = nib.load(row["mask"]), nib.load(exam.images["FLAIR"])
  assert img.shape == (182, 218, 182) == src.shape
  np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
  assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
  lesions = list(csv.DictReader(open(row["table"])))
  assert lesions and all(r["mni_x_mm"] == r["centroid_x_mm"] for r in lesions)  # on MNI's grid


def test_small_predicted_lesions_are_removed_by_the_evaluator_s_size_rule():
  mask = np.zeros((12, 12, 12), np.uint8)
  mask[1, 1, 1] = 1                  # 1 voxel
  mask[5, 5, 5:7] = 1                # 2 voxels
  mask[8:10, 8:10, 8:10] = 1         # 8 voxels
  mask[1, 10, 1] = mask[2, 11, 1] = 1  # two diagonal voxels: two 6-connected lesions of 1
  kept = lesions_lib.remove_small_lesions(mask, voxel_mm3=1.0, max_mm3=3.0)
  np.testing.assert_array_equal(kept, (np.arange(12)[:, None, None] >= 8) * (mask > 0))
  two_or_more = mask.copy()
  two_or_more[1, 1, 1] = two_or_more[1, 10, 1] = two_or_more[2, 11, 1] = 0
  np.testing.assert_array_equal(lesions_lib.remove_small_lesions(mask, 1.0, 1.0), two_or_more)
  assert lesions_lib.remove_small_lesions(mask, 1.0, 0.0) is mask  # 0: the option is off


def test_faint_lesions_go_and_sure_ones_stay_whole():
  """Hysteresis: a lesion is kept, its whole extent at p >= threshold, only where one of its
  voxels reaches min_lesion_peak; a faint one goes whatever its size. Raising the threshold
  instead would shrink the sure lesion to its core."""
  p = np.zeros((12, 12, 12), np.float32)
  p[1:4, 1:4, 1:4] = 0.6             # 27 voxels, faint throughout
  p[6:10, 6:10, 6:10] = 0.55         # 64 voxels at the threshold's margin ...
  p[7, 7, 7] = 0.95                  # ... around one sure voxel
  p[1, 10, 10] = 0.9                 # one sure voxel alone
  mask = lesions_lib.mask_of(p, 1.0, 0.5, 0.0, 0.8)
  want = np.zeros(p.shape, np.uint8)
  want[6:10, 6:10, 6:10] = 1
  want[1, 10, 10] = 1
  np.testing.assert_array_equal(mask, want)
  big = want.copy()
  big[1, 10, 10] = 0                 # the lone voxel goes by size (3 mm³) as well
  np.testing.assert_array_equal(lesions_lib.mask_of(p, 1.0, 0.5, 3.0, 0.8), big)
  np.testing.assert_array_equal(lesions_lib.mask_of(p, 1.0, 0.5), (p >= 0.5).astype(np.uint8))
  options = predict.PredictOptions.from_config(threshold=0.5, min_lesion_peak=0.8)
  np.testing.assert_array_equal(predict.lesion_mask(p, 1.0, options), want)


def test_predict_options_come_whole_from_each_config():
  import dataclasses

  from conftest import load_config
  from msjax import stages
  flat = load_config("predict", "smoke", seed=3, allow_any_geometry=True)
  options = predict.PredictOptions.from_config(flat)
  assert (options.batch_size, options.seed, options.allow_any_geometry) == (8, 3, True)
  lesjak = stages.predict_options(load_config("lesjak"), sampler="random")
  assert (lesjak.mirror, lesjak.batch_size, lesjak.sampler) == (True, 16, "random")
  with pytest.raises(dataclasses.FrozenInstanceError):
    options.threshold = 0.3
  with pytest.raises(ValueError, match="unknown sampler 'grid'"):
    predict.PredictOptions.from_config(sampler="grid")


def test_a_finished_run_is_read_from_its_best_checkpoint_when_it_validated(tmp_path):
  from msjax import checkpoint
  (tmp_path / "run" / "checkpoints" / "6").mkdir(parents=True)
  assert checkpoint.find_checkpoint_dir(str(tmp_path / "run")) == str(tmp_path / "run" /
                                                                       "checkpoints")
  (tmp_path / "run" / "best" / "3").mkdir(parents=True)
  assert checkpoint.find_checkpoint_dir(str(tmp_path / "run")) == str(tmp_path / "run" / "best")
  given = str(tmp_path / "run" / "checkpoints")
  assert checkpoint.find_checkpoint_dir(given) == given


class _PointwiseNetwork:
  """Stands in for a Predictor in predict.phased_probabilities: a pointwise function of the FLAIR
  channel (a sliding window gives it back exactly wherever a window lies), member k adding k/10;
  it records which member each pass asked for."""
  FLAIR = exams_lib.MODALITIES.index("FLAIR")

  def __init__(self, members: int = 1, patch: int = 16):
    self.members, self.patch, self.calls = members, patch, []

  @classmethod
  def of(cls, images):
    return np.clip(images[..., cls.FLAIR] / 8 + 0.5, 0, 1) * 0.5

  def predict_one_pass(self, x, member=None):
    self.calls.append(member)
    return self.of(x) + (0.0 if member is None else member / 10)

  def predict_exam(self, arrays, options):
    return predict.probabilities(self.predict_one_pass, arrays, self.patch, options)


def test_grid_phases_average_the_exam_sampled_at_eight_half_voxel_offsets(tiny_cohort):
  """predict.phases=8: the exam (40³ at 4 mm) sampled onto a 24³ model grid at its 8 half-voxel
  phases, each predicted, brought back onto the exam's grid and averaged there."""
  exam = tiny_cohort.by_id("synth000")
  load = functools.partial(exams_lib.load_exam, exam, model_shape=(24, 24, 24), patch_size=16)
  arrays = load()
  native = arrays.native_grid.shape
  options = predict.PredictOptions.from_config(batch_size=4, mirror=True, phases=8)
  pred, n = predict.phased_probabilities(_PointwiseNetwork(), arrays, load, options)
  assert pred.probability.shape == native
  expected, windows = 0.0, 0
  for phase in predict.grid_phases(8):
    moved = load(phase=phase)
    windows += len(predict.sliding_window.sliding_window_corners(moved.shape, 16, 0.5,
                                                                brain=moved.brain))
    p = np.where(moved.brain > 0, _PointwiseNetwork.of(moved.images), 0.0)
    expected = expected + nifti.resample_box(
        p, native, offset=nifti.back_offset(phase, moved.shape, native))
  np.testing.assert_allclose(pred.probability, expected / 8, atol=1e-5)
  assert n == windows
  one, _ = predict.phased_probabilities(_PointwiseNetwork(), arrays, load,
                                        dataclasses.replace(options, phases=1))
  assert np.abs(one.probability - pred.probability).max() > 0.02  # the phases differ
  assert len(set(map(tuple, np.round(np.array(predict.grid_phases(8)), 3)))) == 8


class _ConstantNetwork(_PointwiseNetwork):
  """0.3 everywhere (member k: 0.3 + k/10)."""

  @classmethod
  def of(cls, images):
    return np.full(images.shape[:-1], 0.3, np.float32)


def test_offset_windows_weigh_each_phase_by_its_windows_importance(tiny_cohort):
  """phase_windows='offset': each phase predicts only its share of one sliding window's windows
  (fewer patches than a full window per phase), and the phases' maps are averaged by their
  windows' importance at each voxel: one network's constant comes back as it is; members dealt
  over the phases (member k adding k/10) mix differently from voxel to voxel, where equal phase
  weights give every voxel the same mix."""
  exam = tiny_cohort.by_id("synth000")
  load = functools.partial(exams_lib.load_exam, exam, model_shape=(24, 24, 24), patch_size=8)
  arrays = load()
  options = predict.PredictOptions.from_config(batch_size=4, mirror=True, phases=8,
                                               phase_windows="offset")
  one, n = predict.phased_probabilities(_ConstantNetwork(patch=8), arrays, load, options)
  full, n_full = predict.phased_probabilities(
      _ConstantNetwork(patch=8), arrays, load, dataclasses.replace(options, phase_windows="all"))
  windows = sum(len(predict.sliding_window.offset_window_corners(
      load(phase=phase).shape, 8, k, brain=load(phase=phase).brain))
      for k, phase in enumerate(predict.grid_phases(8)))
  assert n == windows < n_full / 2
  inside = np.abs(full.probability - 0.3) < 1e-6  # in the brain at every phase
  assert inside.sum() > 1000
  np.testing.assert_allclose(one.probability[inside], 0.3, atol=1e-5)
  net = _ConstantNetwork(members=3, patch=8)
  dealt, _ = predict.phased_probabilities(net, arrays, load,
                                          dataclasses.replace(options, flips="dealt"))
  assert set(net.calls) == {0, 1, 2}
  same, _ = predict.phased_probabilities(
      _ConstantNetwork(members=3, patch=8), arrays, load,
      dataclasses.replace(options, flips="dealt", phase_windows="all"))
  np.testing.assert_allclose(same.probability[inside], 0.3 + 0.7 / 8, atol=1e-5)
  mix = dealt.probability[inside]
  assert mix.min() >= 0.3 - 1e-5 and mix.max() <= 0.5 + 1e-5 and mix.std() > 1e-3
  with pytest.raises(ValueError, match="phase_windows"):
    predict.PredictOptions.from_config(phases=1, phase_windows="offset")
  with pytest.raises(ValueError, match="phase_windows"):
    predict.PredictOptions.from_config(phases=8, phase_windows="every")


def test_an_ensemble_deals_the_grid_phases_out_over_its_members(tiny_cohort):
  exam = tiny_cohort.by_id("synth000")
  load = functools.partial(exams_lib.load_exam, exam, model_shape=(24, 24, 24), patch_size=16)
  arrays = load()
  for flips, members in (("dealt", [0, 1, 2, 0, 1, 2, 0, 1]), ("all", [None])):
    net = _PointwiseNetwork(members=3)
    options = predict.PredictOptions.from_config(batch_size=64, mirror=True, flips=flips,
                                                 phases=8)
    predict.phased_probabilities(net, arrays, load, options)
    assert len(net.calls) == 8  # one batch of windows per phase
    assert sorted(set(net.calls), key=str) == sorted(set(members), key=str)
    assert net.calls == (members if flips == "dealt" else [None] * 8)


def test_phases_predicted_in_shares_weigh_back_to_the_dealt_ensemble(tiny_cohort):
  """`only` predicts a share of the phases (studies/seed_ensemble.py's mode 'shipped', one
  network per share): the shares' maps weighted by their phase counts give back what the
  ensemble's dealt phases make in one call (3 members: shares of 3, 3 and 2 phases)."""
  exam = tiny_cohort.by_id("synth000")
  load = functools.partial(exams_lib.load_exam, exam, model_shape=(24, 24, 24), patch_size=16)
  arrays = load()
  options = predict.PredictOptions.from_config(batch_size=64, mirror=True, flips="dealt",
                                               phases=8)
  whole, _ = predict.phased_probabilities(_PointwiseNetwork(members=3), arrays, load, options)
  maps, counts = [], []
  for member in range(3):
    share = [k for k in range(8) if k % 3 == member]
    net = _PointwiseNetwork(members=3)
    pred, _ = predict.phased_probabilities(net, arrays, load, options, only=share)
    assert net.calls == [member] * len(share)  # only its phases, each by its member
    maps.append(pred.probability)
    counts.append(len(share))
  np.testing.assert_allclose(np.average(maps, axis=0, weights=counts), whole.probability,
                             atol=1e-5)
  assert np.abs(np.mean(maps, axis=0) - whole.probability).max() > 1e-3  # the weights matter


def test_grid_phases_are_refused_with_spread_flips_and_skipped_on_the_model_grid(trained,
                                                                                  tiny_cohort):
  with pytest.raises(ValueError, match="predict.phases=8 predicts each grid phase"):
    predict.PredictOptions.from_config(mirror=True, flips="spread", phases=8)
  with pytest.raises(ValueError, match="predict.phases=4"):
    predict.PredictOptions.from_config(phases=4)
  exam = tiny_cohort.by_id("synth000")
  with pytest.raises(ValueError, match="no finer grid"):
    exams_lib.load_exam(exam, patch_size=16, phase=(0.5, 0, 0))
  # an exam stored on the model grid is predicted once (the phases need a finer grid)
  predictor = predict.Predictor(trained)
  options = predict.PredictOptions.from_config(batch_size=8, phases=8)
  seg = predict.segment_exam(predictor, exam, options)
  once = predict.segment_exam(predictor, exam, dataclasses.replace(options, phases=1))
  assert seg.patches == once.patches
  np.testing.assert_array_equal(seg.probability, once.probability)


def test_warm_up_builds_the_network_the_exam_then_runs(trained, tiny_cohort):
  """segment builds and compiles the network while the first raw exam is preprocessed
  (Predictor.warm_up): that exam's passes, with the grid phases or without, must then find it
  compiled (one function, one compilation), not compile again."""
  exam = tiny_cohort.by_id("synth000")
  load = functools.partial(exams_lib.load_exam, exam, model_shape=(24, 24, 24), patch_size=16)
  for phases in (8, 1):
    predictor = predict.Predictor(trained)
    options = predict.PredictOptions.from_config(batch_size=4, mirror=True, phases=phases)
    assert predictor.warm_up(options) > 0
    (compiled,) = predictor._predict.values()
    assert compiled._cache_size() == 1
    predict.phased_probabilities(predictor, load(), load, options)
    assert list(predictor._predict.values()) == [compiled], phases
    assert compiled._cache_size() == 1, phases


def test_an_unknown_window_choice_is_refused():
  with pytest.raises(ValueError, match="predict.windows"):
    predict.PredictOptions.from_config(windows="rim")
