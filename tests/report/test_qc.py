"""The QC verdict: every reason fires on its damaged copy of an exam and none on the exam; on the
real Lesjak exams (slow) every exam is `ok` and every damage flagged."""
import os

import numpy as np
import pytest

from conftest import LESJAK_MNI, needs_lesjak
from msjax.data import mni, nifti
from msjax.preprocess import nyul
from msjax.report import damage, qc

from .synthetic_exam import template_exam

GRID = (64, 64, 64)


@pytest.fixture(scope="module")
def good():
  """The MNI152 template as an exam on a 64³ grid over FSL's MNI box (the 128³ model grid's
  geometry at half the resolution, for speed), with Nyúl landmarks of its own."""
  affine = nifti.resampled_grid(
      nifti.Grid(affine=np.array([[1.0, 0, 0, -90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]]),
                 shape=mni.MNI_SHAPE, source_affine=np.eye(4), source_shape=mni.MNI_SHAPE,
                 source_axcodes=("R", "A", "S")), GRID).affine
  images, brain, _ = template_exam(GRID, affine)
  standard = nyul.fit_nyul({m: [v[brain]] for m, v in images.items()})
  return {"images": images, "brain": brain, "affine": affine, "native_spacing": (1.0, 1.0, 1.0)
          }, standard


def test_good_exam_is_ok(good):
  exam, standard = good
  v = qc.exam_qc(landmarks=standard, **exam)
  assert v["verdict"] == "ok", v["reasons"]
  assert v["reasons"] == []
  m = v["measures"]
  assert m["registration_offset_mm"] < 1 and abs(m["registration_scale"] - 1) < 0.02
  assert m["flair_fit_r"] > 0.9 and m["t1_ncc"] > 0.9 and m["coverage"] > 0.97


@pytest.mark.parametrize("kind", list(damage.EXPECTED))
def test_each_reason_fires_on_its_damage(good, kind):
  exam, standard = good
  v = qc.exam_qc(landmarks=standard, **damage.damaged(kind, **exam))
  assert v["verdict"] in ("check", "fail")
  assert v["checks"][damage.EXPECTED[kind]] != "ok", (kind, v["reasons"])


def test_standardised_intensities_match_by_construction(good):
  """An image already mapped onto the landmarks is never 'far' from them: the gap is measured on
  the landmarks from before (raw_landmarks) when the caller has them."""
  exam, standard = good
  mapped = {m: nyul.apply_nyul(v ** 3, exam["brain"], standard[m]["standard"])
            for m, v in exam["images"].items()}
  assert qc.measure(**{**exam, "images": mapped}, landmarks=standard)["landmark_gap"] < 1
  raw = {m: nyul.landmarks(v[exam["brain"]].max() - v[exam["brain"]])
         for m, v in exam["images"].items()}
  assert qc.measure(**exam, landmarks=standard, raw_landmarks=raw)["landmark_gap"] > 25


def test_native_brain_volume_through_the_registration_scale(good):
  exam, _ = good
  shrink = np.diag([1.6, 1.6, 1.6, 1.0])  # MNI is 1.6x the exam: a 4 x smaller brain
  v = qc.exam_qc(world_to_mni=shrink, **exam)
  assert v["measures"]["brain_ml"] == pytest.approx(v["measures"]["brain_ml_mni"] / 1.6 ** 3,
                                                    abs=0.1)
  assert v["checks"]["brain_volume"] == "fail"


@pytest.mark.slow
@needs_lesjak()
def test_real_exams_ok_and_their_damaged_copies_flagged():
  from msjax.report import reference
  folders = [os.path.join(LESJAK_MNI, p) for p in ("patient07", "patient26")]
  standard = reference.landmarks_of(folders)
  results = reference.measure_qc(folders, [], standard)
  for key, v in results.items():
    exam, kind = key.split("/")
    if kind == "none":
      assert v["verdict"] == "ok", (key, v["reasons"])
    else:
      assert v["checks"][damage.EXPECTED[kind]] != "ok", (key, v["reasons"])
