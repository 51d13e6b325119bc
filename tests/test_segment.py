"""The model bundle a fine-tuning writes, and `segment`: exams in, BIDS derivatives out."""
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
from msjax import errors, segment
from msjax.infer import bundle as bundle_lib
from msjax.train import loop


@pytest.fixture(scope="module")
def model(tiny_cohort, tmp_path_factory):
  w = str(tmp_path_factory.mktemp("bundle"))
  loop.train(load_config("finetune", "smoke", **{"data.cohort": tiny_cohort.root,
                                                 "train.steps": 3, "train.eval_every": 3}), w)
  return w


def test_finetuning_writes_a_model_bundle(model, tiny_cohort):
  b = bundle_lib.read(model)
  assert b["threshold"] == 0.5 and b["patch_size"] == 16 and b["model"]["base_width"] == 4
  assert b["training"]["steps"] == 3 and b["training"]["patients"]
  landmarks = b["preprocessing"]["nyul_landmarks"]
  assert {"FLAIR", "T1W"} <= set(landmarks)
  assert landmarks["FLAIR"]["standard"][0] == pytest.approx(0) and landmarks["FLAIR"][
      "standard"][-1] == pytest.approx(100)
  assert b["preprocessing"]["by"] == "external"  # the synthetic cohort is not msjax-preprocessed
  card = open(os.path.join(model, "model_card.md")).read()
  assert "## Trained on" in card and "## Validation" in card and "segment" in card
  with pytest.raises(errors.InvalidInputError, match="not a model bundle"):
    bundle_lib.read(os.path.dirname(model))


def _segment(model, input_dir, workdir, **overrides):
  config = load_config("segment", "smoke", model=model, input=str(input_dir), preprocessed=True,
                       **overrides)
  return segment.run(config, str(workdir))


def test_segment_writes_bids_derivatives_and_goes_on_past_a_bad_exam(model, tiny_cohort, tmp_path):
  src = tmp_path / "in"
  for exam in tiny_cohort.exams[:2]:
    shutil.copytree(os.path.dirname(exam.images["FLAIR"]), src / exam.exam_id)
  bad = src / "broken"
  bad.mkdir()
  (bad / "FLAIR.nii.gz").write_bytes(b"not a nifti")
  summary = _segment(model, src, tmp_path / "out", threshold=0.3)
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
  assert description["DatasetType"] == "derivative" and model in str(description["GeneratedBy"])
  assert json.load(open(tmp_path / "out" / "segment_summary.json"))["threshold"] == 0.3


def test_segment_refuses_bad_input_without_a_traceback(model, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "msjax.main", "--config=segment", f"--config.model={tmp_path}",
       f"--config.input={tmp_path}", f"--workdir={tmp_path}/w"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"{tmp_path}: not a model bundle" in proc.stderr


@needs_lesjak()
def test_segment_a_real_preprocessed_exam(model, tmp_path):
  """The issue's check: a Lesjak exam already on the MNI grid, outputs on its FLAIR's grid."""
  summary = _segment(model, os.path.join(LESJAK_MNI, "patient26"), tmp_path)
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
