"""Metrics against hand-computed cases (1 mm voxels unless stated)."""
import numpy as np
import pytest

from msjax.evaluate import metrics

SHAPE = (40, 6, 6)


def vol(*segments):
  """Voxels set along x at (y, z): segments of (x0, x1, y, z)."""
  m = np.zeros(SHAPE, np.uint8)
  for x0, x1, y, z in segments:
    m[x0:x1, y, z] = 1
  return m


def ev(pred, ref, spacing=(1, 1, 1)):
  return metrics.evaluate_masks(pred, ref, spacing)


def test_empty_empty():
  r = ev(vol(), vol())
  assert (r["dice"], r["sensitivity"], r["precision"]) == (1.0, 1.0, 1.0)
  assert (r["lesion_sensitivity"], r["lesion_precision"], r["lesion_f1"]) == (1.0, 1.0, 1.0)
  assert r["hd95_mm"] == 0.0 and r["abs_volume_diff_ml"] == 0.0 and r["avd_percent"] == 0.0


def test_empty_reference_nonempty_prediction():
  r = ev(vol((0, 5, 2, 2)), vol())
  assert r["dice"] == 0.0 and r["sensitivity"] == 1.0 and r["precision"] == 0.0
  assert r["lesion_sensitivity"] == 1.0 and r["lesion_precision"] == 0.0 and r["lesion_f1"] == 0.0
  assert r["hd95_mm"] == pytest.approx(np.sqrt(40 ** 2 + 36 + 36))
  assert r["avd_percent"] is None and r["abs_volume_diff_ml"] == pytest.approx(0.005)


def test_nonempty_reference_empty_prediction():
  r = ev(vol(), vol((0, 5, 2, 2)))
  assert r["dice"] == 0.0 and r["sensitivity"] == 0.0 and r["precision"] == 1.0
  assert r["lesion_sensitivity"] == 0.0 and r["lesion_precision"] == 1.0
  assert r["avd_percent"] == 100.0


def test_one_lesion_split_in_two():
  ref = vol((0, 10, 2, 2))
  pred = vol((0, 4, 2, 2), (6, 10, 2, 2))
  r = ev(pred, ref)
  assert (r["tp"], r["fp"], r["fn"]) == (8, 0, 2)
  assert r["dice"] == pytest.approx(16 / 18)
  assert r["ref_lesions"] == 1 and r["pred_lesions"] == 2
  assert r["lesion_sensitivity"] == 1.0 and r["lesion_precision"] == 1.0


def test_lesions_of_three_mm3_or_less_are_dropped():
  assert metrics.lesions(vol((0, 3, 2, 2)), 1.0)[1] == []
  assert len(metrics.lesions(vol((0, 4, 2, 2)), 1.0)[1]) == 1
  assert metrics.lesions(vol((0, 4, 2, 2)), 0.5)[1] == []  # 4 voxels of 0.5 mm³ = 2 mm³
  r = ev(vol(), vol((0, 3, 2, 2)))
  assert r["ref_lesions"] == 0 and r["lesion_sensitivity"] == 1.0
  assert r["dice"] == 0.0  # voxel-wise metrics still see it


def test_alpha_boundary():
  ref = vol((0, 20, 2, 2))
  # 2 of 20 reference voxels covered (exactly α = 0.10): not detected
  at = vol((18, 20, 2, 2), (18, 20, 3, 2))
  assert ev(at, ref)["lesion_sensitivity"] == 0.0
  # 3 of 20 (0.15 > α), the component 3/4 inside: detected
  above = vol((17, 20, 2, 2), (17, 18, 3, 2))
  assert ev(above, ref)["lesion_sensitivity"] == 1.0


def test_beta_boundary():
  ref = vol((0, 10, 2, 2))
  # 3 inside + 7 outside: 0.70 of the component outside, not more than β -> detected
  at = vol((7, 10, 2, 2), (7, 14, 3, 2))
  assert ev(at, ref)["lesion_sensitivity"] == 1.0
  # 3 inside + 8 outside: 0.727 > β -> not detected
  above = vol((7, 10, 2, 2), (7, 15, 3, 2))
  assert ev(above, ref)["lesion_sensitivity"] == 0.0


def test_gamma_boundary():
  ref = vol((0, 20, 2, 2))
  bad = ((16, 18, 2, 2), (16, 26, 3, 2))  # 2 inside, 10 outside: violates β
  # the largest component alone covers 14/20 = 0.70 >= γ: the bad one is never examined
  assert ev(vol((0, 14, 2, 2), *bad), ref)["lesion_sensitivity"] == 1.0
  # 12/20 = 0.60 < γ: the bad component is reached and breaks detection
  assert ev(vol((0, 12, 2, 2), *bad), ref)["lesion_sensitivity"] == 0.0


def test_hd95_and_spacing():
  a = np.zeros((20, 20, 20), np.uint8)
  b = np.zeros_like(a)
  a[5:10, 5:10, 5:10] = 1
  b[8:13, 5:10, 5:10] = 1
  assert metrics.hd95(a, a, (1, 1, 1)) == 0.0
  assert metrics.hd95(a, b, (1, 1, 1)) == pytest.approx(3.0)
  assert metrics.hd95(a, b, (2, 1, 1)) == pytest.approx(6.0)
  with pytest.raises(ValueError, match="different grids"):
    metrics.evaluate_masks(a, a[:-1], (1, 1, 1))
