"""The cohort manifest: keys, modalities, duplicate exams (msjax/data/manifest.py)."""
import json

import nibabel as nib
import numpy as np
import pytest

from msjax import errors
from msjax.data import cohort as cohort_lib
from msjax.errors import InvalidInputError


def save(path, data, affine=None, dtype=None):
  affine = np.eye(4) if affine is None else affine
  img = nib.Nifti1Image(np.asarray(data) if dtype is None else np.asarray(data).astype(dtype),
                        affine)
  nib.save(img, str(path))
  return str(path)


def brainlike(shape=(20, 20, 20), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.random(shape) + 1).astype(np.float32)


def expect(match, fn, *args, **kwargs):
  with pytest.raises(InvalidInputError, match=match) as e:
    fn(*args, **kwargs)
  return str(e.value)


FOUR_MM = np.diag([4.0, 4.0, 4.0, 1.0])  # 20 voxels of 4 mm: an 80 mm field of view


def _exam_folder(tmp_path, shape=(20, 20, 20), affines=None):
  d = tmp_path / "p1"
  d.mkdir(exist_ok=True)
  img = brainlike(shape)
  paths = {}
  for i, m in enumerate(("T1W", "FLAIR")):
    aff = (affines or {}).get(m, FOUR_MM)
    paths[m] = save(d / f"{m}.nii.gz", img * (i + 1), aff)
  return d, paths


def _write_manifest(tmp_path, text):
  p = tmp_path / "cohort.json"
  p.write_text(text)
  return str(p)


def test_unknown_modality_key(tmp_path):
  d, paths = _exam_folder(tmp_path)
  man = {"exams": [{"exam_id": "p1", "images": {"T1W": paths["T1W"], "DWI": paths["FLAIR"]}}]}
  msg = expect("unknown modality", cohort_lib.load_cohort,
               _write_manifest(tmp_path, json.dumps(man)))
  assert "DWI" in msg


def test_duplicate_modality_key(tmp_path):
  d, paths = _exam_folder(tmp_path)
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
