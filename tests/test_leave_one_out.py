"""Leave-one-patient-out on the tiny cohort (msjax/leave_one_out.py)."""
import csv
import json
import os

import numpy as np
import pytest

from conftest import LESJAK_MNI, load_config, needs_lesjak
from msjax import leave_one_out
from msjax.data import cohort as cohort_lib

pytestmark = pytest.mark.slow  # trains networks


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
  # the left-out patient also with FLAIR alone (lesjak.py:smoke's input_variants)
  assert {(r["fold"], r["method"]) for r in rows} == {(fold, "0CF"), (fold, "0CF [FLAIR]"),
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
def test_labelled_exams_go_through_msjax_pipeline_and_their_masks_come_back(tmp_path):
  """preprocess_labelled='stripped' on a real lesjak_mni exam: its own MNI registration (the
  database's brains are ~0.85x the template's, now brought to it), the consensus carried onto
  the 128³ grid (bigger in mL, as the brain is), a perfect prediction brought back to the
  exam's own space scores as its resolution allows, and the lesion maps get the registration."""
  pytest.importorskip("SimpleITK", reason="preprocessing extra not installed")
  from msjax.data import nifti
  from msjax.preprocess import native as native_lib
  labelled = tmp_path / "labelled" / "patient07"
  labelled.mkdir(parents=True)
  for name in os.listdir(os.path.join(LESJAK_MNI, "patient07")):
    os.symlink(os.path.join(LESJAK_MNI, "patient07", name), labelled / name)
  config = load_config("lesjak", **{"labelled": str(tmp_path / "labelled"),
                                    "preprocess_labelled": "stripped", "preprocess.workers": 1})
  prep = leave_one_out.preprocess_labelled(config, str(tmp_path / "work"))
  exam = prep.exams["patient07"]
  assert prep.options.skull_strip == "none" and not prep.options.n4
  grid_mask = nifti.read_nifti(exam.consensus, kind="mask")
  assert grid_mask.grid.shape == (128, 128, 128)
  world = np.loadtxt(prep.maps_registration)
  scale = np.linalg.det(world[:3, :3])  # template -> this brain: < 1, the brain is smaller
  assert 0.45 < scale < 0.8, scale
  ml = grid_mask.data.sum() * grid_mask.grid.voxel_ml
  assert ml == pytest.approx(1.30 / scale, rel=0.25)  # 1.30 mL in the database's space
  back, _ = native_lib.to_native(grid_mask.data.astype(np.float32), grid_mask.grid, exam.native)
  ref = nifti.read_nifti(os.path.join(LESJAK_MNI, "patient07", "consensus_gt.nii.gz"),
                         kind="mask")
  ref = nifti.to_source_orientation(ref.data, ref.grid) > 0
  dice = 2 * ((back >= 0.5) & ref).sum() / ((back >= 0.5).sum() + ref.sum())
  assert dice > 0.7, dice  # 1.3 mL of small lesions through a 1.2-1.45 mm grid and back
  # the left-out patient is made the same way, from its own files: the same exam again
  original = cohort_lib.load_cohort(str(tmp_path / "labelled")).exams[0]
  again = prep.test_exam(original, str(tmp_path / "test"))
  a = nifti.read_nifti(again.images["FLAIR"]).data
  b = nifti.read_nifti(exam.images["FLAIR"]).data
  # the same up to ITK's multi-threaded registration, which differs a little from run to run
  # (parameters ~1e-5 apart in one pair of runs): the same brain, the same intensities but at
  # edges
  inside = (a != 0) & (b != 0)
  assert inside.sum() > 0.99 * max((a != 0).sum(), (b != 0).sum())
  assert np.median(np.abs(a - b)[inside]) < 2e-3 * np.abs(b).max()
