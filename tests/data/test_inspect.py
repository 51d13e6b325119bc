"""The inspect mode: one row per exam, problems and unused files named (msjax/data/inspect.py)."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

from conftest import LESJAK_MNI, needs_lesjak
from nifti_files import bids_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "msjax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


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
  bids_dataset(tmp_path / "bids")
  r = _main("--config", "configs/inspect.py:smoke", f"--config.cohort={tmp_path / 'bids'}",
            "--workdir", str(tmp_path / "w"))
  assert r.returncode == 0, r.stderr
  assert "not used" in r.stdout and "sub-02_angio.nii.gz: BIDS suffix _angio" in r.stdout
  saved = json.loads((tmp_path / "w" / "inspect.json").read_text())
  assert any(u["file"].endswith("sub-02_angio.nii.gz") for u in saved["unused"])
