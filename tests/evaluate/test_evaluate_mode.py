"""The evaluate mode's summary (msjax/evaluate/evaluate_mode.py)."""
import json

import pytest

from conftest import load_config
from msjax.evaluate import evaluate_mode
from msjax.infer import predict

pytestmark = pytest.mark.slow  # needs the session's trained model


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
