"""Prediction in native space, samplers, evaluation, the experiment and the demo (smoke sizes)."""
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import LESJAK_MNI, load_config, needs_lesjak
from msjax.data import exams as exams_lib
from msjax import demo, experiment
from msjax.data import cohort as cohort_lib
from msjax.evaluate import evaluate_mode
from msjax.infer import predict, sliding_window
from msjax.train import loop


@pytest.fixture(scope="module")
def trained(tiny_cohort, tmp_path_factory):
  """A smoke-trained segmentation network (VAN, 16³ patches, width 4)."""
  w = str(tmp_path_factory.mktemp("finetune"))
  loop.train(load_config("finetune", "smoke", **{"data.cohort": tiny_cohort.root,
                                                 "train.steps": 3, "train.eval_every": 3}), w)
  return w


def test_sliding_window_covers_everything():
  corners = sliding_window.sliding_window_corners((40, 33, 16), 16, 0.5)
  cover = np.zeros((40, 33, 16), int)
  for c in corners:
    cover[c[0]:c[0] + 16, c[1]:c[1] + 16, c[2]:c[2] + 16] += 1
  assert cover.min() >= 1 and corners.max(0).tolist() == [24, 17, 0]
  w = sliding_window.gaussian_weight(16)
  assert w.max() == 1.0 and w.min() > 0 and w[8, 8, 8] > w[0, 0, 0]


def test_predict_volume_averages_overlaps_and_reports_spread():
  images = np.zeros((24, 24, 24, 1), np.float32)
  calls = []

  def fake(batch):  # patch k predicts the constant k (per call)
    calls.append(len(batch))
    return np.stack([np.full(batch.shape[1:4], float(len(calls) * 10 + i), np.float32)
                     for i in range(len(batch))])

  corners = np.array([[0, 0, 0], [8, 0, 0]], np.int32)
  pred = sliding_window.predict_volume(fake, images, corners, 16, batch_size=4,
                                       weighting="uniform")
  assert calls == [4]  # padded to the compiled batch size
  np.testing.assert_allclose(pred.probability[10, 0, 0], 10.5)  # mean of 10 and 11
  np.testing.assert_allclose(pred.spread[10, 0, 0], 0.5)
  assert pred.probability[2, 0, 0] == 10 and pred.spread[2, 0, 0] == 0
  assert pred.coverage[20, 20, 20] == 0 and pred.probability[20, 20, 20] == 0  # uncovered


def test_random_sampler_stays_in_brain():
  brain = np.zeros((40, 40, 40), np.uint8)
  brain[8:32, 8:32, 8:32] = 1
  corners = sliding_window.random_brain_corners(brain, 16, 150, seed=0)
  assert len(corners) == 150
  for c in corners[:20]:
    assert brain[c[0]:c[0] + 16, c[1]:c[1] + 16, c[2]:c[2] + 16].mean() >= 0.75


def test_predict_writes_bids_derivatives_in_native_space(trained, tiny_cohort, tmp_path):
  predictor = predict.Predictor(trained, batch_size=8)
  exams = [tiny_cohort.by_id("synth001"), tiny_cohort.by_id("synth003")]  # LPS and RAS files
  # a low threshold so that the tiny smoke model predicts some lesion to tabulate
  rows = predict.predict_cohort(predictor, exams, str(tmp_path), sampler="sliding", threshold=0.2)
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


def test_paper_sampler_leaves_uncovered_voxels_empty(trained, tiny_cohort):
  predictor = predict.Predictor(trained, batch_size=8)
  arrays = exams_lib.load_exam(tiny_cohort.by_id("synth000"), patch_size=16)
  pred, n = predictor.predict_exam(arrays, sampler="random", n_random=5)
  assert n == 5
  assert (pred.coverage == 0).any()
  assert not pred.probability[pred.coverage == 0].any()


def test_evaluate_mode_writes_summary(trained, tiny_cohort, tmp_path):
  config = load_config("predict", "smoke", **{"checkpoint": trained, "cohort": tiny_cohort.root,
                                              "exams": "test"})
  predict.run(config, str(tmp_path / "p"))
  ev = load_config("evaluate", "", predictions=str(tmp_path / "p"), cohort=tiny_cohort.root)
  summary = evaluate_mode.run(ev, str(tmp_path / "e"))
  saved = json.load(open(tmp_path / "e" / "summary.json"))
  assert saved["n"] == 1 and saved["exams"][0]["exam_id"] == "synth003"
  assert 0 <= saved["mean"]["dice"] <= 1 and "dice_rater1" in saved["exams"][0]
  assert summary["mean"]["dice"] == saved["mean"]["dice"]
  assert (tmp_path / "e" / "metrics.csv").exists()


@needs_lesjak()
def test_predict_on_real_lesjak_grid(trained, tmp_path):
  """A smoke model on the real 182×218×182 LAS scans: masks come back on that exact grid."""
  predictor = predict.Predictor(trained, batch_size=8)
  predictor.model_shape = (64, 64, 64)  # a coarse model grid keeps this CPU test short
  exam = cohort_lib.load_cohort(LESJAK_MNI).by_id("patient07")
  row = predict.predict_cohort(predictor, [exam], str(tmp_path), overlap=0.0, threshold=0.05)[0]
  img, src = nib.load(row["mask"]), nib.load(exam.images["FLAIR"])
  assert img.shape == (182, 218, 182) == src.shape
  np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
  assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
  lesions = list(csv.DictReader(open(row["table"])))
  assert lesions and all(r["mni_x_mm"] == r["centroid_x_mm"] for r in lesions)  # on MNI's grid


def test_experiment_smoke_writes_table_and_figure(tiny_cohort, tmp_path):
  config = load_config("paper_table2", "smoke", **{"data.cohort": tiny_cohort.root,
                                                   "strategies": "van,1",
                                                   "label_fractions": "0.5,1.0"})
  out = experiment.run(config, str(tmp_path))
  md = open(out["table_md"]).read()
  assert "| VAN |" in md and "| 1CF |" in md
  rows = list(csv.DictReader(open(out["table_csv"])))
  assert [r["strategy"] for r in rows] == ["VAN", "1CF"]
  assert all(0 <= float(r["dice"]) <= 100 for r in rows)
  for key in ("figure4", "dice_vs_fraction"):
    assert os.path.getsize(out[key]) > 5000
  assert len(out["rows"]) == 4  # 2 strategies x 2 fractions x 1 test exam


def test_demo_smoke(tmp_path):
  summary = demo.run(load_config("demo", "smoke"), str(tmp_path))
  assert summary["n"] == 1 and 0 <= summary["mean"]["dice"] <= 1
  times = json.load(open(tmp_path / "demo.json"))["times_s"]
  assert set(times) >= {"pretrain", "finetune", "predict", "evaluate"}
  assert (tmp_path / "finetune" / "loss_curve.png").exists()
  overlay = json.load(open(tmp_path / "demo.json"))["overlay"]
  assert overlay.endswith("sub-synth003_desc-lesion_overlay.png") and os.path.getsize(overlay) > 5000
  assert (tmp_path / "predict" / "predictions" / "sub-synth003" / "anat" /
          "sub-synth003_space-orig_label-lesion_desc-uncertainty_probseg.nii.gz").exists()


def test_sliding_window_skips_patches_without_brain_and_keeps_the_brain_s_prediction():
  rng = np.random.default_rng(0)
  brain = np.zeros((48, 48, 48), np.uint8)
  brain[10:30, 12:34, 8:28] = 1
  images = rng.standard_normal((48, 48, 48, 2)).astype(np.float32)

  def fake(batch):  # any deterministic function of the patch
    return np.tanh(batch[..., 0] * 0.3 + batch[..., 1:].mean(-1, keepdims=False)) * 0.5 + 0.5
  full = sliding_window.sliding_window_corners(brain.shape, 16, 0.5)
  skipped = sliding_window.sliding_window_corners(brain.shape, 16, 0.5, brain=brain)
  assert 0 < len(skipped) < len(full)
  a = sliding_window.predict_volume(fake, images, full, 16, 4)
  b = sliding_window.predict_volume(fake, images, skipped, 16, 4)
  inside = brain > 0
  np.testing.assert_allclose(a.probability[inside], b.probability[inside], rtol=1e-6)
  np.testing.assert_allclose(a.spread[inside], b.spread[inside], rtol=1e-5, atol=1e-7)
  assert (b.coverage[inside] > 0).all()
