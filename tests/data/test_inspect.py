"""The inspect mode: one row per exam, problems and unused files named (msjax/data/inspect.py)."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

from conftest import LESJAK_MNI, needs_lesjak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "msjax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def _nii(path, data=None, affine=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(str(path)))
  data = rng.random((40, 40, 40)).astype(np.float32) + 1 if data is None else data
  nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0]) if affine is None else affine),
           str(path))
  return str(path)


def _bids(root):
  """Two subjects; sub-01 with two sessions, a contrast T1, two FLAIR runs, an acq- entity, a
  lesion mask derivative and a label map with its tsv; sub-02 with an unknown suffix."""
  anat = root / "sub-01" / "ses-01" / "anat"
  _nii(anat / "sub-01_ses-01_T1w.nii.gz")
  _nii(anat / "sub-01_ses-01_ce-gadolinium_T1w.nii.gz")
  _nii(anat / "sub-01_ses-01_acq-3D_run-1_FLAIR.nii.gz")
  _nii(anat / "sub-01_ses-01_acq-3D_run-2_FLAIR.nii.gz")
  _nii(root / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_FLAIR.nii.gz")
  les = np.zeros((40, 40, 40), np.uint8)
  les[10:14, 10:14, 10:14] = 1
  deriv = root / "derivatives" / "manual" / "sub-01" / "ses-01" / "anat"
  _nii(deriv / "sub-01_ses-01_space-orig_label-lesion_mask.nii.gz", les)
  seg = np.zeros((40, 40, 40), np.uint8)
  seg[20:24, 20:24, 20:24] = 3   # the lesion label
  seg[0:4, 0:4, 0:4] = 1         # something else
  deriv2 = root / "derivatives" / "seg" / "sub-01" / "ses-02" / "anat"
  _nii(deriv2 / "sub-01_ses-02_dseg.nii.gz", seg)
  (deriv2 / "sub-01_ses-02_dseg.tsv").write_text("index\tname\n1\tCSF\n3\tMS lesion\n")
  _nii(root / "sub-02" / "anat" / "sub-02_T2w.nii.gz")
  _nii(root / "sub-02" / "anat" / "sub-02_angio.nii.gz")
  (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')


def test_cli_synthetic_then_inspect(tmp_path):
  w = tmp_path / "w"
  r = _main("--config", "configs/synthetic.py:smoke", "--workdir", str(w),
            "--config.n_ms=2", "--config.n_non_ms=1", "--config.n_test=0")
  assert r.returncode == 0, r.stderr
  manifest = w / "cohort" / "cohort.json"
  assert manifest.exists() and len(json.loads(manifest.read_text())["exams"]) == 3
  r = _main("--config", "configs/inspect.py:smoke", f"--config.cohort={manifest}",
            "--workdir", str(tmp_path / "w2"))
  assert r.returncode == 0, r.stderr
  assert "synth000" in r.stdout and "40x40x40" in r.stdout and "3 exams, 0 with problems" in r.stdout
  rows = json.loads((tmp_path / "w2" / "inspect.json").read_text())["exams"]
  assert [row["exam"] for row in rows] == ["synth000", "synth001", "synth002"]


def test_cli_inspect_reports_bad_exam(tmp_path, tiny_cohort):
  bad = tmp_path / "bad"
  bad.mkdir()
  nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), np.eye(4)),
           str(bad / "FLAIR.nii.gz"))
  r = _main("--config", "configs/inspect.py:smoke", f"--config.cohort={bad}",
            "--workdir", str(tmp_path / "w"))
  assert r.returncode != 0
  assert "FLAIR.nii.gz: image is constant" in r.stdout + r.stderr


@needs_lesjak()
def test_inspect_real_lesjak(tmp_path):
  r = _main("--config", "configs/inspect.py", f"--config.cohort={LESJAK_MNI}",
            "--workdir", str(tmp_path))
  assert r.returncode == 0, r.stderr
  rows = {row["exam"]: row for row in
          json.loads((tmp_path / "inspect.json").read_text())["exams"]}
  assert rows["patient07"]["shape"] == "182x218x182" and rows["patient07"]["orientation"] == "LAS"
  assert abs(rows["patient07"]["lesion_ml"] - 1.3) < 0.05
  assert abs(rows["patient26"]["lesion_ml"] - 8.2) < 0.1
  assert rows["patient26"]["modalities"] == "T1W T1WKS T2W FLAIR -"


def test_inspect_lists_unused_files(tmp_path):
  _bids(tmp_path / "bids")
  r = _main("--config", "configs/inspect.py:smoke", f"--config.cohort={tmp_path / 'bids'}",
            "--workdir", str(tmp_path / "w"))
  assert r.returncode == 0, r.stderr
  assert "not used" in r.stdout and "sub-02_angio.nii.gz: BIDS suffix _angio" in r.stdout
  saved = json.loads((tmp_path / "w" / "inspect.json").read_text())
  assert any(u["file"].endswith("sub-02_angio.nii.gz") for u in saved["unused"])
