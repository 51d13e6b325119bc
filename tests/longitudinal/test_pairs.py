"""Which visit is the baseline (msjax/longitudinal/pairs.py): a change map the wrong way round
calls every new lesion disappearing, so the order is taken from what the input says, or refused."""
import json

import nibabel as nib
import numpy as np
from ml_collections import config_dict

from msjax.longitudinal import pairs


def _bids(root, sub, sessions, sidecars=None):
  for ses in sessions:
    anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
    anat.mkdir(parents=True)
    path = anat / f"sub-{sub}_ses-{ses}_FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(path))
    if sidecars and ses in sidecars:
      (anat / f"sub-{sub}_ses-{ses}_FLAIR.json").write_text(json.dumps(sidecars[ses]))


def _found(root, sessions=""):
  config = config_dict.ConfigDict(dict(baseline="", followup="", input=str(root),
                                       sessions=sessions))
  return {p.patient: p for p in pairs.find_pairs(config)[0]}


def test_visits_in_time_order_by_number_date_or_word_and_refused_when_unknown(tmp_path):
  _bids(tmp_path, "num", ["m12", "m6"])                   # numbers, compared as numbers
  _bids(tmp_path, "word", ["pre", "post"])                # alphabetically post < pre
  _bids(tmp_path, "base", ["month3", "baseline"])         # a word beside a number
  _bids(tmp_path, "date", ["b", "a"], sidecars={"a": {"AcquisitionDateTime": "2024-05-02T10:00"},
                                                "b": {"AcquisitionDateTime": "2023-11-20T09:30"}})
  _bids(tmp_path, "table", ["x", "y"])
  (tmp_path / "sub-table" / "sub-table_sessions.tsv").write_text(
      "session_id\tacq_time\nses-x\t2025-01-10\nses-y\t2022-06-01\n")
  _bids(tmp_path, "unknown", ["alpha", "beta"])
  found = _found(tmp_path)
  order = {sub: (p.baseline.bids["ses"], p.followup.bids["ses"] if p.followup else None)
           for sub, p in found.items()}
  assert order["num"] == ("m6", "m12")
  assert order["word"] == ("pre", "post")
  assert order["base"] == ("baseline", "month3")
  assert order["date"] == ("b", "a")
  assert order["table"] == ("y", "x")
  assert found["unknown"].followup is None
  assert "which of the visits ['alpha', 'beta'] came first" in found["unknown"].problem
  assert "--config.sessions=<baseline>,<follow-up>" in found["unknown"].problem
  assert all(found[s].problem is None for s in ("num", "word", "base", "date", "table"))
  # the user's choice decides where the input cannot
  chosen = _found(tmp_path, sessions="beta,alpha")["unknown"]
  assert chosen.problem is None
  assert (chosen.baseline.bids["ses"], chosen.followup.bids["ses"]) == ("beta", "alpha")


def test_of_more_visits_the_last_two_are_compared_unless_chosen(tmp_path):
  """A patient followed over years has more than two visits: the change since the visit before
  the latest (in time order, not label order) is what a clinic reads; --config.sessions picks
  another pair; visits whose order is unknown are still refused."""
  _bids(tmp_path, "many", ["m24", "m6", "baseline", "m12"])
  _bids(tmp_path, "lost", ["alpha", "beta", "gamma"])
  _bids(tmp_path, "once", ["alpha"])
  found = _found(tmp_path)
  assert "a second visit is needed" in found["once"].problem  # not a question of order
  many = found["many"]
  assert many.problem is None
  assert (many.baseline.bids["ses"], many.followup.bids["ses"]) == ("m12", "m24")
  assert found["lost"].followup is None and "came first" in found["lost"].problem
  chosen = _found(tmp_path, sessions="m6,m24")["many"]
  assert (chosen.baseline.bids["ses"], chosen.followup.bids["ses"]) == ("m6", "m24")


def test_visit_folders_named_by_date_are_read_as_dates_in_any_common_order(tmp_path):
  """Date-named visit folders (20190501; 10.06.2019 -> 10062019 once the label is made): compared
  as numbers, 01.07.2020 would come before 10.06.2019. Day-month-year and month-day-year that
  order the visits alike are used; an order they disagree on is refused, not guessed."""
  _bids(tmp_path, "iso", ["20200610", "20190501"])
  _bids(tmp_path, "eu", ["01072020", "10062019"])        # 1 July 2020, 10 June 2019
  _bids(tmp_path, "either", ["02012020", "01032020"])    # 2 Jan / 1 Mar, or 1 Feb / 3 Jan
  found = _found(tmp_path)
  assert (found["iso"].baseline.bids["ses"], found["iso"].followup.bids["ses"]) == (
      "20190501", "20200610")
  assert (found["eu"].baseline.bids["ses"], found["eu"].followup.bids["ses"]) == (
      "10062019", "01072020")
  assert found["either"].followup is None
  assert "day-month-year or month-day-year" in found["either"].problem
  assert "--config.sessions" in found["either"].problem
