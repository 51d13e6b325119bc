"""The Lesjak longitudinal pair of patient01 against its reference change mask (slow, real data)."""
import os

import pytest

from conftest import REAL_DATA

DATA = os.path.abspath(REAL_DATA)
PATIENT_RAW = os.path.join(DATA, "lesjak_longitudinal_raw", "patient01")
PATIENT_REF = os.path.join(DATA, "lesjak_longitudinal_change", "patient01")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (os.path.isdir(PATIENT_RAW) and os.path.isdir(PATIENT_REF)
         and os.path.isdir(os.path.join(DATA, "lesjak_mni"))),
    reason=f"real Lesjak longitudinal data not found under {DATA} (../shared/data beside the "
           "project root)")]


def test_patient01_change_beats_the_naive_difference(tmp_path):
  pytest.importorskip("SimpleITK")
  from studies import lesjak_longitudinal as lesjak
  threshold = lesjak.fit_naive_threshold(os.path.join(DATA, "lesjak_mni"))
  out = lesjak.evaluate_patient(DATA, "patient01", str(tmp_path), threshold["threshold_z"],
                                log=lambda *a: None)
  s = out["scores"]
  for grid in ("common", "baseline", "followup"):  # measured: Dice 0.59-0.65, F1 0.30-0.33
    assert s[f"method_{grid}"]["dice"] >= 0.4
    assert s[f"method_{grid}"]["lesion_f1"] >= 0.2
  assert s["method_common"]["lesion_f1"] >= 2 * s["naive_common"]["lesion_f1"]
  assert s["method_common"]["false_lesions"] < s["naive_common"]["false_lesions"] / 10
  assert out["counts"]["new"] >= 1  # the large new lesion of study 2
