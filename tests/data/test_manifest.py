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


@pytest.mark.parametrize("record,refused", [({"exam_id": "p1"}, True), ({"format": 1}, True),
                                            ({"format": 2}, False)])
def test_cohort_made_by_an_older_preprocessing_is_refused(tmp_path, record, refused):
  """Preprocessing format 1 wrote mirrored images: such a cohort is refused, naming the exam's
  record, not used."""
  d, paths = exam_folder(tmp_path)
  (d / "preprocess.json").write_text(json.dumps(record))
  man = {"exams": [{"exam_id": "p1", "images": {"FLAIR": paths["FLAIR"]},
                    "native": {"reference": paths["FLAIR"], "transform": "to_mni.tfm"}}]}
  path = _write_manifest(tmp_path, json.dumps(man))
  if refused:
    msg = expect("mirrored left-right", cohort_lib.load_cohort, path)
    assert "preprocess.json (exam p1)" in msg and "preprocess the raw exams again" in msg
  else:
    assert cohort_lib.load_cohort(path).exams[0].native is not None


def test_model_bundle_trained_on_an_older_preprocessing_is_refused(tmp_path):
  from msjax.infer import bundle as bundle_lib
  bundle = {"model": {}, "threshold": 0.5, "patch_size": 32,
            "preprocessing": {"by": "msjax", "options": {}, "nyul_landmarks": {}}}
  (tmp_path / "bundle.json").write_text(json.dumps(bundle))
  msg = expect("mirrored left-right", bundle_lib.read, str(tmp_path))
  assert "bundle.json" in msg and "train the model again" in msg
  bundle["preprocessing"]["format"] = 2
  (tmp_path / "bundle.json").write_text(json.dumps(bundle))
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  assert bundle_lib.read(str(tmp_path))["preprocessing"]["format"] == 2
