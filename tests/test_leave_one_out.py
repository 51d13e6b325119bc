"""The real-data path: FLAIR-threshold baseline, augmentation, outline figures and the
leave-one-patient-out mode (on the tiny synthetic cohort; the baseline also on the Lesjak scans)."""
import csv
import json
import os

import nibabel as nib
import numpy as np

from conftest import LESJAK_MNI, load_config, needs_lesjak
from msjax.data import exams as exams_lib
from msjax.data import manifest as manifest_lib
from msjax import figures, leave_one_out
from msjax.data import cohort as cohort_lib
from msjax.data import nifti, pipeline
from msjax.evaluate import baseline, evaluate_mode, metrics
from msjax.infer import outputs


def _exam_with_flair(tmp_path, flair, lesion, name="case"):
  affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 40 voxels of 2 mm: an 80 mm field of view
  d = tmp_path / name
  d.mkdir()
  nib.save(nib.Nifti1Image(flair.astype(np.float32), affine), str(d / "FLAIR.nii.gz"))
  nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), str(d / "consensus_gt.nii.gz"))
  return manifest_lib.Exam(exam_id=name, patient_id=name, ms=True,
                         images={"FLAIR": str(d / "FLAIR.nii.gz")},
                         consensus=str(d / "consensus_gt.nii.gz"))


def test_threshold_fit_finds_the_separating_z_and_masks_follow_it(tmp_path):
  rng = np.random.default_rng(0)
  brain = np.zeros((40, 40, 40), bool)
  brain[4:36, 4:36, 4:36] = True
  flair = np.where(brain, rng.normal(1.0, 0.05, brain.shape), 0.0)
  lesion = np.zeros_like(brain)
  lesion[10:14, 10:14, 10:14] = True
  flair[lesion] = 3.0  # far above the rest: one threshold separates perfectly
  exam = _exam_with_flair(tmp_path, flair, lesion)
  fit = baseline.fit_threshold([exam])
  assert fit["train_dice"] == 1.0
  # the chosen z lies between the brain's and the lesion's z-scores
  z = exams_lib.load_exam(exam).images[..., baseline.FLAIR]
  assert z[brain & ~lesion].max() < fit["threshold_z"] <= z[lesion].min()
  rows = baseline.write_threshold_masks([exam], fit["threshold_z"], str(tmp_path / "pred"))
  mask = nifti.read_nifti(rows[0]["mask"], kind="mask").data
  assert (mask.astype(bool) == lesion).all() and rows[0]["lesions"] == 1


def test_threshold_dice_curve_matches_direct_counting(tmp_path):
  rng = np.random.default_rng(1)
  flair = rng.normal(0, 1, (32, 32, 32)) + 5
  lesion = rng.random(flair.shape) < 0.05
  flair[lesion] += 1.5
  exam = _exam_with_flair(tmp_path, flair, lesion)
  fit = baseline.fit_threshold([exam])
  arrays = exams_lib.load_exam(exam)
  z = arrays.images[..., baseline.FLAIR]
  for t, d in list(zip(fit["curve"]["threshold_z"], fit["curve"]["dice"]))[::17]:
    direct = metrics.voxel_metrics((z >= t) & (arrays.brain > 0), lesion)["dice"]
    assert abs(direct - d) < 1e-4, t


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


def test_lesion_slices_picks_the_most_lesioned_and_spreads_them():
  ref = np.zeros((10, 10, 40), bool)
  ref[2:8, 2:8, 10] = True   # 36 voxels
  ref[2:6, 2:6, 11] = True   # 16, too close to 10
  ref[2:5, 2:5, 30] = True   # 9
  assert figures.lesion_slices(ref, 2) == [10, 30]
  assert figures.lesion_slices(ref, 5) == [10, 30]  # only slices with lesion


def test_leave_one_out_mode_on_tiny_cohort(tiny_cohort, tmp_path):
  """The mode's plumbing on synthetic data: manifests keep the left-out patient out of
  fine-tuning, every method is scored on it, and the figures are written."""
  labelled = [e for e in tiny_cohort.exams if e.labelled and e.split == "train"]
  fold = labelled[0].patient_id
  config = load_config("lesjak", "smoke", **{
      "labelled": tiny_cohort.root, "folds": fold, "strategies": "0",
      "data.model_shape": (), "figure_slices": 2})
  out = leave_one_out.run(config, str(tmp_path))
  rows = list(csv.DictReader(open(out["outputs"]["results_csv"])))
  assert {(r["fold"], r["method"]) for r in rows} == {(fold, "0CF"),
                                                       (fold, leave_one_out.BASELINE)}
  assert all(0 <= float(r["dice"]) <= 1 for r in rows)
  fold_manifest = json.load(open(tmp_path / "cohorts" / f"test_{fold}.json"))
  splits = {e["patient_id"]: e["split"] for e in fold_manifest["exams"]}
  assert splits[fold] == "test" and set(splits.values()) == {"train", "test"}
  # the fine-tuning run trained on the other patients only
  ft = json.load(open(tmp_path / "folds" / f"test_{fold}" / "0CF" / "train_summary.json"))
  assert ft["steps"] == config.finetune.steps and ft["transfer"]["loaded"] > 0
  for exam_id in {r["exam_id"] for r in rows}:
    assert os.path.getsize(out["outputs"][f"slices_{exam_id}"]) > 5000
  times = json.load(open(tmp_path / "leave_one_out.json"))["times_s"]
  assert {"pretrain", f"finetune {fold} 0CF", f"baseline {fold}", "total"} <= set(times)
  assert "beats the baseline" in open(out["outputs"]["table_md"]).read() or \
      "DOES NOT beat it" in open(out["outputs"]["table_md"]).read()


@needs_lesjak()
def test_flair_baseline_on_lesjak_is_scored_in_native_space(tmp_path):
  cohort = cohort_lib.load_cohort(LESJAK_MNI)
  train, test = cohort.by_id("patient26"), cohort.by_id("patient07")
  fit = baseline.fit_threshold([train])
  assert 0.5 < fit["threshold_z"] < 8 and 0 < fit["train_dice"] < 1
  baseline.write_threshold_masks([test], fit["threshold_z"], str(tmp_path))
  img = nib.load(outputs.paths(str(tmp_path), test)["mask"])
  src = nib.load(test.images["FLAIR"])
  assert img.shape == src.shape and np.allclose(img.affine, src.affine)
  summary = evaluate_mode.evaluate_predictions(cohort, str(tmp_path), exams=[test])
  ref = np.asarray(nib.load(test.consensus).dataobj) > 0
  pred = np.asarray(img.dataobj) > 0
  assert abs(summary["exams"][0]["dice"] - metrics.voxel_metrics(pred, ref)["dice"]) < 1e-9


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
