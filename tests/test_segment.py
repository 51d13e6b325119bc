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
from msjax.data import nifti


def _files(out, summary_row):
  """An exam's output files (its summary lists them relative to the dataset root)."""
  return {k: os.path.join(str(out), v) for k, v in summary_row["files"].items()}


def _flair_model(trained, folder) -> str:
  """A copy of the session's model whose bundle takes FLAIR alone, as a model trained with
  sequence dropout does (the tiny synthetic one was not)."""
  shutil.copytree(trained, folder)
  path = os.path.join(folder, "bundle.json")
  bundle = json.load(open(path))
  bundle["inputs"]["subsets"].append(["FLAIR"])
  from msjax import shipped
  json.dump(shipped.seal(bundle), open(path, "w"))  # re-sealed: an edit msjax would refuse
  return str(folder)


def _segment(trained, input_dir, workdir, **overrides):
  config = load_config("segment", "smoke", model=trained, input=str(input_dir), preprocessed=True,
                       **overrides)
  return segment.run(config, str(workdir))


@pytest.mark.slow  # needs the session's trained model
def test_segment_writes_bids_derivatives_and_goes_on_past_a_bad_exam(trained, tiny_cohort, tmp_path):
  src = tmp_path / "in"
  for exam in tiny_cohort.exams[:2]:
    shutil.copytree(os.path.dirname(exam.images["FLAIR"]), src / exam.exam_id)
  bad = src / "broken"  # every sequence the model takes, its FLAIR not a NIfTI
  shutil.copytree(os.path.dirname(tiny_cohort.exams[0].images["FLAIR"]), bad)
  (bad / "FLAIR.nii.gz").write_bytes(b"not a nifti")
  (bad / "T2W.hdr").write_bytes(b"\0" * 348)  # not read, named in the summary with what to do
  summary = _segment(trained, src, tmp_path / "out", **{"predict.threshold": 0.3})
  assert [(os.path.basename(u["file"]), u["why"][:21]) for u in summary["unused"]] == [
      ("T2W.hdr", "an Analyze 7.5 image ")]
  assert [r["exam_id"] for r in summary["exams"]] == [e.exam_id for e in tiny_cohort.exams[:2]]
  assert [f["exam_id"] for f in summary["failed"]] == ["broken"]
  assert "cannot be read as NIfTI" in summary["failed"][0]["error"]
  for summary_row, exam in zip(summary["exams"], tiny_cohort.exams[:2]):
    row = _files(tmp_path / "out", summary_row)
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
  assert not os.path.exists(tmp_path / "out" / "work")  # nothing left of the staging


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
  row = _files(tmp_path, summary["exams"][0])
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


def _exam_folders(tiny_cohort, root, n=3):
  for exam in tiny_cohort.exams[:n]:
    shutil.copytree(os.path.dirname(exam.images["FLAIR"]), root / exam.exam_id)
  return root


def _masks(out):
  found = {}
  for dirpath, _, names in os.walk(out):
    for name in names:
      if name.endswith("_desc-lesion_mask.nii.gz"):
        found[name] = np.asarray(nib.load(os.path.join(dirpath, name)).dataobj)
  return found


@pytest.mark.slow  # needs the session's trained model; four segment runs
def test_sharded_and_resumed_runs_give_the_outputs_of_one_run(trained, tiny_cohort, tmp_path,
                                                              monkeypatch):
  src = _exam_folders(tiny_cohort, tmp_path / "in")
  _segment(trained, src, tmp_path / "one")
  for k in range(2):
    summary = _segment(trained, src, tmp_path / "sharded", shard=f"{k}/2")
    assert len(summary["exams"]) == (2 if k == 0 else 1)
    assert os.path.exists(tmp_path / "sharded" / f"segmentations.shard-{k}-of-2.csv")
  _segment(trained, src, tmp_path / "sharded", merge=True)
  one = (tmp_path / "one" / "segmentations.csv").read_text()
  assert (tmp_path / "sharded" / "segmentations.csv").read_text() == one
  masks = _masks(tmp_path / "one")
  assert len(masks) == 3
  sharded = _masks(tmp_path / "sharded")
  assert sharded.keys() == masks.keys() and all(np.array_equal(sharded[k], masks[k]) for k in masks)

  # a re-run with the same settings keeps every exam; with another threshold it redoes them,
  # and one interrupted while writing its second exam (its outputs built aside, not yet moved)
  # leaves that exam's first-run outputs whole; the next re-run completes only the rest
  again = _segment(trained, src, tmp_path / "one")
  assert len(again["resumed"]) == 3 and not again["exams"]
  real = segment.outputs.publish
  calls = []

  def dies_on_the_second(staging, root, exam):
    calls.append(exam.exam_id)
    if len(calls) == 2:
      raise KeyboardInterrupt("Ctrl-C")
    return real(staging, root, exam)

  monkeypatch.setattr(segment.outputs, "publish", dies_on_the_second)
  # another shard's run into the same workdir, writing an exam of its own at that moment: the
  # interrupted run removes only what it built, not the other run's exam in the making
  other = tmp_path / "one" / "work" / "staging" / "sub-othershard"
  other.mkdir(parents=True)
  (other / "half_written.nii.gz").write_bytes(b"the other run's")
  with pytest.raises(SystemExit) as stop:
    _segment(trained, src, tmp_path / "one", **{"predict.threshold": 0.3})
  assert stop.value.code == 130
  monkeypatch.setattr(segment.outputs, "publish", real)
  now = _masks(tmp_path / "one")
  assert len(now) == 3 and os.listdir(other.parent) == ["sub-othershard"]
  assert (other / "half_written.nii.gz").read_bytes() == b"the other run's"
  shutil.rmtree(tmp_path / "one" / "work")  # the other run's, done with
  second = [k for k in now if calls[1] in k]
  assert second and all(np.array_equal(now[k], masks[k]) for k in second)  # the old set, whole
  summary = _segment(trained, src, tmp_path / "one", **{"predict.threshold": 0.3})
  assert [s["exam_id"] for s in summary["resumed"]] == [calls[0]]
  assert sorted(r["exam_id"] for r in summary["exams"]) == sorted(calls[1:]) + sorted(
      set(e.exam_id for e in tiny_cohort.exams[:3]) - set(calls))
  assert all(r["threshold"] == 0.3 for r in summary["resumed"] + summary["exams"])

  # an exam whose input file changed under the same name (a scan exported again) is redone, the
  # others kept
  changed = tiny_cohort.exams[1].exam_id
  flair = src / changed / "FLAIR.nii.gz"
  image = nib.load(str(flair))
  nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32) * 1.01, image.affine), str(flair))
  summary = _segment(trained, src, tmp_path / "one", **{"predict.threshold": 0.3})
  assert [r["exam_id"] for r in summary["exams"]] == [changed]
  assert len(summary["resumed"]) == 2

  # an exam that now fails keeps its earlier outputs, whole, and says so
  before = _masks(tmp_path / "one")
  flair = src / tiny_cohort.exams[0].exam_id / "FLAIR.nii.gz"
  flair.write_bytes(b"broken")
  summary = _segment(trained, src, tmp_path / "one", overwrite=True)
  assert summary["failed"][0]["earlier_outputs_kept"]
  after = _masks(tmp_path / "one")
  assert after.keys() == before.keys()
  assert all(np.array_equal(after[k], before[k]) for k in before
             if tiny_cohort.exams[0].exam_id in k)


@pytest.mark.slow  # needs the session's trained model
def test_a_failing_report_leaves_the_mask_and_table(trained, tiny_cohort, tmp_path, monkeypatch):
  """The report is optional: its failure leaves the exam segmented (mask, probability, table),
  said in its status, the console and the cohort table."""
  from msjax.infer import clinical

  def broken(*args, **kwargs):
    raise RuntimeError("no atlas here")

  monkeypatch.setattr(clinical, "report_exam", broken)
  src = _exam_folders(tiny_cohort, tmp_path / "in", n=1)
  summary = _segment(trained, src, tmp_path / "out", **{"report.enabled": True})
  assert not summary["failed"] and len(summary["exams"]) == 1
  row = summary["exams"][0]
  assert row["status"] == "segmented; report failed: RuntimeError: no atlas here"
  files_ = _files(tmp_path / "out", row)
  assert os.path.exists(files_["mask"]) and os.path.exists(files_["table"])
  table = list(csv.DictReader(open(tmp_path / "out" / "segmentations.csv")))
  assert table[0]["status"].startswith("segmented; report failed")
  # one count and one volume, every column described beside the table (as BIDS does)
  described = json.load(open(tmp_path / "out" / "segmentations.json"))
  assert set(described) == set(table[0]) and described["volume_ml"]["Units"] == "mL"
  assert "components" not in table[0] and "mask_volume_ml" not in table[0]


def test_colliding_exam_names_are_refused_before_anything_is_written(tmp_path):
  from nifti_files import touch_nifti
  for name in ("pat-01", "pat_01"):
    touch_nifti(str(tmp_path / "in" / name / "FLAIR.nii.gz"))
  bundle = tmp_path / "model"
  (bundle / "checkpoints" / "1").mkdir(parents=True)
  (bundle / "bundle.json").write_text(json.dumps(
      {"model": {}, "threshold": 0.5, "patch_size": 16,
       "preprocessing": {"by": "external", "nyul_landmarks": {}}}))
  with pytest.raises(segment.errors.InvalidInputError, match="sub-pat01: pat-01 .* and pat_01"):
    _segment(str(bundle), tmp_path / "in", tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")


def test_slurm_array_script_passes_each_task_its_shard(tmp_path):
  """launch/slurm_segment_array.sbatch: task K of an array of N runs --config.shard=K/N (from 0,
  whatever the array's first index) with resume, passing extra flags on."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "python").write_text('#!/bin/bash\necho "$@"\n')
  (fake / "python").chmod(0o755)
  env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_COUNT": "4",
         "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5"}
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm_segment_array.sbatch"),
                        "model", "in", "out", "--config.seed=1"], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  assert "--config.shard=2/4" in out and "--config.resume=True" in out
  assert out[-1] == "--config.seed=1" and "--config.model=model" in out


@pytest.mark.slow  # a real 182×218×182 exam, twice, and its DICOM series
@needs_lesjak()
def test_dicom_round_trip_of_a_real_exam(trained, tmp_path):
  """Lesjak patient26's FLAIR (as 16-bit integers, as scanners store it) segmented from NIfTI and
  from a DICOM series of the same pixels: the same mask, and the DICOM SEG read back equal to it
  slice by slice on the source images."""
  pytest.importorskip("highdicom", reason="DICOM extra not installed: pip install -e '.[preprocess]'")
  from dicom_files import write_series
  from msjax.data import nifti
  from msjax.infer import dicom_seg
  src = nib.load(os.path.join(LESJAK_MNI, "patient26", "FLAIR.nii.gz"))
  v = np.asarray(src.dataobj, np.float32)
  q = np.where(v != 0, np.rint((v - v.min()) / (v.max() - v.min()) * 4000) + 1, 0).astype(np.uint16)
  (tmp_path / "nii" / "patient26").mkdir(parents=True)
  nib.save(nib.Nifti1Image(q, src.affine), str(tmp_path / "nii" / "patient26" / "FLAIR.nii.gz"))
  write_series(q.astype(np.float32), src.affine, tmp_path / "dcm" / "series3",
               description="t2_tirm_tra_dark-fluid", patient_id="patient26", series_number=3)
  model = _flair_model(trained, tmp_path / "model")
  # what is compared is how the pixels and the mask travel, not the mask's quality: patches side
  # by side (8x fewer than at overlap 0.5) and no clinical report (its own tests: tests/report)
  fast = {"predict.overlap": 0.0, "report.enabled": False}
  by_nifti = _files(tmp_path / "a", _segment(model, tmp_path / "nii" / "patient26",
                                            tmp_path / "a", **fast)["exams"][0])
  row = _segment(model, tmp_path / "dcm", tmp_path / "b", **fast)["exams"][0]
  by_dicom = _files(tmp_path / "b", row)
  assert row["exam_id"] == "patient26_study1" and "dicom_seg" in by_dicom
  a = nifti.read_nifti(by_nifti["mask"], kind="mask")
  b = nifti.read_nifti(by_dicom["mask"], kind="mask")
  assert a.grid.same_as(b.grid) and a.data.sum() > 0
  assert np.array_equal(a.data, b.data)
  sources = sorted(str(p) for p in (tmp_path / "dcm" / "series3").iterdir())
  frames = dicom_seg.read_seg_frames(by_dicom["dicom_seg"], sources)
  mask_file_order = np.asarray(nib.load(by_nifti["mask"]).dataobj)  # the source file's order
  for frame, ds in zip(frames, dicom_seg.read_sources(sources)):
    k = int(ds.InstanceNumber) - 1
    assert np.array_equal(frame, mask_file_order[:, :, k].T), k


@pytest.mark.slow  # two raw exams preprocessed for real (registrations), twice
def test_overlapped_preprocessing_gives_the_same_outputs_in_order(tmp_path, monkeypatch, capfd):
  """With --config.overlap the next raw exam is preprocessed in a second process while the
  network runs on the current one: same masks, same table, exams in order, a broken one reported;
  the second process's preprocessing steps reach the console like the first's."""
  pytest.importorskip("SimpleITK", reason="preprocessing extra not installed")
  from msjax.preprocess import nyul
  from preprocess.test_geometry import MarkerPredictor, draw_exam
  for name in ("p1", "p2"):
    draw_exam(tmp_path / "in" / name, "LPS")
  # p2's FLAIR stored as a 4D file of one volume (x, y, z, 1), as some converters write a 3D
  # image: read, preprocessed and reported as the 3D image it is (the report once broadcast it)
  flair = nib.load(tmp_path / "in" / "p2" / "FLAIR.nii.gz")
  nib.save(nib.Nifti1Image(np.asanyarray(flair.dataobj)[..., None], flair.affine, flair.header),
           tmp_path / "in" / "p2" / "FLAIR.nii.gz")
  (tmp_path / "in" / "p3").mkdir()
  (tmp_path / "in" / "p3" / "FLAIR.nii.gz").write_bytes(b"broken")
  standard = [float(v) for v in np.linspace(0, 100, len(nyul.PERCENTILES))]
  bundle = {"path": "stand-in", "threshold": 0.5, "patch_size": 32, "model": {},
            "preprocessing": {"nyul_landmarks": {"FLAIR": {"standard": standard}}}}
  monkeypatch.setattr(segment.bundle_lib, "read", lambda path: bundle)
  monkeypatch.setattr(segment.predict, "Predictor", lambda *a, **k: MarkerPredictor())
  # with ITK's default threads, in this process and the spawned one: bit-identical (the
  # registrations sum in one work unit, steps.REGISTRATION_THREADS)
  runs = _segment_with_and_without_overlap(tmp_path, capfd)
  table = {k: list(csv.DictReader(runs[k][0].splitlines())) for k in runs}
  assert table[True] == table[False]
  assert all(np.array_equal(runs[True][1][k], runs[False][1][k]) for k in runs[False][1])


def _segment_with_and_without_overlap(tmp_path, capfd) -> dict:
  from msjax import console
  console.setup()
  runs = {}
  for overlap in (False, True):
    config = load_config("segment", "smoke", model="stand-in", input=str(tmp_path / "in"),
                         overlap=overlap, **{"preprocess.skull_strip": "none",
                                             "preprocess.n4": False})
    out = tmp_path / f"out_{overlap}"
    summary = segment.run(config, str(out))
    assert [r["exam_id"] for r in summary["exams"]] == ["p1", "p2"]
    assert [f["exam_id"] for f in summary["failed"]] == ["p3"]
    runs[overlap] = ((out / "segmentations.csv").read_text(), _masks(out))
    said = capfd.readouterr().err
    for exam in ("p1", "p2"):  # in the worker process when overlapped
      assert f"[preprocess] {exam}: Nyúl" in said or f"[preprocess] {exam}: " in said, said[-2000:]
      assert f"[segment] {exam}: network" in said
    for row in summary["exams"]:  # the clinical report of each exam (both drawn alike)
      _check_the_marker_exams_report(out, row)
    assert "qc" in (out / "segmentations.csv").read_text().splitlines()[0].split(",")
    # each row names the brain extraction its exam's preprocessing took
    rows = list(csv.DictReader((out / "segmentations.csv").read_text().splitlines()))
    assert [r["brain_extraction"] for r in rows] == ["none", "none"], rows
  return runs


def _check_the_marker_exams_report(out, row):
  """The clinical report of an exam drawn by draw_exam (tests/preprocess/test_geometry.py), its
  marker segmented by MarkerPredictor, is what that exam must get:
  - one lesion, the marker: a ball of 10 mm radius (4.19 mL) centred at ROTATION @ MARKER_MNI +
    SHIFT in the subject's world; at MARKER_MNI (-35, 20, 30) such a ball reaches into the
    MNI152 template's cortex (left middle/inferior frontal gyri: 1268 of its 4169 1 mm voxels
    have GM >= 0.5 in the template files) and stays 14 mm from the lateral ventricle (the
    frontal horn), far above the tentorium: cortical/juxtacortical, not periventricular;
  - QC `fail`: the drawn head is a textured ellipsoid, not a brain. Its FLAIR does not fit the
    template's tissue priors (r under the fail bar, 0.45) while its outline does not fit the
    template brain's either (Dice between the fail and check bars, 0.80-0.89), so the poor fit is
    not excused as atrophy (qc.verdict); its 2 mm in-plane voxels are past the check bar
    (1.8 mm); its histogram (texture about 100, the marker 400) is far from the stand-in
    bundle's straight-line Nyúl landmarks (check: gap 25-35). Nothing else is a reason: centre
    and size (it is drawn where the template's brain is, 1.24 L), 2 mm slices, coverage, border;
  - the page: A4 portrait, with slice panels where the marker is outlined in the juxtacortical
    colour and in no other class's, and the verdict written in the fail colour."""
  import re

  import matplotlib.image

  from msjax.report import locations, page
  from preprocess.test_geometry import MARKER_MNI, MARKER_RADIUS, ROTATION, SHIFT
  files = _files(out, row)
  (lesion,) = list(csv.DictReader(open(files["table"])))
  assert lesion["location"] == "juxtacortical", lesion
  assert float(lesion["ventricle_mm"]) > 3.0 and float(lesion["cortex_mm"]) <= 2.5, lesion
  centre = [float(lesion[f"centroid_{a}_mm"]) for a in "xyz"]
  np.testing.assert_allclose(centre, ROTATION @ MARKER_MNI + SHIFT, atol=1.0)
  assert float(lesion["volume_ml"]) == pytest.approx(4 / 3 * np.pi * MARKER_RADIUS ** 3 / 1000,
                                                     rel=0.05)
  assert float(lesion["mni_x_mm"]) < 0 and float(lesion["confidence"]) == 1.0  # left; p 0/1
  assert row["juxtacortical_count"] == row["lesions"] == 1

  assert row["qc"] == "fail"
  reasons = row["qc_reasons"].split("; ")
  patterns = [r"check: MNI registration: the brain's outline overlaps the template brain's by "
              r"Dice (0\.\d\d) \(ok >= 0\.89\)",
              r"fail: MNI registration: FLAIR vs template tissues r = (-?\d\.\d\d) \(ok >= 0\.6\)",
              r"check: in-plane voxels 2\.00 mm \(the model saw up to 1\.8 mm\)",
              r"check: FLAIR intensities far from the model's Nyúl landmarks \(gap (\d+\.\d) of "
              r"100, ok <= 25\)"]
  assert len(reasons) == len(patterns), reasons
  found = [re.fullmatch(p, r) for p, r in zip(patterns, reasons)]
  assert all(found), reasons
  dice, r, gap = float(found[0][1]), float(found[1][1]), float(found[3][1])
  assert 0.80 <= dice < 0.89 and r < 0.45 and 25 < gap <= 35, reasons

  rgb = np.round(matplotlib.image.imread(files["report"])[..., :3] * 255).astype(int)
  height, width = rgb.shape[:2]
  assert width >= 1000 and 1.35 < height / width < 1.48  # A4 (8.27 x 11.69 in) at 130 dpi
  assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100  # drawn, not blank

  def painted(image, colour):  # pixels of a "#rrggbb" colour
    want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image - want).max(-1) <= 10).sum())
  panels = rgb[(rgb.min(-1) < 235).mean(1) > 0.8]  # rows across the slice panels (not white)
  assert len(panels) > 200
  outlines = {c: painted(panels, locations.COLOURS[c]) for c in locations.CLASSES}
  assert outlines["juxtacortical"] > 50 and sum(outlines.values()) == outlines["juxtacortical"], \
      outlines
  assert painted(rgb, page.VERDICT_COLOURS["fail"]) > 100
  assert painted(rgb, page.VERDICT_COLOURS["ok"]) == painted(rgb, page.VERDICT_COLOURS["check"]) \
      == 0


def test_raw_exams_get_the_preprocessing_the_models_training_exams_had():
  """bundle.json's preprocessing options are applied; an option this command sets otherwise is
  used as given (and said); bundles of externally preprocessed exams record none."""
  # neither value is segment's own default (robex, 6 mm), so each comes from the bundle
  bundle = {"preprocessing": {"options": {"skull_strip": "atlas", "n4_mm": 3.0, "mni": True,
                                          "n4_iterations": [20, 20, 20],
                                          "allow_any_geometry": False, "itk_threads": 0}}}
  assert (load_config("segment").preprocess.n4_mm, load_config("segment").preprocess.skull_strip
          ) == (6.0, "robex")
  block = segment.preprocess_block(load_config("segment"), bundle)
  assert (block.skull_strip, block.n4_mm) == ("atlas", 3.0)
  assert block.itk_threads == 2  # the machine it ran on is not how the training exams looked
  given = load_config("segment", **{"preprocess.skull_strip": "threshold"})
  block = segment.preprocess_block(given, bundle)
  assert (block.skull_strip, block.n4_mm) == ("threshold", 3.0)
  external = {"preprocessing": {"options": None}}
  assert segment.preprocess_block(load_config("segment"), external).skull_strip == "robex"


def test_the_bundle_s_threshold_and_lesion_peak_are_used_unless_the_command_sets_them():
  """A shipped model's lesion peak, chosen on left-out patients like its threshold, reaches
  every mask segment and longitudinal write; a bundle made before it keeps every lesion."""
  bundle = {"threshold": 0.45, "min_lesion_peak": 0.8}
  for job in ("segment", "longitudinal"):
    options = segment.inference_options(load_config(job), bundle)
    assert (options.threshold, options.min_lesion_peak) == (0.45, 0.8), job
  given = load_config("segment", **{"predict.min_lesion_peak": 0.0, "predict.threshold": 0.5})
  options = segment.inference_options(given, bundle)
  assert (options.threshold, options.min_lesion_peak) == (0.5, 0.0)
  assert segment.inference_options(load_config("segment"), {"threshold": 0.5}).min_lesion_peak == 0


def test_a_model_trained_on_skull_stripped_exams_leaves_raw_exams_their_own_brain_extraction():
  """Training exams that came in skull-stripped (leave_one_out's preprocess_labelled=stripped)
  were made without N4, co-registration or brain extraction: a raw exam still gets this
  command's, and only the MNI registration is taken from the bundle."""
  bundle = {"preprocessing": {"by": "msjax", "options": {
      "n4": False, "coregistration": "none", "skull_strip": "none", "mni": True,
      "n4_mm": 3.0, "n4_iterations": [20, 20, 20], "allow_any_geometry": False}}}
  block = segment.preprocess_block(load_config("segment"), bundle)
  assert (block.n4, block.coregistration, block.skull_strip) == (True, "auto", "robex")
  raw_bundle = {"preprocessing": {"by": "msjax", "options": dict(
      bundle["preprocessing"]["options"], skull_strip="atlas", n4=True)}}
  assert segment.preprocess_block(load_config("segment"), raw_bundle).skull_strip == "atlas"


def test_an_exam_given_preprocessed_is_registered_only_when_off_the_model_grid(tmp_path):
  """--config.preprocessed=True with a model whose exams msjax made: an exam on the 128³ model
  grid goes to the network as it is; an MNI-space exam on another grid goes through the
  stripped-exam pipeline (its MNI registration, the bundle's Nyúl landmarks). With a model of
  externally preprocessed exams, every exam goes as it is."""
  from msjax.data import manifest as manifest_lib
  from msjax.data import mni
  pytest.importorskip("SimpleITK", reason="preprocessing extra not installed")
  image = np.zeros(mni.MODEL_SHAPE, np.float32)
  image[40:80, 40:80, 40:80] = 1.0
  on_grid = nifti.write_nifti(image, mni.box_affine(),
                              str(tmp_path / "on_grid_FLAIR.nii.gz"))
  exam = manifest_lib.Exam(exam_id="a", patient_id="a", ms=True, images={"FLAIR": on_grid})
  one = {"predict.phases": 1}  # the model grid as it is (the phases: at the end)
  config = load_config("segment", preprocessed=True, **one)
  msjax_made = {"preprocessing": {"by": "msjax", "options": {"skull_strip": "robex"},
                                  "nyul_landmarks": {}}}
  prepare = segment.preprocessor(config, msjax_made, str(tmp_path))
  assert prepare.keywords["options"].skull_strip == "none"  # the stripped-exam pipeline
  assert not prepare.keywords["options"].n4
  assert prepare(exam) is exam  # on the model grid: as it is, nothing registered
  external = {"preprocessing": {"by": "external", "options": None, "nyul_landmarks": {}}}
  assert segment.preprocessor(config, external, str(tmp_path))(exam) is exam
  # a model trained on a finer grid: its exams are made on that grid, and one given on it passes
  finer = dict(msjax_made, model_grid=[96, 96, 96])
  prepare = segment.preprocessor(config, finer, str(tmp_path))
  assert prepare.keywords["options"].grid == (96, 96, 96)
  on_finer = nifti.write_nifti(np.zeros((96, 96, 96), np.float32), mni.box_affine((96, 96, 96)),
                               str(tmp_path / "finer_FLAIR.nii.gz"))
  finer_exam = manifest_lib.Exam(exam_id="b", patient_id="b", ms=True, images={"FLAIR": on_finer})
  assert prepare(finer_exam) is finer_exam
  raw = segment.preprocessor(load_config("segment", **one), finer, str(tmp_path))
  assert raw.keywords["options"].grid == (96, 96, 96)  # raw exams straight onto the model's grid
  # a grid asked on the command line: the model's own passes, any other is refused, named
  same = segment.preprocessor(load_config("segment", **{"preprocess.grid": (96, 96, 96)}, **one),
                              finer, str(tmp_path))
  assert same.keywords["options"].grid == (96, 96, 96)
  with pytest.raises(segment.errors.InvalidInputError, match=r"preprocess.grid=\(160, 160, 160\).*"
                     r"\(96, 96, 96\)"):
    segment.preprocessor(load_config("segment", **{"preprocess.grid": (160, 160, 160)}), finer,
                         str(tmp_path))
  # test-time grid phases: raw exams are written on the 1 mm MNI grid, which the loader samples
  # the model grid from at each phase; an exam given on the model grid still goes as it is
  phased = segment.preprocessor(load_config("segment", **{"predict.phases": 8}), finer,
                                str(tmp_path))
  assert phased.keywords["options"].grid == mni.MNI_SHAPE
  given = segment.preprocessor(load_config("segment", preprocessed=True,
                                           **{"predict.phases": 8}), finer, str(tmp_path))
  assert given.keywords["options"].grid == mni.MNI_SHAPE and given(finer_exam) is finer_exam
  assert segment.exam_grid({"model_grid": list(mni.MNI_SHAPE)}, 8) == mni.MNI_SHAPE


def test_a_rerun_names_only_the_settings_that_changed(monkeypatch, caplog):
  """Settings read back from an exam's summary (JSON: lists, not tuples) are compared as JSON:
  a re-run with another threshold names `predict`, not `preprocess` and `report` as well."""
  import json
  import logging as std_logging

  from msjax.data import manifest as manifest_lib
  mine = {"model": "m", "predict": {"threshold": 0.5}, "preprocess": {"n4_iterations": (20, 20)},
          "report": {"slices": (1, 2)}}
  before = json.loads(json.dumps(dict(mine, predict={"threshold": 0.3})))
  monkeypatch.setattr(segment.outputs, "complete",
                      lambda workdir, exam: {"settings": before, "settings_sha256": "old"})
  config = load_config("segment")
  exam = manifest_lib.Exam(exam_id="e1", patient_id="p1", ms=True, images={"FLAIR": "f.nii.gz"})
  with caplog.at_level(std_logging.INFO):
    todo, done = segment._to_do([exam], "w", config, "new", mine)
  assert [e.exam_id for e in todo] == ["e1"] and not done
  assert "made with other settings (predict);" in caplog.text


def test_the_network_is_built_beside_the_first_raw_exam_and_a_failure_reaches_the_exam(
    monkeypatch):
  """segment builds and compiles the network in a thread while the first raw exam is
  preprocessed; a build that failed there is tried again in the caller, whose exam row then
  carries the error."""
  import threading
  built = []

  class Network:
    def __init__(self, path):
      built.append(threading.current_thread() is threading.main_thread())

    def warm_up(self, options):
      built.append(options)
      return 0.0

  monkeypatch.setattr(segment.predict, "Predictor", Network)
  network = segment.Network("model", "options", background=True)
  got = network.get()
  assert isinstance(got, Network) and network.get() is got
  assert built == [False, "options"]  # built off the main thread, then warmed up
  built.clear()
  segment.Network("model", "options", background=False).get()
  assert built == [True]  # exams given preprocessed: built where they run, no warm-up

  def broken(path):
    built.append(threading.current_thread() is threading.main_thread())
    raise ValueError("weights.npz is truncated")

  built.clear()
  monkeypatch.setattr(segment.predict, "Predictor", broken)
  with pytest.raises(ValueError, match="truncated"):
    segment.Network("model", "options", background=True).get()
  assert built == [False, True]


def test_qc_sees_the_exam_as_the_network_does_hot_voxels_replaced(tiny_cohort, tmp_path):
  """An exam given on the model grid with hot voxels: the loader's z-scoring replaces them
  (exams.despike), and so do the images QC measures (a few spikes read as noise by its structure
  measure, and failed a good exam)."""
  import dataclasses

  from msjax.infer import clinical
  exam = tiny_cohort.exams[0]
  folder = tmp_path / "hot"
  shutil.copytree(os.path.dirname(exam.images["FLAIR"]), folder)
  path = folder / os.path.basename(exam.images["FLAIR"])
  img = nib.load(path)
  data = np.asarray(img.dataobj, np.float32)
  spot = tuple(int(i) for i in np.argwhere(data > np.median(data[data > 0]))[0])
  data[spot] = 100 * data.max()
  nib.save(nib.Nifti1Image(data, img.affine), path)
  images = {m: str(folder / os.path.basename(p)) for m, p in exam.images.items()}
  hot = dataclasses.replace(exam, images=images,
                            brain_mask=str(folder / os.path.basename(exam.brain_mask))
                            if exam.brain_mask else None)
  seen, brain, _ = clinical._model_grid_images(hot)
  clean, _, _ = clinical._model_grid_images(exam)
  assert seen["FLAIR"].max() <= clean["FLAIR"].max()  # the spike is gone...
  assert (seen["FLAIR"] != clean["FLAIR"]).sum() == 1  # ...and nothing else moved
  assert all(np.array_equal(seen[m], clean[m]) for m in clean if m != "FLAIR")
