"""Leave-one-patient-out on the tiny cohort (msjax/leave_one_out.py)."""
import csv
import json
import os

import pytest

from conftest import load_config
from msjax import leave_one_out

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
