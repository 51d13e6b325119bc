"""The cohort manifest: keys, modalities, duplicate exams (msjax/data/manifest.py)."""
import json

import pytest

from msjax import errors
from msjax.data import cohort as cohort_lib
from nifti_files import exam_folder, expect


def _write_manifest(tmp_path, text):
  p = tmp_path / "cohort.json"
  p.write_text(text)
  return str(p)


def test_unknown_modality_key(tmp_path):
  d, paths = exam_folder(tmp_path)
  man = {"exams": [{"exam_id": "p1", "images": {"T1W": paths["T1W"], "DWI": paths["FLAIR"]}}]}
  msg = expect("unknown modality", cohort_lib.load_cohort,
               _write_manifest(tmp_path, json.dumps(man)))
  assert "DWI" in msg


def test_duplicate_modality_key(tmp_path):
  d, paths = exam_folder(tmp_path)
  text = ('{"exams": [{"exam_id": "p1", "images": {"T1W": "%s", "T1W": "%s"}}]}'
          % (paths["T1W"], paths["FLAIR"]))
  msg = expect("appears twice", cohort_lib.load_cohort, _write_manifest(tmp_path, text))
  assert "T1W" in msg


def test_manifest_rejects_duplicate_exam_ids(tmp_path):
  p = tmp_path / "cohort.json"
  p.write_text(json.dumps({"exams": [{"exam_id": "a", "images": {"T1W": "x.nii"}},
                                     {"exam_id": "a", "images": {"T1W": "y.nii"}}]}))
  with pytest.raises(errors.InvalidInputError, match="more than once"):
    cohort_lib.load_cohort(str(p))
