"""The report on the real reference lesions of lesjak_mni (studies/report_reference.py; slow)."""
import csv
import os

import pytest

from conftest import LESJAK_MNI, needs_lesjak
from msjax.report import locations
from studies import report_reference as reference


@pytest.mark.slow
@needs_lesjak()
def test_reference_lesions_of_the_real_exams(tmp_path):
  """Every reference lesion of patient07 and patient26 classified, the page drawn, QC ok; the
  counts as reviewed by eye (msjax/report/README or the issue's note)."""
  reference.main(["--data", LESJAK_MNI, "--out", str(tmp_path)])
  with open(tmp_path / "cohort.csv") as f:
    rows = {r["exam_id"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"patient07", "patient26"}
  for r in rows.values():
    assert r["qc"] == "ok"
    assert int(r["lesions"]) == sum(int(r[f"{c}_count"]) for c in locations.CLASSES)
  # patient26 carries large confluent periventricular lesions; patient07 lesions everywhere
  assert int(rows["patient26"]["periventricular_count"]) >= 8
  assert all(int(rows["patient07"][f"{c}_count"]) >= 3 for c in locations.CLASSES)
  assert os.path.getsize(tmp_path / "patient07_report.png") > 100_000
