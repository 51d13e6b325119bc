"""An exam as model input: one grid, masks, patch size, geometry sanity (msjax/data/exams.py)."""
import numpy as np

from msjax.data import exams as exams_lib
from msjax.data import inspect as inspect_lib
from msjax.data import manifest as manifest_lib
from nifti_files import FOUR_MM, exam_folder, expect, save


def test_different_grids_in_one_exam(tmp_path):
  shifted = FOUR_MM.copy()
  shifted[0, 3] = 5.0
  d, paths = exam_folder(tmp_path, affines={"T1W": shifted})
  exam = manifest_lib.Exam("p1", "p1", True, paths)
  msg = expect("not on the grid", exams_lib.load_exam, exam, patch_size=8)
  assert paths["T1W"] in msg


def test_mask_on_different_grid(tmp_path):
  d, paths = exam_folder(tmp_path)
  m = save(d / "consensus.nii.gz", np.zeros((20, 20, 21), np.uint8), FOUR_MM)
  exam = manifest_lib.Exam("p1", "p1", True, paths, consensus=m)
  expect("not on the grid", exams_lib.load_exam, exam, patch_size=8)


def test_volume_smaller_than_patch(tmp_path):
  d, paths = exam_folder(tmp_path, shape=(20, 20, 12))  # 12 slices: a 48 mm field of view
  exam = manifest_lib.Exam("p1", "p1", True, paths)
  msg = expect("smaller than one 16³ patch", exams_lib.load_exam, exam, patch_size=16,
               allow_any_geometry=True)
  rows = inspect_lib.inspect_cohort(manifest_lib.Cohort(str(tmp_path), (exam,)), patch_size=16,
                                    allow_any_geometry=True)
  assert any("smaller than one 16" in p for p in rows[0]["problems"]), msg


def test_empty_lesion_mask_is_allowed_and_counted(tmp_path):
  d, paths = exam_folder(tmp_path)
  m = save(d / "consensus.nii.gz", np.zeros((20, 20, 20), np.uint8), FOUR_MM)
  exam = manifest_lib.Exam("p1", "p1", True, paths, consensus=m)
  arrays = exams_lib.load_exam(exam, patch_size=8)
  assert arrays.reference.sum() == 0
  rows = inspect_lib.inspect_cohort(manifest_lib.Cohort(str(tmp_path), (exam,)), patch_size=8)
  assert rows[0]["lesion_ml"] == 0 and rows[0]["lesions_empty"] and not rows[0]["problems"]
  assert "(empty)" in inspect_lib.format_inspect_table(rows)


def test_a_geometry_that_cannot_be_a_brain_is_refused_with_its_numbers(tmp_path):
  d, paths = exam_folder(tmp_path, affines={"T1W": np.eye(4), "FLAIR": np.eye(4)})  # 20 mm
  exam = manifest_lib.Exam("p1", "p1", True, paths)
  msg = expect("field of view 20 x 20 x 20 mm", exams_lib.load_exam, exam, patch_size=8)
  assert "T1W.nii.gz" in msg and "allow_any_geometry" in msg
  assert exams_lib.load_exam(exam, patch_size=8, allow_any_geometry=True).shape == (20, 20, 20)
  huge = np.diag([30.0, 30.0, 30.0, 1.0])  # 30 mm voxels
  (tmp_path / "x").mkdir()
  d2, paths2 = exam_folder(tmp_path / "x", affines={"T1W": huge, "FLAIR": huge})
  expect("voxel size 30 x 30 x 30 mm", exams_lib.load_exam,
         manifest_lib.Exam("p2", "p2", True, paths2), patch_size=8)


def test_an_exam_loader_reads_the_files_once_for_every_grid_phase(tiny_cohort, monkeypatch):
  exam = tiny_cohort.by_id("synth000")
  reads = []
  real = exams_lib.read_exam_files
  monkeypatch.setattr(exams_lib, "read_exam_files",
                      lambda *a, **k: reads.append(1) or real(*a, **k))
  load = exams_lib.exam_loader(exam, model_shape=(32, 32, 32), patch_size=16)
  for phase in (None, (0.5, 0.0, 0.5), (0.0, 0.5, 0.0)):
    got = load(phase=phase)
    want = exams_lib.load_exam(exam, model_shape=(32, 32, 32), patch_size=16, phase=phase)
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.brain, want.brain)
  assert len(reads) == 1 + 3  # the loader's one read, then load_exam's own each time
