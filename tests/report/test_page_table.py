"""Per-lesion confidence, the cohort row and the page (a PNG and a PDF that open); the real
reference lesions of lesjak_mni: tests/studies/test_report_reference.py."""
import os

import numpy as np
import pytest

from msjax.report import locations, page, table


def toy_labels():
  labels = np.zeros((20, 20, 20), np.int32)
  labels[2:5, 2:5, 2:5] = 1       # 27 voxels
  labels[10:12, 10:12, 10:12] = 2  # 8 voxels
  return labels


def test_confidence_is_the_share_sure_by_one_spread():
  labels = toy_labels()
  prob = np.zeros(labels.shape, np.float32)
  spread = np.zeros(labels.shape, np.float32)
  prob[labels == 1] = 0.9
  spread[labels == 1] = 0.1           # 0.8 >= 0.5: sure everywhere
  prob[labels == 2] = 0.6
  spread[labels == 2] = 0.2           # 0.4 < 0.5: lesion only on average...
  spread[10, 10, 10] = 0.05           # ...except one voxel of 8
  out = table.confidence(labels, prob, spread, threshold=0.5)
  assert out[1]["confidence"] == 1.0 and out[1]["mean_uncertainty"] == pytest.approx(0.1)
  assert out[2]["confidence"] == pytest.approx(1 / 8)
  assert out[2]["max_probability"] == pytest.approx(0.6)


def test_confidence_reads_each_lesions_own_voxels_as_ndimage_does():
  """Means and maxima from the lesion voxels alone: ndimage's answer over the whole grid."""
  from scipy import ndimage
  rng = np.random.default_rng(5)
  labels, n = ndimage.label(rng.random((40, 30, 20)) > 0.9)
  prob = rng.random(labels.shape).astype(np.float32)
  spread = (0.2 * rng.random(labels.shape)).astype(np.float32)
  out = table.confidence(labels, prob, spread, threshold=0.5)
  index = np.arange(1, n + 1)
  for name, want in (("mean_probability", ndimage.mean(prob, labels, index)),
                     ("max_probability", ndimage.maximum(prob, labels, index)),
                     ("mean_uncertainty", ndimage.mean(spread, labels, index))):
    np.testing.assert_allclose([out[k][name] for k in index], want, atol=6e-5, err_msg=name)


def fake_locations(labels, classes):
  z = np.zeros(labels.shape, bool)
  details = {k: {"location": c, "ventricle_mm": 1.0, "cortex_mm": 9.0,
                 "infratentorial_share": 0.0} for k, c in classes.items()}
  return locations.Locations(classes=classes, details=details, ventricles=z, cortex=z,
                             infratentorial=z, method="test", rule="test rule")


def test_rows_merge_and_cohort_row():
  labels = toy_labels()
  loc = fake_locations(labels, {1: "periventricular", 2: "deep_white_matter"})
  rows, _ = table.lesion_rows(labels, np.eye(4), locations=loc,
                              probability=(labels > 0) * 0.9, spread=None)
  merged = table.merge([{"lesion_id": 1, "voxels": 27}, {"lesion_id": 2, "voxels": 8}], rows)
  assert [r["location"] for r in merged] == ["periventricular", "deep_white_matter"]
  assert merged[0]["confidence"] is None  # no spread map: no confidence
  summary = table.class_summary(labels, np.eye(4), loc)
  assert summary["lesions"] == 2 and summary["lesion_volume_ml"] == pytest.approx(0.035)
  row = table.cohort_row("ex1", summary, {"verdict": "check", "reasons": ["a", "b"]})
  assert list(row) == list(table.COHORT_COLUMNS)
  assert row["periventricular_count"] == 1 and row["deep_white_matter_ml"] == 0.008
  assert row["qc"] == "check" and row["qc_reasons"] == "a; b"
  # lesions of 3 mm³ or less are not counted (MSSEG-2016), but are in the mask's volume
  small = toy_labels()
  small[15, 15, 15] = 3
  loc3 = fake_locations(small, {1: "periventricular", 2: "deep_white_matter", 3: "juxtacortical"})
  s3 = table.class_summary(small, np.eye(4), loc3)
  assert s3["lesions"] == 2 and s3["mask_volume_ml"] == pytest.approx(0.036)


def test_page_png_and_pdf(tmp_path):
  labels = toy_labels()
  flair = np.random.default_rng(0).random(labels.shape).astype(np.float32) + 0.1
  loc = fake_locations(labels, {1: "periventricular", 2: "infratentorial"})
  summary = table.class_summary(labels, np.eye(4), loc)
  qc = {"verdict": "fail", "reasons": ["fail: no FLAIR"], "checks": {}, "measures": {}}
  out = page.draw_page(str(tmp_path / "ex_report.png"), flair, labels, loc, summary, title="ex",
                       qc=qc, model="runs/model", version="0.1.0", pdf=True)
  assert os.path.getsize(out["png"]) > 10_000
  with open(out["pdf"], "rb") as f:
    assert f.read(5) == b"%PDF-"
  assert page.choose_slices(labels, loc.classes) == [2, 10]  # each class: its largest slice
  with pytest.raises(ValueError, match="not one grid"):
    page.draw_page(str(tmp_path / "x.png"), flair[:-1], labels, loc, summary, title="x")


def test_lesions_at_the_first_or_last_acquired_slice_are_flagged():
  """A 2D stack with 4 mm slices: data in slices 2..20; a lesion in slice 3 (4 mm from the
  bottom one) and one in the middle; the edge one is flagged, the middle one not; the end zone
  of a 4 mm stack is three slices (the inflow artefact), of a 1 mm acquisition 5 mm."""
  import numpy as np

  from msjax.report import table
  image = np.zeros((30, 30, 24), np.float32)
  image[:, :, 2:21] = 1.0
  labels = np.zeros(image.shape, np.int32)
  labels[10:13, 10:13, 3] = 1
  labels[10:13, 10:13, 11] = 2
  affine = np.diag([0.9, 0.9, 4.0, 1.0])
  assert table.fov_edge_lesions(labels, image, affine) == {1: True, 2: False}
  labels[10:13, 10:13, 3] = 0
  labels[5:8, 5:8, 19] = 1  # one slice below the top one
  assert table.fov_edge_lesions(labels, image, affine)[1] is True
  labels[5:8, 5:8, 19] = 0
  labels[5:8, 5:8, 5] = 1  # three slices (12 mm) above the bottom one: in the zone
  labels[5:8, 5:8, 6] = 3  # four: out
  assert table.fov_edge_lesions(labels, image, affine) == {1: True, 2: False, 3: False}
  assert table.fov_edge_reach(affine)[1:] == (3, 12.0)
  assert table.fov_edge_reach(np.diag([1.0, 1.0, 1.0, 1.0]))[1:] == (5, 5.0)


def test_lifting_a_verdict_never_lowers_it():
  from msjax.report import qc
  v = {"verdict": "ok", "checks": {"field_of_view": "ok"}, "reasons": []}
  up = qc.lift(v, "field_of_view", "check", "edge lesions")
  assert up["verdict"] == "check" and up["reasons"] == ["check: edge lesions"]
  failed = {"verdict": "fail", "checks": {"registration": "fail"}, "reasons": ["fail: x"]}
  assert qc.lift(failed, "field_of_view", "check", "y")["verdict"] == "fail"
