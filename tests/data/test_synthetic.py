"""The synthetic cohort: contents, contrasts, determinism (msjax/data/synthetic.py)."""
import nibabel as nib
import numpy as np

from msjax.data import cohort as cohort_lib
from msjax.data import exams as exams_lib
from msjax.data import inspect as inspect_lib
from msjax.data import manifest as manifest_lib


def test_synthetic_cohort_contents(tiny_cohort):
  c = cohort_lib.load_cohort(tiny_cohort.root)
  assert c.exams == tiny_cohort.exams
  assert {e.ms for e in c.exams} == {True, False}
  assert any(len(e.images) < 5 for e in c.exams)
  assert any(len(e.raters) > 1 for e in c.exams)
  assert [e.exam_id for e in c.select(split="test")] == ["synth003"]
  rows = inspect_lib.inspect_cohort(c, patch_size=16)
  assert all(not r["problems"] for r in rows)
  orientations = {r["orientation"] for r in rows}
  assert orientations == {"RAS", "LPS"}


def test_synthetic_contrasts(tiny_cohort):
  """The lesions carry the contrasts of real MS lesions, in canonical order for every file."""
  a = exams_lib.load_exam(tiny_cohort.by_id("synth000"), patch_size=16)  # all five present
  lesion, brain = a.reference > 0, a.brain > 0
  wm_like = brain & ~lesion
  mean = {m: (a.images[..., c][lesion].mean(), a.images[..., c][wm_like].mean())
          for c, m in enumerate(manifest_lib.MODALITIES)}
  assert mean["FLAIR"][0] > mean["FLAIR"][1] + 1.0
  assert mean["T2W"][0] > mean["T2W"][1] + 0.5
  assert mean["T1W"][0] < mean["T1W"][1]
  # raters disagree at the borders but agree on the bulk
  r = [m > 0 for m in a.masks]
  if len(r) > 1:
    assert (r[0] != r[1]).any()
    dice = 2 * (r[0] & r[1]).sum() / (r[0].sum() + r[1].sum())
    assert dice > 0.5


def test_synthetic_is_deterministic(tmp_path):
  from msjax.data import synthetic
  spec = synthetic.SyntheticSpec(n_ms=1, n_non_ms=0, n_test=0, shape=(24, 24, 24), seed=5)
  a = synthetic.write_synthetic_cohort(str(tmp_path / "a"), spec, log=lambda *x: None)
  b = synthetic.write_synthetic_cohort(str(tmp_path / "b"), spec, log=lambda *x: None)
  for m in a.exams[0].images:
    np.testing.assert_array_equal(nib.load(a.exams[0].images[m]).get_fdata(),
                                  nib.load(b.exams[0].images[m]).get_fdata())
