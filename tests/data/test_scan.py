"""Folders without a manifest: file names, BIDS datasets, symbolic links (msjax/data/scan.py)."""
import os

import numpy as np

from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti, scan
from nifti_files import bids_dataset, brainlike, exam_folder, expect, save, touch_nifti


def test_folder_names_outside_ascii_make_valid_distinct_bids_labels(tmp_path):
  """BIDS labels hold ASCII letters and digits only (the validator refuses others): a patient
  folder `Patiënt 26 (FU)` writes sub-Patient26FU, Ærø AEro; names in another script (two
  patients named in kanji) get distinct labels from their hash, not one shared `exam`."""
  assert scan.bids_label("Patiënt 26 (FU)") == "Patient26FU"
  assert scan.bids_label("Ærø_3") == "AEro3" and scan.bids_label("Łódź") == "Lodz"
  a, b = scan.bids_label("患者"), scan.bids_label("患者一")
  assert a != b and all(x.isascii() and x.isalnum() and x.startswith("x") for x in (a, b))
  # names that differ only in letters of another script keep apart, with their ASCII part
  a, b = scan.bids_label("患者01"), scan.bids_label("対照01")
  assert a != b and a.startswith("01x") and b.startswith("01x")
  assert scan.bids_label("Иванов_study1") != scan.bids_label("Петров_study1")
  import unicodedata  # one name, however the file system composed it (macOS: NFD)
  assert scan.bids_label(unicodedata.normalize("NFD", "한국")) == scan.bids_label("한국")
  assert scan.bids_label("patient07") == "patient07"
  assert scan.bids_label("--") == "exam"
  for name in ("Patiënt 26 (FU)", "患者", "患者一"):
    touch_nifti(str(tmp_path / name / "FLAIR.nii.gz"))
  c = scan.build_cohort(str(tmp_path), ms_default=False)
  prefixes = sorted(e.bids_prefix for e in c.exams)
  assert "sub-Patient26FU" in prefixes and len(set(prefixes)) == 3
  assert all(p.isascii() for p in prefixes)
  manifest_lib.check_output_names(c.exams)  # no clash

def test_build_cohort_by_file_names(tmp_path):
  for name in ("T1W", "T1WKS", "T2W", "FLAIR", "consensus_gt", "brain_mask"):
    touch_nifti(str(tmp_path / "patient07" / f"{name}.nii.gz"), mask=name[0] in "cb")
  for study in ("study1", "study2"):
    for name in ("FLAIR", "T1W", "T2W"):
      touch_nifti(str(tmp_path / "patient01" / f"{study}_{name}.nii.gz"))
  touch_nifti(str(tmp_path / "sub-3_flair.nii.gz"))
  touch_nifti(str(tmp_path / "sub-3_pd.nii.gz"))
  touch_nifti(str(tmp_path / "sub-3_rater2.nii.gz"), mask=True)
  touch_nifti(str(tmp_path / "sub-3_rater1.nii.gz"), mask=True)
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
  # outputs: the visits of one patient are sessions of one subject, as in BIDS
  assert s1.bids_prefix == "sub-patient01_ses-study1"
  assert exams["patient01_study2"].bids == {"sub": "patient01", "ses": "study2"}
  assert p7.bids_prefix == "sub-patient07" and s3.bids_prefix == "sub-3"
  # manifest round trip, saved elsewhere: relative paths must still resolve
  out = manifest_lib.save_cohort(c, str(tmp_path / "elsewhere" / "cohort.json")) \
      if os.makedirs(tmp_path / "elsewhere") is None else None
  again = cohort_lib.load_cohort(out)
  assert again.exams == c.exams


def test_folder_of_one_exam_is_named_after_the_folder(tmp_path):
  for name in ("FLAIR", "T1W"):
    touch_nifti(str(tmp_path / "subject_42" / f"{name}.nii.gz"))
  c = scan.build_cohort(str(tmp_path / "subject_42"))
  assert [e.exam_id for e in c.exams] == ["subject_42"] and c.exams[0].patient_id == "subject_42"


def test_bids_dataset_one_exam_per_subject_and_session(tmp_path):
  bids_dataset(tmp_path)
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
  d, paths = exam_folder(tmp_path)
  save(d / "flair_2.nii.gz", brainlike())
  save(d / "FLAIR_x.nii.gz", brainlike())
  expect("several files for FLAIR", scan.build_cohort, str(tmp_path))


def test_one_patients_folder_of_visits_and_upper_case_extensions(tmp_path):
  """The folder of one patient with study prefixes (as lesjak_longitudinal_raw/patient01): one exam
  per visit, named after the folder, written as sessions; FLAIR.NII.GZ as some exports write it."""
  for study in ("study1", "study2"):
    touch_nifti(str(tmp_path / "patient01" / f"{study}_FLAIR.NII.GZ"))
    touch_nifti(str(tmp_path / "patient01" / f"{study}_T1W.nii.gz"))
  c = scan.build_cohort(str(tmp_path / "patient01"))
  assert [e.exam_id for e in c.exams] == ["patient01_study1", "patient01_study2"]
  assert [e.bids_prefix for e in c.exams] == ["sub-patient01_ses-study1", "sub-patient01_ses-study2"]
  assert all(e.patient_id == "patient01" for e in c.exams)
  assert sorted(c.exams[0].images) == ["FLAIR", "T1W"]
  assert c.exams[0].images["FLAIR"].endswith("study1_FLAIR.NII.GZ")
  assert nifti.read_nifti(c.exams[0].images["FLAIR"]).data.shape == (10, 10, 10)


def test_msjax_own_outputs_inside_the_input_are_never_read_as_exams(tmp_path):
  """A workdir (or derivatives/msjax dataset) inside the input folder holds FLAIR-named files
  and lesion masks msjax wrote: the scan skips it, and given on its own it is refused."""
  import json
  touch_nifti(str(tmp_path / "in" / "p1" / "FLAIR.nii.gz"))
  touch_nifti(str(tmp_path / "in" / "p2" / "FLAIR.nii.gz"))
  out = tmp_path / "in" / "out"
  touch_nifti(str(out / "work" / "preprocessed" / "p1" / "FLAIR.nii.gz"))
  (out / "dataset_description.json").write_text(json.dumps(
      {"Name": "x", "DatasetType": "derivative", "GeneratedBy": [{"Name": "msjax"}]}))
  cohort = cohort_lib.load_cohort(str(tmp_path / "in"))
  assert sorted(e.exam_id for e in cohort.exams) == ["p1", "p2"]
  expect("msjax's own outputs", cohort_lib.load_cohort, str(out))
  # a dataset another tool generated is read as before
  (out / "dataset_description.json").write_text(json.dumps({"GeneratedBy": [{"Name": "x"}]}))
  assert len(cohort_lib.load_cohort(str(tmp_path / "in")).exams) == 3


def test_images_in_other_formats_and_archives_are_named_with_what_to_do(tmp_path):
  """Analyze pairs, FreeSurfer, NRRD/MetaImage files and archives are not read (msjax reads
  NIfTI) but listed with what to do; a folder of only such files is refused naming them, and an
  archive given as the input says to unpack it. macOS's AppleDouble files (._FLAIR.nii.gz) and
  other hidden files are not exams and not listed."""
  (tmp_path / "cohort").mkdir()
  d, _ = exam_folder(tmp_path / "cohort")
  for name in ("scan_FLAIR.hdr", "scan_FLAIR.img", "T1.mgz", "T2.nrrd", "old.zip"):
    (d / name).write_bytes(b"\0" * 16)
  (d / "._FLAIR.nii.gz").write_bytes(b"\0" * 4096)
  c = scan.build_cohort(str(tmp_path / "cohort"))
  assert len(c.exams) == 1
  why = {os.path.basename(p): w for p, w in c.unused}
  assert sorted(why) == ["T1.mgz", "T2.nrrd", "old.zip", "scan_FLAIR.hdr"]  # the pair once
  assert "Analyze 7.5" in why["scan_FLAIR.hdr"] and "mri_convert" in why["T1.mgz"]
  assert "unpack it" in why["old.zip"]

  only = tmp_path / "analyze_only" / "patient1"
  only.mkdir(parents=True)
  for name in ("FLAIR.hdr", "FLAIR.img", "T1W.hdr", "T1W.img"):
    (only / name).write_bytes(b"\0" * 16)
  msg = expect("no NIfTI exam found", scan.build_cohort, str(tmp_path / "analyze_only"))
  assert "patient1/FLAIR.hdr: an Analyze 7.5 image" in msg and "T1W.hdr" in msg
  assert "FLAIR.img" not in msg

  # a NIfTI-1 pair (magic ni1, as SPM writes) says how to join it; gzipped pairs are one entry
  import nibabel as nib
  pair = tmp_path / "pairs" / "p2"
  pair.mkdir(parents=True)
  nib.save(nib.Nifti1Pair(brainlike((8, 8, 8)), np.eye(4)), str(pair / "FLAIR.hdr"))
  (pair / "T1W.hdr.gz").write_bytes(b"\0" * 16)
  (pair / "T1W.img.gz").write_bytes(b"\0" * 16)
  save(pair / "T2W.nii.gz", brainlike((8, 8, 8)))
  why = {os.path.basename(p): w for p, w in scan.build_cohort(str(tmp_path / "pairs")).unused}
  assert sorted(why) == ["FLAIR.hdr", "T1W.hdr.gz"]
  assert why["FLAIR.hdr"].startswith("a NIfTI-1 pair") and "Analyze 7.5" in why["T1W.hdr.gz"]

  archive = tmp_path / "exam.zip"
  archive.write_bytes(b"PK\x03\x04")
  expect("an archive: unpack it", cohort_lib.load_cohort, str(archive))
