"""Folders without a manifest: file names, BIDS datasets, symbolic links (msjax/data/scan.py)."""
import os

import nibabel as nib
import numpy as np
import pytest

from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti, scan
from msjax.errors import InvalidInputError


def _touch_nifti(path, shape=(10, 10, 10), mask=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = np.zeros(shape, np.uint8) if mask else np.random.default_rng(0).random(shape) + 1
  nib.save(nib.Nifti1Image(data.astype(np.uint8 if mask else np.float32), np.eye(4)), path)


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


def test_folder_of_one_exam_is_named_after_the_folder(tmp_path):
  for name in ("FLAIR", "T1W"):
    _touch_nifti(str(tmp_path / "subject_42" / f"{name}.nii.gz"))
  c = scan.build_cohort(str(tmp_path / "subject_42"))
  assert [e.exam_id for e in c.exams] == ["subject_42"] and c.exams[0].patient_id == "subject_42"


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


def test_duplicate_modality_file_in_folder(tmp_path):
  d, paths = _exam_folder(tmp_path)
  save(d / "flair_2.nii.gz", brainlike())
  save(d / "FLAIR_x.nii.gz", brainlike())
  expect("several files for FLAIR", scan.build_cohort, str(tmp_path))
