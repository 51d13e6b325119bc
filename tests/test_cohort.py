"""Manifest building, loading, inspect, and the CLI modes of the data layer."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import LESJAK_MNI, needs_lesjak
from msjax import errors
from msjax.data import exams as exams_lib
from msjax.data import inspect as inspect_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti, scan
from msjax.data import cohort as cohort_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touch_nifti(path, shape=(10, 10, 10), mask=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = np.zeros(shape, np.uint8) if mask else np.random.default_rng(0).random(shape) + 1
  nib.save(nib.Nifti1Image(data.astype(np.uint8 if mask else np.float32), np.eye(4)), path)


def test_build_cohort_by_file_names(tmp_path):
  for name in ("T1W", "T1WKS", "T2W", "FLAIR", "consensus_gt", "brain_mask"):
    _touch_nifti(str(tmp_path / "patient07" / f"{name}.nii.gz"), mask=name[0] in "cb")
  for study in ("study1", "study2"):
    for name in ("FLAIR", "T1W", "T2W"):
      _touch_nifti(str(tmp_path / "patient01" / f"{study}_{name}.nii.gz"))
  _touch_nifti(str(tmp_path / "sub-3_flair.nii.gz"))
  _touch_nifti(str(tmp_path / "sub-3_pd.nii.gz"))
  _touch_nifti(str(tmp_path / "sub-3_rater2.nii.gz"), mask=True)
  _touch_nifti(str(tmp_path / "sub-3_rater1.nii.gz"), mask=True)
  c = scan.build_cohort(str(tmp_path), ms_default=False)
  exams = {e.exam_id: e for e in c.exams}
  assert sorted(exams) == ["patient01_study1", "patient01_study2", "patient07", "sub-3"]
  p7 = exams["patient07"]
  assert list(p7.images) == ["T1W", "T1WKS", "T2W", "FLAIR"] and p7.ms
  assert p7.consensus.endswith("consensus_gt.nii.gz") and p7.brain_mask.endswith("brain_mask.nii.gz")
  s1 = exams["patient01_study1"]
  assert s1.patient_id == "patient01" and not s1.ms and not s1.labelled
  s3 = exams["sub-3"]
  assert list(s3.images) == ["FLAIR", "PDW"] and s3.ms
  assert [os.path.basename(r) for r in s3.raters] == ["sub-3_rater1.nii.gz", "sub-3_rater2.nii.gz"]
  # manifest round trip, saved elsewhere: relative paths must still resolve
  out = manifest_lib.save_cohort(c, str(tmp_path / "elsewhere" / "cohort.json")) \
      if os.makedirs(tmp_path / "elsewhere") is None else None
  again = cohort_lib.load_cohort(out)
  assert again.exams == c.exams


def test_manifest_rejects_duplicate_exam_ids(tmp_path):
  p = tmp_path / "cohort.json"
  p.write_text(json.dumps({"exams": [{"exam_id": "a", "images": {"T1W": "x.nii"}},
                                     {"exam_id": "a", "images": {"T1W": "y.nii"}}]}))
  with pytest.raises(errors.InvalidInputError, match="more than once"):
    cohort_lib.load_cohort(str(p))


def test_synthetic_cohort_contents(tiny_cohort):
  c = cohort_lib.load_cohort(tiny_cohort.root)
  assert c.exams == tiny_cohort.exams
  assert {e.ms for e in c.exams} == {True, False}
  assert any(len(e.images) < 5 for e in c.exams)
  assert any(len(e.raters) > 1 for e in c.exams)
  assert [e.exam_id for e in c.select(split="test")] == ["synth003"]
  rows = inspect_lib.inspect_cohort(c, patch_size=16)
  assert all(not r["problems"] for r in rows)
  orientations = {r["orientation"] for r in rows}
  assert orientations == {"RAS", "LPS"}


def test_synthetic_contrasts(tiny_cohort):
  """The lesions carry the contrasts of real MS lesions, in canonical order for every file."""
  a = exams_lib.load_exam(tiny_cohort.by_id("synth000"), patch_size=16)  # all five present
  lesion, brain = a.reference > 0, a.brain > 0
  wm_like = brain & ~lesion
  mean = {m: (a.images[..., c][lesion].mean(), a.images[..., c][wm_like].mean())
          for c, m in enumerate(manifest_lib.MODALITIES)}
  assert mean["FLAIR"][0] > mean["FLAIR"][1] + 1.0
  assert mean["T2W"][0] > mean["T2W"][1] + 0.5
  assert mean["T1W"][0] < mean["T1W"][1]
  # raters disagree at the borders but agree on the bulk
  r = [m > 0 for m in a.masks]
  if len(r) > 1:
    assert (r[0] != r[1]).any()
    dice = 2 * (r[0] & r[1]).sum() / (r[0].sum() + r[1].sum())
    assert dice > 0.5


def test_synthetic_is_deterministic(tmp_path):
  from msjax.data import synthetic
  spec = synthetic.SyntheticSpec(n_ms=1, n_non_ms=0, n_test=0, shape=(24, 24, 24), seed=5)
  a = synthetic.write_synthetic_cohort(str(tmp_path / "a"), spec, log=lambda *x: None)
  b = synthetic.write_synthetic_cohort(str(tmp_path / "b"), spec, log=lambda *x: None)
  for m in a.exams[0].images:
    np.testing.assert_array_equal(nib.load(a.exams[0].images[m]).get_fdata(),
                                  nib.load(b.exams[0].images[m]).get_fdata())


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


def test_folder_of_one_exam_is_named_after_the_folder(tmp_path):
  for name in ("FLAIR", "T1W"):
    _touch_nifti(str(tmp_path / "subject_42" / f"{name}.nii.gz"))
  c = scan.build_cohort(str(tmp_path / "subject_42"))
  assert [e.exam_id for e in c.exams] == ["subject_42"] and c.exams[0].patient_id == "subject_42"


# ---- BIDS and symbolic links --------------------------------------------------------------------

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


def test_bids_dataset_one_exam_per_subject_and_session(tmp_path):
  _bids(tmp_path)
  cohort = cohort_lib.load_cohort(str(tmp_path))
  exams = {e.exam_id: e for e in cohort.exams}
  assert sorted(exams) == ["sub-01_ses-01", "sub-01_ses-02", "sub-02"]
  s1 = exams["sub-01_ses-01"]
  assert sorted(s1.images) == ["FLAIR", "T1W", "T1WKS"]
  assert s1.images["T1WKS"].endswith("ce-gadolinium_T1w.nii.gz")
  assert s1.images["FLAIR"].endswith("run-2_FLAIR.nii.gz")  # the later run
  assert s1.consensus.endswith("label-lesion_mask.nii.gz") and s1.patient_id == "sub-01"
  assert s1.bids == {"sub": "01", "ses": "01"} and s1.bids_prefix == "sub-01_ses-01"
  s2 = exams["sub-01_ses-02"]
  assert s2.consensus.endswith("sub-01_ses-02_dseg.nii.gz::3")
  lesion = nifti.read_nifti(s2.consensus, kind="mask").data
  assert lesion.sum() == 64 and set(np.unique(lesion)) == {0, 1}
  assert exams["sub-02"].bids_prefix == "sub-02" and exams["sub-02"].consensus is None
  unused = {os.path.basename(p): why for p, why in cohort.unused}
  assert "sub-02_angio.nii.gz" in unused and "_angio" in unused["sub-02_angio.nii.gz"]
  assert "sub-01_ses-01_acq-3D_run-1_FLAIR.nii.gz" in unused
  # the manifest written from it keeps the label selector and the BIDS entities
  manifest_lib.save_cohort(cohort, str(tmp_path / "out" / "cohort.json"))
  again = {e.exam_id: e for e in cohort_lib.load_cohort(str(tmp_path / "out")).exams}
  assert again["sub-01_ses-02"].consensus == s2.consensus and again["sub-02"].bids == {"sub": "02"}


def test_inspect_lists_unused_files(tmp_path):
  _bids(tmp_path / "bids")
  r = _main("--config", "configs/inspect.py:smoke", f"--config.cohort={tmp_path / 'bids'}",
            "--workdir", str(tmp_path / "w"))
  assert r.returncode == 0, r.stderr
  assert "not used" in r.stdout and "sub-02_angio.nii.gz: BIDS suffix _angio" in r.stdout
  saved = json.loads((tmp_path / "w" / "inspect.json").read_text())
  assert any(u["file"].endswith("sub-02_angio.nii.gz") for u in saved["unused"])


def test_symlinked_patient_folders_are_followed(tmp_path, tiny_cohort):
  links = tmp_path / "links"
  links.mkdir()
  for exam in tiny_cohort.exams[:3]:
    os.symlink(os.path.dirname(exam.images["FLAIR"]), links / exam.exam_id)
  os.symlink(links, links / "loop")  # a link back up the tree must not loop
  cohort = cohort_lib.load_cohort(str(links))
  assert sorted(e.exam_id for e in cohort.exams) == sorted(e.exam_id for e in tiny_cohort.exams[:3])
  assert all(e.labelled == t.labelled for e, t in zip(
      sorted(cohort.exams, key=lambda e: e.exam_id), tiny_cohort.exams[:3]))
