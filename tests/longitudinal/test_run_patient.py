"""run_patient end to end on NIfTI phantoms: N4, brain mask, rigid registration, decision, outputs."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from longitudinal import phantom

sitk = pytest.importorskip("SimpleITK")

from msjax.longitudinal import run, scores  # noqa: E402

LESIONS = [((-18.0, 8.0, 6.0), 3.5), ((16.0, -14.0, -6.0), 3.0)]
NEW = [((18.0, 16.0, 9.0), 3.5), ((-16.0, -18.0, -9.0), 3.0)]
MOTION = dict(rotation_deg=(3.0, -2.0, 4.0), shift_mm=(2.5, -1.5, 3.0))


def files_of(tmp_path, name, array):
  return {"FLAIR": phantom.write(array, str(tmp_path / f"{name}_FLAIR.nii.gz"))}


def test_same_head_after_known_rigid_motion_shows_no_change(tmp_path):
  base = files_of(tmp_path, "v1", phantom.visit(LESIONS, seed=1))
  moved = files_of(tmp_path, "v2", phantom.visit(LESIONS, seed=2, **MOTION))
  out = run.run_patient(base, moved, str(tmp_path / "out"), log=lambda *a: None)
  assert out["rows"] == [] and out["change_ml"] == 0
  # the registration found the motion: baseline points land where the motion put them
  tfm = sitk.ReadTransform(out["paths"]["followup_to_baseline"])
  r, t = phantom.rotation(*MOTION["rotation_deg"]), np.array(MOTION["shift_mm"])
  for p in [(-18.0, 8.0, 6.0), (16.0, -14.0, -6.0), (0.0, 30.0, 20.0), (25.0, 0.0, -15.0)]:
    lps = np.array(p) * [-1, -1, 1]  # phantom world = RAS mm; ITK works in LPS
    expected = (r @ np.array(p) + t) * [-1, -1, 1]
    assert np.linalg.norm(np.array(tfm.TransformPoint(tuple(lps))) - expected) < 1.0  # 1/3 slice


def test_new_lesions_after_motion_are_found_as_new_on_both_grids(tmp_path):
  base = files_of(tmp_path, "v1", phantom.visit(LESIONS, seed=3))
  follow = files_of(tmp_path, "v2", phantom.visit(LESIONS + NEW, seed=4, **MOTION))
  out = run.run_patient(base, follow, str(tmp_path / "out"), log=lambda *a: None)
  assert [r["class"] for r in out["rows"]] == ["new", "new"]
  assert out["counts"]["new"] == 2 and out["new_or_enlarging_ml"] > 0
  # centroids (RAS mm, baseline space) at the pasted lesions' places in the baseline's frame
  found = sorted(tuple(row["centroid_ras_mm"]) for row in out["rows"])
  for (centre, _), c in zip(sorted(NEW), found):
    assert np.linalg.norm(np.array(centre) - np.array(c)) < 2.5
  # each visit's outputs are on that visit's own grid, and agree with what was drawn there
  for visit, lesions, motion in (("baseline", NEW, {}), ("followup", NEW, MOTION)):
    img = nib.load(out["paths"][f"{visit}_change_mask"])
    src = nib.load(base["FLAIR"] if visit == "baseline" else follow["FLAIR"])
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    classes = np.asarray(nib.load(out["paths"][f"{visit}_change_classes"]).dataobj)
    assert set(np.unique(classes)) == {0, 1}
    truth = phantom.changed_by(lesions, **motion)  # where the new lesions sit there
    s = scores.change_scores(np.asarray(img.dataobj), truth, phantom.SPACING)
    assert s["lesion_f1"] == 1.0 and s["dice"] > 0.6
  summary = json.load(open(os.path.join(str(tmp_path / "out"), "change.json")))
  assert summary["counts"]["new"] == 2 and summary["times_s"]["total"] > 0
  assert open(out["paths"]["lesions"]).read().startswith("lesion_id,class")


FAINT = 108.0  # a new lesion of little FLAIR contrast over white matter (100): peak change z 4.5


def probability_map(tmp_path, name, lesions, motion):
  """A network's opinion drawn in that visit's own space: 0.9 inside its lesions, 0.05 outside."""
  inside = phantom.visit([(c, r) for c, r, *_ in lesions], noise=0.0, **motion) > 150
  return phantom.write(np.where(inside, 0.9, 0.05), str(tmp_path / f"{name}_probseg.nii.gz"))


def test_faint_new_lesion_after_motion_is_found_only_with_the_networks_probabilities(tmp_path):
  """The probabilities come on each visit's own grid and are brought onto the decision grid (the
  follow-up's through the registration): a faint new lesion, under the FLAIR seed and with no T2,
  is found as new where the network sees it at the follow-up only; nothing else changes."""
  faint = [((18.0, 16.0, 9.0), 3.5, FAINT)]
  base = files_of(tmp_path, "v1", phantom.visit(LESIONS, seed=12))
  follow = files_of(tmp_path, "v2", phantom.visit(LESIONS + faint, seed=13, **MOTION))
  quiet = lambda *a: None  # noqa: E731
  alone = run.run_patient(base, follow, str(tmp_path / "alone"), log=quiet)
  assert alone["rows"] == []
  probabilities = (probability_map(tmp_path, "v1", LESIONS, {}),
                   probability_map(tmp_path, "v2", LESIONS + faint, MOTION))
  out = run.run_patient(base, follow, str(tmp_path / "out"), log=quiet,
                        probabilities=probabilities, threshold=0.5, min_lesion_peak=0.6)
  assert [r["class"] for r in out["rows"]] == ["new"]
  assert np.linalg.norm(np.array(faint[0][0]) - out["rows"][0]["centroid_ras_mm"]) < 2.5
  summary = json.load(open(os.path.join(str(tmp_path / "out"), "change.json")))
  assert summary["probabilities_used"] and summary["probability_mask_rule"] == {
      "threshold": 0.5, "min_lesion_mm3": 0.0, "min_lesion_peak": 0.6}
  # on the decision grid its surest voxel is 0.64 (0.9 drawn on 3 mm slices, moved, resampled
  # linearly): under a lesion peak of 0.7 it is not in segment's mask, so it cannot be the
  # network's opinion of a change either
  faint_peak = run.run_patient(base, follow, str(tmp_path / "peak"), log=quiet,
                               probabilities=probabilities, threshold=0.5, min_lesion_peak=0.7)
  assert faint_peak["rows"] == []
