"""The threshold chosen on an ensemble's leave-one-out: members' saved maps averaged."""
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from msjax import errors, release
from msjax.evaluate import ensemble

SHAPE = (4, 4, 4)
LESION = np.zeros(SHAPE, bool)
LESION[0, :2] = True          # 8 reference voxels
BACKGROUND = np.zeros(SHAPE, bool)
BACKGROUND[3, :2] = True      # 8 voxels the members call lesion with some probability


def _nifti(array, path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def _loo_run(root, lesion_p, background_p, folds=("a", "b"), variants=("FLAIR",)):
  """A finished leave-one-out workdir whose left-out maps are lesion_p on the reference lesion
  and background_p on BACKGROUND, for every fold and input."""
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "leave_one_out.json"), "w") as f:
    json.dump({"rows": []}, f)
  for fold in folds:
    reference = os.path.join(root, "refs", f"{fold}.nii.gz")
    _nifti(LESION.astype(np.uint8), reference)
    for variant in (ensemble.ALL,) + tuple(variants):
      csv_path = ensemble.metrics_csv(root, f"test_{fold}", "0CF", variant)
      mask = os.path.join(os.path.dirname(csv_path), "predictions",
                          f"sub-{fold}_desc-lesion_mask.nii.gz")
      probability = np.where(LESION, lesion_p, np.where(BACKGROUND, background_p, 0.0))
      _nifti(probability.astype(np.float32), ensemble.probability_path(mask))
      with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["exam_id", "prediction", "reference", "dice"])
        w.writeheader()
        w.writerow({"exam_id": fold, "prediction": mask, "reference": reference, "dice": 0})
  return root


def test_the_ensemble_threshold_is_read_off_the_members_mean_map(tmp_path):
  a = _loo_run(str(tmp_path / "s0"), lesion_p=0.6, background_p=0.3)
  b = _loo_run(str(tmp_path / "s1"), lesion_p=0.2, background_p=0.1)
  # alone: a separates lesion from background at 0.35-0.6 (0.5 chosen, nearest 0.5), b at
  # 0.15-0.2; their mean (lesion 0.4, background 0.2) only at 0.25-0.4: 0.4 is chosen, a value
  # neither member's own choice nor the mean of them (0.35) gives
  assert ensemble.best_threshold([a], "0CF")[0] == 0.5
  assert ensemble.best_threshold([b], "0CF")[0] == 0.2
  t, how = ensemble.best_threshold([a, b], "0CF")
  assert t == 0.4
  assert "100.0 at 0.4 (0.0 at 0.5)" in how and "2 leave-one-out runs" in how
  assert "(a, b)" in how and "(all, FLAIR)" in how
  sweep = ensemble.dice_sweep([a, b], "0CF")
  assert set(sweep) == {(f"test_{f}", v) for f in "ab" for v in ("all", "FLAIR")}
  i = ensemble.THRESHOLDS.index(0.2)  # the background is in the mask: Dice 2·8 / (16 + 8)
  assert sweep[("test_a", "all")][i] == pytest.approx(2 / 3)
  # release's option reads the same runs, comma-separated, and names how it chose; at 0.4 the
  # lesion's mean map peaks at 0.4, so any lesion peak would remove it: none is chosen
  got_t, got_how, (peak, peak_how) = release.threshold_from(f"{a},{b}", "0CF")
  assert (got_t, got_how, peak) == (t, how, 0.0)
  assert "masks at p >= 0.4: 100.0 at 0, 0.0 at 0.6" in peak_how and "best at 0" in peak_how


def test_the_lesion_peak_removes_what_the_left_out_patients_showed_false(tmp_path):
  """At threshold 0.5, a faint blob (peak 0.6) beside the sure lesion (0.95) is a false lesion
  on every patient-input: lesion F1 2/3 with it, 1 without. Every peak from 0.7 to 0.95 removes
  it and keeps the lesion; the one nearest 0 (every lesion kept) is chosen. Dice is said
  beside (0.8 with the blob, 1.0 without)."""
  a = _loo_run(str(tmp_path / "s0"), lesion_p=0.95, background_p=0.6)
  peak, how = ensemble.best_peak([a], "0CF", 0.5)
  assert peak == 0.7
  assert "66.7 at 0, 66.7 at 0.6, 100.0 at 0.7" in how and "(mean Dice 66.7, 66.7, 100.0" in how
  sweep = ensemble.peak_sweep([a], "0CF", 0.5)
  assert sweep[("test_a", "FLAIR")][0] == pytest.approx((2 / 3, 2 / 3))


def test_a_threshold_better_by_less_than_its_standard_error_does_not_move_it(monkeypatch):
  """The one-standard-error rule: 0.55 ahead of 0.5 by 0.1 points on average, but up on some
  patient-inputs and down on others, leaves the threshold at 0.5; 0.4 ahead on every one moves
  it there."""
  t = ensemble.THRESHOLDS
  i_55, i_40 = t.index(0.55), t.index(0.4)

  def sweep_of(rows):
    monkeypatch.setattr(ensemble, "dice_sweep",
                        lambda *a, **k: {(f"test_p{n}", "all"): r for n, r in enumerate(rows)})

  base = np.full(len(t), 0.5)
  noisy = []
  for gain in (0.05, -0.04, 0.03, -0.036):
    row = base.copy()
    row[i_55] += gain
    noisy.append(row)
  sweep_of(noisy)
  chosen, how = ensemble.best_threshold(["r"], "0CF")
  assert chosen == 0.5
  assert "best 50.1 at 0.55" in how and "0.5 chosen, the threshold nearest 0.5 within one" in how
  steady = []
  for gain in (0.02, 0.021, 0.019, 0.02):
    row = base.copy()
    row[i_40] += gain
    steady.append(row)
  sweep_of(steady)
  chosen, how = ensemble.best_threshold(["r"], "0CF")
  assert chosen == 0.4 and "chosen" not in how


def test_only_inputs_every_member_scored_are_used(tmp_path):
  a = _loo_run(str(tmp_path / "s0"), 0.6, 0.3, variants=("FLAIR", "slab5mm"))
  b = _loo_run(str(tmp_path / "s1"), 0.2, 0.1, variants=("FLAIR",))
  assert ensemble.inputs([a, b], "test_a", "0CF") == ["all", "FLAIR"]


def test_runs_that_do_not_fit_are_refused_by_name(tmp_path):
  a = _loo_run(str(tmp_path / "s0"), 0.6, 0.3)
  other = _loo_run(str(tmp_path / "other"), 0.6, 0.3, folds=("a", "c"))
  with pytest.raises(errors.InvalidInputError, match="other.*the same patients"):
    ensemble.best_threshold([a, other], "0CF")
  with pytest.raises(errors.InvalidInputError, match="metrics.csv: missing.*3CF"):
    ensemble.best_threshold([a], "3CF")
  os.remove(ensemble.probability_path(ensemble.recorded(a, "test_b", "0CF", "FLAIR")
                                      ["prediction"]))
  with pytest.raises(errors.InvalidInputError, match="probseg.nii.gz: the left-out exam's "
                                                     "probability map is missing"):
    ensemble.best_threshold([a], "0CF")
  with pytest.raises(errors.InvalidInputError, match="unfinished: no finished leave-one-out"):
    release.threshold_from(f"{a},{tmp_path / 'unfinished'}", "0CF")


def test_a_mask_not_named_as_msjax_names_it_is_refused_not_read_as_its_own_map(tmp_path):
  """The probability map is found by the mask's name; a mask named otherwise must not come back
  as its own 'probability map' (a 0/1 map whose every threshold gives the same mask)."""
  a = _loo_run(str(tmp_path / "s0"), 0.6, 0.3)
  csv_path = ensemble.metrics_csv(a, "test_b", "0CF", "FLAIR")
  row = ensemble.recorded(a, "test_b", "0CF", "FLAIR")
  renamed = row["prediction"].replace("_desc-lesion_mask", "_mask")
  _nifti(LESION.astype(np.uint8), renamed)  # the mask itself is there, under another name
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, ["exam_id", "prediction", "reference", "dice"])
    w.writeheader()
    w.writerow({**{k: row[k] for k in ("exam_id", "reference")}, "prediction": renamed,
                "dice": 0})
  with pytest.raises(errors.InvalidInputError, match="_mask.nii.gz: not a mask msjax predicted"):
    ensemble.best_threshold([a], "0CF")
