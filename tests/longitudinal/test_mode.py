"""The `longitudinal` mode end to end on phantom pairs (tests/longitudinal/phantom.py), and
`evaluate` scoring its change maps against a change reference."""
import csv
import json
import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import REAL_DATA, load_config
from longitudinal import phantom

pytest.importorskip("SimpleITK")

from msjax import errors, main  # noqa: E402
from msjax.longitudinal import figure  # noqa: E402
from msjax.longitudinal import scores  # noqa: E402

LESIONS = [((-18.0, 8.0, 6.0), 3.5), ((16.0, -14.0, -6.0), 3.0)]
NEW = [((18.0, 16.0, 9.0), 3.5), ((-16.0, -18.0, -9.0), 3.0)]
MOTION = dict(rotation_deg=(3.0, -2.0, 4.0), shift_mm=(2.5, -1.5, 3.0))


def patients(root):
  """patA: two lesions pasted into the follow-up (after a head motion); patB: a follow-up FLAIR
  that is not an image."""
  a, b = root / "patA", root / "patB"
  a.mkdir(parents=True)
  b.mkdir()
  phantom.write(phantom.visit(LESIONS, seed=3), str(a / "study1_FLAIR.nii.gz"))
  phantom.write(phantom.visit(LESIONS + NEW, seed=4, **MOTION), str(a / "study2_FLAIR.nii.gz"))
  phantom.write(phantom.visit(LESIONS, seed=5), str(b / "study1_FLAIR.nii.gz"))
  (b / "study2_FLAIR.nii.gz").write_bytes(b"not a NIfTI file")
  return root


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
  root = tmp_path_factory.mktemp("longitudinal")
  data = patients(root / "in")
  out = root / "out"
  config = load_config("longitudinal", "smoke", input=str(data))
  with pytest.MonkeyPatch.context() as mp:  # no shipped model: change detection alone
    mp.setenv("MSJAX_SHIPPED_DIR", str(root / "no_shipped_models"))
    summary = main.run_mode(config, str(out))
  return data, out, summary


def test_change_outputs_named_and_filled_and_a_broken_patient_reported(changed):
  data, out, summary = changed
  assert [s["patient"] for s in summary["patients"]] == ["patA"]
  assert [f["patient"] for f in summary["failed"]] == ["patB"]
  # refused by the data layer, naming the file and what is wrong with it (not ITK's "Unable to
  # determine ImageIO reader")
  error = summary["failed"][0]["error"]
  assert "InvalidInputError" in error and "study2_FLAIR.nii.gz: cannot be read as NIfTI" in error
  assert not (out / "sub-patB").exists()  # a failed patient leaves nothing
  anat = {ses: out / "sub-patA" / f"ses-{ses}" / "anat" for ses in ("study1", "study2")}
  for ses, motion in (("study1", {}), ("study2", MOTION)):
    prefix = anat[ses] / f"sub-patA_ses-{ses}_space-orig_desc-"
    src = nib.load(str(data / "patA" / f"{ses}_FLAIR.nii.gz"))
    mask = nib.load(f"{prefix}change_mask.nii.gz")
    classes = np.asarray(nib.load(f"{prefix}change_dseg.nii.gz").dataobj)
    ids = np.asarray(nib.load(f"{prefix}changelesion_dseg.nii.gz").dataobj)
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)  # the visit's grid
    assert set(np.unique(classes)) == {0, 1} and set(np.unique(ids)) == {0, 1, 2}
    assert ((ids > 0) == (np.asarray(mask.dataobj) > 0)).all()
    truth = phantom.changed_by(NEW, **motion)  # where the pasted lesions are on this visit
    found = scores.change_scores(classes == 1, truth, phantom.SPACING)
    assert found["lesion_f1"] == 1.0 and found["dice"] > 0.6
    assert open(f"{prefix}change_dseg.tsv").read().startswith("index\tname\n1\tnew\n")
  sub = out / "sub-patA"
  with open(sub / "sub-patA_desc-change_table.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["class"] for r in table] == ["new", "new"]
  assert all(float(r["volume_baseline_ml"]) == 0 and float(r["volume_followup_ml"]) > 0.05
             for r in table)
  assert all(r["mean_probability_followup"] == "" for r in table)  # no model ran
  assert os.path.getsize(sub / "sub-patA_desc-change_overlay.png") > 10_000
  s = json.load(open(sub / "sub-patA_desc-change_summary.json"))
  assert s["counts"]["new"] == 2 and s["model"] is None and s["segmentation"] is None
  assert not s["probabilities_used"]
  assert all((out / p).exists() for p in s["files"].values())
  with open(out / "changes.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["patient"], r["baseline"], r["followup"], r["new"], r["enlarging"]) for r in rows] \
      == [("patA", "study1", "study2", "2", "0")]
  assert float(rows[0]["new_or_enlarging_ml"]) > 0.1
  top = json.load(open(out / "longitudinal_summary.json"))
  assert top["segmented"] is False and top["failed"][0]["patient"] == "patB"
  assert json.load(open(out / "dataset_description.json"))["DatasetType"] == "derivative"


def patient_files(out, patient: str) -> dict:
  """{path: bytes} of every file in the patient's folder of a longitudinal dataset."""
  return {p: p.read_bytes() for p in (out / f"sub-{patient}").rglob("*") if p.is_file()}


def test_a_failing_rerun_keeps_the_earlier_outputs_whole(changed, tmp_path, monkeypatch):
  """A re-run into the same folder (--config.overwrite=True: redo all) that fails for a patient
  after writing part of its outputs (here the overlay page) leaves that patient's earlier outputs
  as they were, byte for byte, and nothing of the failed attempt; a re-run that succeeds
  replaces the set."""
  data, first, _ = changed
  out = tmp_path / "out"
  shutil.copytree(first, out)
  sub = out / "sub-patA"
  before = patient_files(out, "patA")
  assert len(before) >= 10
  config = load_config("longitudinal", "smoke", input=str(data), overwrite=True)
  monkeypatch.setenv("MSJAX_SHIPPED_DIR", str(tmp_path / "no_shipped_models"))

  def broken_page(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(figure, "change_overlay", broken_page)
  with pytest.raises(errors.InvalidInputError, match="no patient could be compared"):
    main.run_mode(config, str(out))
  summary = json.load(open(out / "longitudinal_summary.json"))
  assert summary["patients"] == [] and summary["resumed"] == []
  failed = {f["patient"]: f for f in summary["failed"]}
  assert "disk full" in failed["patA"]["error"] and failed["patA"]["earlier_outputs_kept"]
  assert failed["patB"]["earlier_outputs_kept"] is False
  assert patient_files(out, "patA") == before
  assert not (out / "work" / "staging").exists()
  monkeypatch.undo()
  monkeypatch.setenv("MSJAX_SHIPPED_DIR", str(tmp_path / "no_shipped_models"))
  os.utime(sub / "sub-patA_desc-change_summary.json", (0, 0))
  summary = main.run_mode(config, str(out))
  assert [s["patient"] for s in summary["patients"]] == ["patA"]
  assert os.stat(sub / "sub-patA_desc-change_summary.json").st_mtime > 0  # written anew
  assert all((out / p).exists() for p in summary["patients"][0]["files"].values())


def changes_csv(out) -> list[str]:
  with open(out / "changes.csv") as f:
    return [r["patient"] for r in csv.DictReader(f)]


def test_a_rerun_keeps_patients_made_with_the_same_settings(changed, tmp_path, monkeypatch,
                                                              caplog):
  """A plain re-run keeps a patient whose outputs are complete and were made with the same
  settings from the same input files (untouched, still in changes.csv; the files compared by
  content, so a copy of the input folder still counts as the same); one with other change
  settings, a changed scan, outputs lacking a file or other msjax code is redone."""
  first_data, first, _ = changed
  out, data = tmp_path / "out", tmp_path / "in"
  shutil.copytree(first, out)
  shutil.copytree(first_data, data)
  summary_file = out / "sub-patA" / "sub-patA_desc-change_summary.json"
  monkeypatch.setenv("MSJAX_SHIPPED_DIR", str(tmp_path / "no_shipped_models"))
  os.utime(summary_file, (0, 0))
  before = patient_files(out, "patA")
  summary = main.run_mode(load_config("longitudinal", "smoke", input=str(data)), str(out))
  assert summary["resumed"] == ["patA"] and summary["patients"] == []
  assert [f["patient"] for f in summary["failed"]] == ["patB"]  # the broken one is tried again
  assert patient_files(out, "patA") == before and os.stat(summary_file).st_mtime == 0
  assert changes_csv(out) == ["patA"]
  # another change rule: made again
  other = load_config("longitudinal", "smoke", input=str(data))
  other.change.rule.seed_z = 4.5
  summary = main.run_mode(other, str(out))
  assert summary["resumed"] == [] and [s["patient"] for s in summary["patients"]] == ["patA"]
  assert os.stat(summary_file).st_mtime > 0 and changes_csv(out) == ["patA"]
  assert json.load(open(summary_file))["settings"]["change"]["rule"]["seed_z"] == 4.5
  # the same settings, but a visit's scan changed under the same name: made again
  os.utime(summary_file, (0, 0))
  flair = data / "patA" / "study1_FLAIR.nii.gz"
  flair.write_bytes(flair.read_bytes())  # the same content, written again: still kept
  assert main.run_mode(other, str(out))["resumed"] == ["patA"]
  image = nib.load(str(flair))
  nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32) * 1.01, image.affine), str(flair))
  summary = main.run_mode(other, str(out))
  assert [s["patient"] for s in summary["patients"]] == ["patA"]
  assert os.stat(summary_file).st_mtime > 0
  # the same settings again, but a file of the set missing: made again
  os.utime(summary_file, (0, 0))
  (out / "sub-patA" / "sub-patA_desc-change_overlay.png").unlink()
  summary = main.run_mode(other, str(out))
  assert [s["patient"] for s in summary["patients"]] == ["patA"]
  assert os.stat(summary_file).st_mtime > 0
  assert (out / "sub-patA" / "sub-patA_desc-change_overlay.png").exists()
  # the same settings and files, but other code under the same version number (a checkout moved
  # on between runs): made again, naming it
  os.utime(summary_file, (0, 0))
  import msjax
  monkeypatch.setattr(msjax, "_CODE_VERSION", [msjax.__version__ + "+0123456789ab"])
  with caplog.at_level(logging.INFO):
    summary = main.run_mode(other, str(out))
  assert [s["patient"] for s in summary["patients"]] == ["patA"]
  assert os.stat(summary_file).st_mtime > 0 and "other settings (msjax)" in caplog.text


def test_evaluate_scores_change_maps_against_a_reference(changed, tmp_path):
  _, out, _ = changed
  ref = tmp_path / "ref" / "patA"
  ref.mkdir(parents=True)
  base = nib.load(str(changed[0] / "patA" / "study1_FLAIR.nii.gz"))  # the baseline's space
  truth = phantom.changed_by(NEW).astype(np.uint8)
  nib.save(nib.Nifti1Image(truth, base.affine), str(ref / "change_gt.nii.gz"))
  config = load_config("evaluate", change_reference=str(tmp_path / "ref"),
                       predictions=str(out))
  summary = main.run_mode(config, str(tmp_path / "eval"))
  (row,) = summary["exams"]
  assert row["patient"] == "patA" and row["ref_lesions"] == 2
  assert row["lesion_f1"] == 1.0 and row["dice"] > 0.6
  assert row["lesion_f1_followup_grid"] == 1.0
  assert summary["mean"]["lesion_f1"] == 1.0 and summary["mean_n"]["lesion_f1"] == 1
  with open(tmp_path / "eval" / "metrics.csv") as f:
    assert next(csv.DictReader(f))["patient"] == "patA"
  # a reference with nothing in it is scored (sensitivity undefined), not skipped
  nib.save(nib.Nifti1Image(np.zeros_like(truth), base.affine), str(ref / "change_gt.nii.gz"))
  empty = main.run_mode(config, str(tmp_path / "eval2"))["exams"][0]
  assert empty["lesion_sensitivity"] is None and empty["pred_lesions"] == 2


@pytest.mark.slow  # needs the session's trained model
def test_both_visits_segmented_with_the_model(trained, tmp_path):
  """--config.baseline/--config.followup with a model: each visit's segment outputs beside its
  change maps, and the change table's probabilities from those segmentations."""
  for name, lesions, seed, motion in (("v1", LESIONS, 6, {}), ("v2", LESIONS + NEW, 7, MOTION)):
    (tmp_path / name).mkdir()
    image = phantom.visit(lesions, seed=seed, **motion)
    for sequence in ("FLAIR", "T1W", "T2W"):  # the sequences the tiny model was trained with
      phantom.write(image, str(tmp_path / name / f"{sequence}.nii.gz"))
  config = load_config("longitudinal", "smoke", baseline=str(tmp_path / "v1"),
                       followup=str(tmp_path / "v2"), model=trained, preprocessed=True)
  out = tmp_path / "out"
  summary = main.run_mode(config, str(out))
  (s,) = summary["patients"]
  assert s["patient"] == "v1" and s["model"] and set(s["segmentation"]) == {"baseline", "followup"}
  assert s["probabilities_used"]  # the network's opinion joined the change decision
  for ses in ("baseline", "followup"):
    anat = out / "sub-v1" / f"ses-{ses}" / "anat"
    seg = nib.load(str(anat / f"sub-v1_ses-{ses}_space-orig_desc-lesion_mask.nii.gz"))
    change = nib.load(str(anat / f"sub-v1_ses-{ses}_space-orig_desc-change_mask.nii.gz"))
    assert seg.shape == change.shape == phantom.SHAPE
    assert (anat / f"sub-v1_ses-{ses}_desc-lesion_table.csv").exists()
  with open(out / "sub-v1" / "sub-v1_desc-change_table.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["class"] for r in table] == ["new", "new"]
  assert_table_probabilities_are_the_segmentations(out, "v1", table)
  # the change page: both visits' slices, the changed lesions' table, the registration check
  assert s["visits_correlation"] > 0.9
  assert os.path.getsize(out / s["files"]["overlay"]) > 30000
  with open(out / "changes.csv") as f:
    row = next(csv.DictReader(f))
  assert row["new"] == "2"
  assert row["seg_lesions_followup"] != "" and row["seg_volume_baseline_ml"] != ""


def assert_table_probabilities_are_the_segmentations(out, sub, table):
  """Each change-table row's mean_probability_<visit> is the mean of that visit's written
  probseg over the row's change voxels there (the changelesion_dseg ids on the same grid)."""
  for ses in ("baseline", "followup"):
    prefix = out / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_space-orig_"
    probability = np.asarray(nib.load(f"{prefix}label-lesion_probseg.nii.gz").dataobj, np.float64)
    ids = np.asarray(nib.load(f"{prefix}desc-changelesion_dseg.nii.gz").dataobj)
    for r in table:
      inside = ids == int(r["lesion_id"])
      assert inside.any()
      assert float(r[f"mean_probability_{ses}"]) == pytest.approx(
          probability[inside].mean(), abs=1e-4), (ses, r)


FAINT = [((-14.0, 22.0, -3.0), 3.5, 108.0)]  # FLAIR 108 over white matter 100: change z ~4.5


class PhantomNetwork:
  """Stands in for the network (msjax.infer.predict.Predictor): it knows what was drawn at each
  visit (by the visit's folder) and says 0.9 inside those lesions, 0.05 elsewhere, on the grid
  the mode loads the visit onto. A reader that sees the faint lesion FLAIR subtraction misses."""
  model_shape, patch, mirror, where = None, 32, False, "phantom network"

  def __init__(self, visits: dict):
    self.visits = visits  # folder name -> (lesions, motion)

  def warm_up(self, options):
    return 0.0

  def predict_exam(self, arrays, options):
    from msjax.infer import sliding_window
    lesions, motion = self.visits[os.path.basename(os.path.dirname(arrays.exam.images["FLAIR"]))]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in arrays.shape], indexing="ij"), -1)
    world = idx @ arrays.grid.affine[:3, :3].T + arrays.grid.affine[:3, 3]
    head = (world - np.asarray(motion.get("shift_mm", (0, 0, 0)))) @ phantom.rotation(
        *motion.get("rotation_deg", (0, 0, 0)))  # as phantom.visit images the head
    inside = np.zeros(arrays.shape, bool)
    for centre, radius, *_ in lesions:
      inside |= ((head - np.asarray(centre)) ** 2).sum(-1) <= radius ** 2
    probability = np.where(inside, 0.9, 0.05).astype(np.float32)
    return sliding_window.Prediction(probability=probability, spread=np.zeros_like(probability),
                                     coverage=np.ones_like(probability)), 1


@pytest.mark.slow  # the session's trained model's bundle (its network stood in for)
def test_the_networks_opinion_decides_a_faint_new_lesion(trained, tmp_path, monkeypatch):
  """A faint new lesion (FLAIR 108 over 100; T2, the other second opinion, off) that subtraction
  alone does not call: the mode without a model finds the two bright new lesions only; with a
  model whose network sees the faint lesion at the follow-up and not at baseline (PhantomNetwork),
  the mode's own path (each visit segmented and exported, its probseg brought onto the decision
  grid, change.detect seeding on FLAIR z >= 3 where the network agrees) calls it new as well, and
  the change table carries the network's probabilities of it. (The network only adds evidence:
  change.detect has no veto, so a bright change the network rejects stays called.)"""
  visits = {"v1": (LESIONS, {}), "v2": (LESIONS + NEW + FAINT, MOTION)}
  for (name, (lesions, motion)), seed in zip(visits.items(), (8, 9)):
    (tmp_path / name).mkdir()
    image = phantom.visit(lesions, seed=seed, **motion)
    for sequence in ("FLAIR", "T1W", "T2W"):  # the sequences the tiny model was trained with
      phantom.write(image, str(tmp_path / name / f"{sequence}.nii.gz"))
  faint_centre = np.array(FAINT[0][0])

  def run(out, **model):
    config = load_config("longitudinal", "smoke", baseline=str(tmp_path / "v1"),
                         followup=str(tmp_path / "v2"), preprocessed=True,
                         **{"change.use_t2": False}, **model)  # T2 here is FLAIR's copy
    (s,) = main.run_mode(config, str(out))["patients"]
    with open(out / "sub-v1" / "sub-v1_desc-change_table.csv") as f:
      return s, list(csv.DictReader(f))

  def near_faint(r):
    centre = np.array([float(r[f"centroid_{a}_mm"]) for a in "xyz"])
    return np.linalg.norm(centre - faint_centre) < 3.0

  monkeypatch.setenv("MSJAX_SHIPPED_DIR", str(tmp_path / "no_shipped_models"))
  alone, alone_table = run(tmp_path / "alone")  # no model: subtraction alone
  assert not alone["probabilities_used"] and not alone["t2_used"]
  assert alone["counts"]["new"] == 2 and not any(near_faint(r) for r in alone_table)

  from msjax.infer import predict
  monkeypatch.setattr(predict, "Predictor", lambda *a, **k: PhantomNetwork(visits))
  s, table = run(tmp_path / "with", model=trained)
  assert s["probabilities_used"] and not s["t2_used"]
  assert s["probability_mask_rule"]["threshold"] == 0.5
  assert s["counts"] == {"new": 3, "enlarging": 0, "stable": 0, "shrinking": 0,
                         "disappearing": 0}
  (faint,) = [r for r in table if near_faint(r)]
  assert faint["class"] == "new"
  assert float(faint["mean_probability_followup"]) > 0.5  # the network's lesion
  assert float(faint["mean_probability_baseline"]) < 0.1  # ... that was not there before
  assert_table_probabilities_are_the_segmentations(tmp_path / "with", "v1", table)


REAL = os.path.abspath(REAL_DATA)


@pytest.mark.slow  # a real raw pair: N4, registration, the decision (~1-2 min on 2 cores)
@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL, "lesjak_longitudinal_change",
                                                  "patient01")),
                    reason=f"real Lesjak longitudinal data not found under {REAL}")
def test_real_patient01_through_the_mode_and_evaluate(tmp_path, monkeypatch):
  (tmp_path / "in").mkdir()
  os.symlink(os.path.join(REAL, "lesjak_longitudinal_raw", "patient01"),
             tmp_path / "in" / "patient01")
  monkeypatch.setenv("MSJAX_SHIPPED_DIR", str(tmp_path / "no_shipped_models"))  # change alone
  summary = main.run_mode(load_config("longitudinal", input=str(tmp_path / "in")),
                          str(tmp_path / "out"))
  (s,) = summary["patients"]
  assert s["counts"]["new"] >= 1  # the large new lesion of study 2
  config = load_config("evaluate", predictions=str(tmp_path / "out"),
                       change_reference=os.path.join(REAL, "lesjak_longitudinal_change"))
  (row,) = main.run_mode(config, str(tmp_path / "eval"))["exams"]
  # the bars of tests/studies/test_lesjak_longitudinal.py
  for grid in ("", "_baseline_grid", "_followup_grid"):
    assert row[f"dice{grid}"] >= 0.4 and row[f"lesion_f1{grid}"] >= 0.2
