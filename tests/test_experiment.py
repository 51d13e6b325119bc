"""The paper's experiment at smoke size (msjax/experiment.py)."""
import csv
import os

import pytest

from conftest import load_config
from msjax import experiment

pytestmark = pytest.mark.slow  # trains a grid of networks


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
