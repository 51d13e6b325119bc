"""Segment mode: exams in, BIDS derivatives out (msjax/segment.py)."""
import csv
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import LESJAK_MNI, ROOT, load_config, needs_lesjak
from msjax import segment


def _segment(trained, input_dir, workdir, **overrides):
  config = load_config("segment", "smoke", model=trained, input=str(input_dir), preprocessed=True,
                       **overrides)
  return segment.run(config, str(workdir))


@pytest.mark.slow  # needs the session's trained model
def test_segment_writes_bids_derivatives_and_goes_on_past_a_bad_exam(trained, tiny_cohort, tmp_path):
  src = tmp_path / "in"
  for exam in tiny_cohort.exams[:2]:
    shutil.copytree(os.path.dirname(exam.images["FLAIR"]), src / exam.exam_id)
  bad = src / "broken"
  bad.mkdir()
  (bad / "FLAIR.nii.gz").write_bytes(b"not a nifti")
  summary = _segment(trained, src, tmp_path / "out", threshold=0.3)
  assert [r["exam_id"] for r in summary["exams"]] == [e.exam_id for e in tiny_cohort.exams[:2]]
  assert [f["exam_id"] for f in summary["failed"]] == ["broken"]
  assert "cannot be read as NIfTI" in summary["failed"][0]["error"]
  for row, exam in zip(summary["exams"], tiny_cohort.exams[:2]):
    flair = nib.load(exam.images["FLAIR"])
    mask = nib.load(row["mask"])
    assert os.path.basename(row["mask"]) == f"sub-{exam.exam_id}_space-orig_desc-lesion_mask.nii.gz"
    assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine, atol=1e-5)
    assert nib.load(row["probseg"]).shape == flair.shape
    table = list(csv.DictReader(open(row["table"])))
    voxel_ml = abs(np.linalg.det(flair.affine[:3, :3])) / 1000
    assert abs(sum(float(r["volume_ml"]) for r in table)
               - np.asarray(mask.dataobj).sum() * voxel_ml) < 1e-3
    assert os.path.getsize(row["overlay"]) > 5000
  description = json.load(open(tmp_path / "out" / "dataset_description.json"))
  assert description["DatasetType"] == "derivative" and trained in str(description["GeneratedBy"])
  assert json.load(open(tmp_path / "out" / "segment_summary.json"))["threshold"] == 0.3


def test_segment_refuses_bad_input_without_a_traceback(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "msjax.main", "--config=segment", f"--config.model={tmp_path}",
       f"--config.input={tmp_path}", f"--workdir={tmp_path}/w"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"{tmp_path}: not a model bundle" in proc.stderr


@pytest.mark.slow  # a real 182×218×182 exam
@needs_lesjak()
def test_segment_a_real_preprocessed_exam(trained, tmp_path):
  """The issue's check: a Lesjak exam already on the MNI grid, outputs on its FLAIR's grid."""
  summary = _segment(trained, os.path.join(LESJAK_MNI, "patient26"), tmp_path)
  row = summary["exams"][0]
  flair = nib.load(os.path.join(LESJAK_MNI, "patient26", "FLAIR.nii.gz"))
  for key in ("mask", "probseg"):
    img = nib.load(row[key])
    assert img.shape == flair.shape == (182, 218, 182)
    np.testing.assert_allclose(img.affine, flair.affine, atol=1e-5)
  table = list(csv.DictReader(open(row["table"])))
  mask = np.asarray(nib.load(row["mask"]).dataobj)
  assert abs(sum(float(r["volume_ml"]) for r in table) - mask.sum() / 1000) < 1e-3
  assert all(r["mni_x_mm"] != "" for r in table)  # MNI grid: MNI coordinates are the world's
  assert os.path.exists(tmp_path / "dataset_description.json")
