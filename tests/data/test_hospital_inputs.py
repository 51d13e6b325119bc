"""What real users feed msjax, refused in one clear line that names the file or folder, with
nothing allocated, half-written or overwritten (issue: hospital inputs and outputs)."""
import json
import os
import stat
import subprocess
import sys
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT
from msjax import files
from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti, scan
from nifti_files import expect, touch_nifti


def test_unwritable_output_folder_is_refused_naming_it(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  msg = expect("cannot be written", files.writable_folder, str(blocker / "out"), "workdir")
  assert str(blocker / "out") in msg and "workdir" in msg
  msg = expect("cannot create this folder", files.write_json, {}, str(blocker / "x" / "s.json"))
  assert str(blocker / "x") in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_output_folder_is_refused(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    expect(f"{ro}: the workdir cannot be written", files.writable_folder, str(ro), "workdir")
    expect(f"{ro}: cannot write s.json here", files.write_json, {}, str(ro / "s.json"))
  finally:
    ro.chmod(0o755)


def test_main_refuses_an_unwritable_workdir_before_any_work(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = subprocess.run(
      [sys.executable, "-m", "msjax.main", "--config=inspect",
       f"--config.cohort={tmp_path}", f"--workdir={blocker}/w"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert f"{blocker}/w: the workdir cannot be written" in proc.stderr


def test_outputs_get_the_users_normal_permissions(tmp_path):
  old = os.umask(0o022)
  try:
    import importlib
    importlib.reload(files)  # the umask is read once, at import
    path = files.write_json({"a": 1}, str(tmp_path / "summary.json"))
    nii = nifti.write_nifti(np.zeros((4, 4, 4)), np.eye(4), str(tmp_path / "m.nii.gz"))
  finally:
    os.umask(old)
    importlib.reload(files)
  for p in (path, nii):
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, oct(os.stat(p).st_mode)


def test_a_nifti_file_where_a_folder_is_expected(tmp_path):
  path = str(tmp_path / "exam" / "FLAIR.nii.gz")
  touch_nifti(path)
  msg = expect("a NIfTI image, where a folder is expected", cohort_lib.load_cohort, path)
  assert path in msg and str(tmp_path / "exam") in msg
  binary = tmp_path / "cohort.json"
  binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
  expect("not a cohort manifest", cohort_lib.load_cohort, str(binary))


def _lying_header(path, shape, dtype=np.float32):
  """A small real file whose header claims `shape` voxels."""
  img = nib.Nifti1Image(np.ones((8, 8, 8), dtype), np.eye(4))
  img.header.set_data_shape(shape)
  data = np.ones((8, 8, 8), dtype).tobytes()
  with open(path, "wb") as f:
    f.write(img.header.binaryblock + b"\0" * (int(img.header["vox_offset"]) - 348) + data)
  return str(path)


@pytest.mark.parametrize("shape,why", [((1024, 1024, 768), "but the file holds"),
                                       ((4096, 4096, 4096), "not a brain MRI volume")])
def test_header_claiming_more_than_the_file_holds_is_refused_without_allocating(tmp_path, shape,
                                                                               why):
  path = _lying_header(tmp_path / "FLAIR.nii", shape)
  tracemalloc.start()
  try:
    msg = expect(why, nifti.read_nifti, path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert path in msg and peak < 50 * 2 ** 20, peak  # nothing near the claimed GiB


def test_gzipped_header_claiming_more_than_the_file_holds(tmp_path):
  import gzip
  raw = _lying_header(tmp_path / "FLAIR.nii", (1024, 1024, 768))
  gz = str(tmp_path / "FLAIR.nii.gz")
  with open(raw, "rb") as src, gzip.open(gz, "wb") as dst:
    dst.write(src.read())
  expect("but the file holds", nifti.read_nifti, gz)


def test_exam_names_colliding_after_bids_sanitising_are_refused_with_both_names(tmp_path):
  for name in ("pat-01", "pat_01", "pat02"):
    touch_nifti(str(tmp_path / name / "FLAIR.nii.gz"))
  exams = scan.build_cohort(str(tmp_path)).exams
  msg = expect("write the same output files", manifest_lib.check_output_names, exams)
  assert "sub-pat01: pat-01" in msg and "pat_01" in msg and "pat02" not in msg
  manifest_lib.check_output_names([e for e in exams if e.exam_id != "pat_01"])


def test_model_bundle_without_weights_is_refused(tmp_path):
  from msjax.infer import bundle as bundle_lib
  bundle = {"model": {}, "threshold": 0.5, "patch_size": 32,
            "preprocessing": {"by": "external", "nyul_landmarks": {}}}
  (tmp_path / "bundle.json").write_text(json.dumps(bundle))
  msg = expect("has no weights", bundle_lib.read, str(tmp_path))
  assert str(tmp_path / "bundle.json") in msg
