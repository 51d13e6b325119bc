"""DICOM in (pydicom + dcm2niix) and DICOM SEG out (highdicom): series identified from their fields,
orientation kept through an oblique acquisition, the SEG on the pixels it was computed on."""
import os

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom", reason="DICOM extra not installed: pip install -e '.[preprocess]'")
pytest.importorskip("highdicom", reason="DICOM extra not installed: pip install -e '.[preprocess]'")
from dicom_files import write_series  # noqa: E402
from msjax.data import cohort as cohort_lib  # noqa: E402
from msjax.data import dicom  # noqa: E402
from msjax.data import nifti  # noqa: E402
from msjax.infer import dicom_seg  # noqa: E402


@pytest.mark.parametrize("fields,want", [
    ({"SeriesDescription": "t2_tirm_tra_dark-fluid"}, "FLAIR"),
    ({"SeriesDescription": "AX T2 FLAIR"}, "FLAIR"),
    ({"SeriesDescription": "t1_mprage_sag_p2_iso"}, "T1W"),
    ({"SeriesDescription": "T1 SE AX +C"}, "T1WKS"),
    ({"SeriesDescription": "t1_se_tra", "ContrastBolusAgent": "Dotarem"}, "T1WKS"),
    ({"SeriesDescription": "t2_tse_tra"}, "T2W"),
    ({"SeriesDescription": "PD AXIAL"}, "PDW"),
    ({"SeriesDescription": "ax 3", "InversionTime": 2500.0, "EchoTime": 90.0,
      "RepetitionTime": 9000.0}, "FLAIR"),
    ({"SeriesDescription": "ax 4", "EchoTime": 12.0, "RepetitionTime": 550.0}, "T1W"),
    ({"SeriesDescription": "ax 5", "EchoTime": 100.0, "RepetitionTime": 4000.0}, "T2W"),
    ({"SeriesDescription": "localizer"}, None),
    ({"SeriesDescription": "ep2d_diff_3scan_trace"}, None),
    ({"SeriesDescription": "series 7"}, None)])
def test_series_identified_from_their_dicom_fields(fields, want):
  assert dicom.identify(fields)[0] == want


def _oblique_affine(shape, spacing=(0.9, 0.9, 3.0), degrees=(20.0, -12.0)):
  a, b = np.deg2rad(degrees)
  rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
  m = rz @ rx @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)  # LPS-like, tilted
  affine = np.eye(4)
  affine[:3, :3] = m
  affine[:3, 3] = -m @ ((np.array(shape) - 1) / 2)
  return affine


def _head(shape, affine, marker_world):
  idx = np.indices(shape).reshape(3, -1).T
  world = idx @ affine[:3, :3].T + affine[:3, 3]
  r = np.linalg.norm(world / [70.0, 90.0, 60.0], axis=1).reshape(shape)
  marker = (np.linalg.norm(world - marker_world, axis=1) < 12).reshape(shape)
  volume = np.where(r < 1, 400 + 100 * np.sin(world[:, 0] / 9).reshape(shape), 0)
  return np.where(marker, 1500, volume), marker


def test_dicom_tree_to_exams_keeps_an_oblique_orientation_and_seg_lands_on_the_marker(tmp_path):
  """Two visits of a patient (FLAIR oblique, T1 axial), a localiser and a diffusion series: the
  mapping skips what it cannot use, the converted FLAIR has the marker at the same world position,
  and a DICOM SEG of the marker (segmented on the NIfTI) marks exactly the marker's DICOM pixels."""
  shape = (96, 110, 44)
  flair_affine = _oblique_affine(shape)
  marker_world = np.array([-30.0, 15.0, 20.0])  # left, anterior, superior (RAS)
  flair, marker = _head(shape, flair_affine, marker_world)
  t1_affine = np.diag([-1.2, -1.2, 1.2, 1.0])
  t1_affine[:3, 3] = [80, 90, -60]
  t1, _ = _head((128, 150, 100), t1_affine, marker_world)
  dicom_root = tmp_path / "dicom"
  for visit, date in ((1, "20230105"), (2, "20240110")):
    folder = dicom_root / f"visit{visit}"
    write_series(flair, flair_affine, folder / "s3", description="t2_tirm_tra_dark-fluid",
                 study_date=date, series_number=3)
    write_series(t1, t1_affine, folder / "s2", description="t1_mprage_tra", study_date=date,
                 series_number=2)
    write_series(flair[..., :3], flair_affine, folder / "s1", description="localizer",
                 study_date=date, series_number=1)
    write_series(flair[..., :5], flair_affine, folder / "s9", description="ep2d_diff_trace",
                 study_date=date, series_number=9)
  assert dicom.is_dicom_tree(str(dicom_root))
  exams, skipped = dicom.plan(str(dicom_root))
  assert [(e["visit"], sorted(e["sequences"])) for e in exams] == [
      ("study1", ["FLAIR", "T1W"]), ("study2", ["FLAIR", "T1W"])]
  assert sorted(s.description for s in skipped) == ["ep2d_diff_trace"] * 2 + ["localizer"] * 2

  out = dicom.convert(str(dicom_root), str(tmp_path / "nifti"), log=lambda *a: None)
  cohort = cohort_lib.load_cohort(out)
  assert [e.bids_prefix for e in cohort.exams] == ["sub-PAT01_ses-study1", "sub-PAT01_ses-study2"]
  exam = cohort.exams[1]
  assert os.path.exists(exam.images["FLAIR"].replace(".nii.gz", ".json"))  # the sidecar kept
  converted = nifti.read_nifti(exam.images["FLAIR"])
  level = 0.5 * (converted.data.max() + 400)
  found = nib.affines.apply_affine(converted.grid.affine,
                                   np.argwhere(converted.data > level).mean(0))
  np.testing.assert_allclose(found, nib.affines.apply_affine(flair_affine,
                                                             np.argwhere(marker).mean(0)),
                             atol=0.5)  # same world position: orientation survived
  # the mask msjax computes on the converted file, written as SEG over the source series
  img = nib.load(exam.images["FLAIR"])
  mask = (np.asarray(img.dataobj) > level).astype(np.uint8)
  sources = dicom.sources_of(exam.images["FLAIR"])["FLAIR"]["files"]
  assert sources == sorted(str(p) for p in (dicom_root / "visit2" / "s3").iterdir())
  path = dicom_seg.write_seg(mask, img.affine, sources, str(tmp_path / "seg.dcm"))
  frames = dicom_seg.read_seg_frames(path, sources)
  pixels = np.stack([ds.pixel_array for ds in dicom_seg.read_sources(sources)])
  truth = pixels > level
  assert frames.shape == truth.shape and (frames > 0).sum() == truth.sum()
  assert np.array_equal(frames > 0, truth)


def test_series_without_a_patient_id_are_told_apart_by_patient_and_study(tmp_path):
  """Without PatientID, series are grouped by the patient's attributes; without those either,
  by study, so that two anonymous exams are never taken for two visits of one patient."""
  import pydicom

  from dicom_files import write_series
  from msjax.data import dicom
  vol = np.full((8, 8, 4), 100.0)
  a = write_series(vol, np.eye(4), tmp_path / "a", description="FLAIR", patient_id="X",
                   study_date="20240101")
  b = write_series(vol, np.eye(4), tmp_path / "b", description="FLAIR", patient_id="Y",
                   study_date="20250101")
  c = write_series(vol, np.eye(4), tmp_path / "c", description="FLAIR", patient_id="Z",
                   study_date="20250101")
  for paths, keep_name in ((a, True), (b, True), (c, False)):
    for p in paths:
      ds = pydicom.dcmread(p)
      del ds.PatientID
      if not keep_name:
        for k in ("PatientName", "PatientBirthDate", "PatientSex"):
          delattr(ds, k)
      ds.save_as(p)
  found = {os.path.basename(os.path.dirname(s.files[0])): s.patient
           for s in dicom.scan_series(str(tmp_path))}
  assert found["a"] != found["b"]  # names X^Test and Y^Test: two patients
  assert found["c"].startswith("unknown-") and found["c"] not in (found["a"], found["b"])


def _damaged_series(tmp_path, damage):
  from dicom_files import write_series
  vol = np.random.default_rng(0).uniform(50, 150, (12, 12, 10))
  affine = np.diag([1.0, 1.0, 3.0, 1.0])
  paths = write_series(vol, affine, tmp_path / "flair", description="AX FLAIR", series_number=3)
  write_series(vol, affine, tmp_path / "t2", description="AX T2", series_number=4)
  import pydicom
  if damage == "gap":
    os.remove(paths[5])  # a file lost in transfer: a 6 mm step among 3 mm ones
  elif damage == "orientation":
    ds = pydicom.dcmread(paths[-1])  # a localiser slice merged into the series
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ds.save_as(paths[-1])
  elif damage == "duplicate":
    ds = pydicom.dcmread(paths[2])  # one slice exported twice
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(str(tmp_path / "flair" / "copy.dcm"))
  return str(tmp_path)


@pytest.mark.parametrize("damage,words", [("gap", "a gap: 6.00 mm"),
                                          ("orientation", "more than one orientation"),
                                          ("duplicate", "repeated unequally")])
def test_a_series_that_is_not_one_regular_volume_is_left_out_by_name(tmp_path, damage, words):
  """A FLAIR series with a missing file, a merged localiser slice or a duplicated slice is never
  converted with a wrong geometry: it is skipped with the reason, the sound T2 is kept."""
  pytest.importorskip("pydicom")
  from msjax.data import dicom
  exams, skipped = dicom.plan(_damaged_series(tmp_path, damage))
  assert [sorted(e["sequences"]) for e in exams] == [["T2W"]]
  (flair,) = [s for s in skipped if s.number == 3]
  assert "FLAIR, but not one regular volume" in flair.why and words in flair.why, flair.why


def test_a_regular_series_has_no_geometry_problem(tmp_path):
  pytest.importorskip("pydicom")
  from msjax.data import dicom
  exams, skipped = dicom.plan(_damaged_series(tmp_path, "none"))
  assert [sorted(e["sequences"]) for e in exams] == [["FLAIR", "T2W"]] and not skipped
