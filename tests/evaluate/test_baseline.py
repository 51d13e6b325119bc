"""The FLAIR-threshold baseline (msjax/evaluate/baseline.py)."""
import nibabel as nib
import numpy as np
import pytest

from conftest import LESJAK_MNI, needs_lesjak
from msjax.data import cohort as cohort_lib
from msjax.data import exams as exams_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti
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


@pytest.mark.slow  # real 182×218×182 exams
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
