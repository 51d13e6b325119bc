"""Metrics against cases computed by hand from the MSSEG-2016 evaluator's rule (msjax/evaluate/metrics.py)."""
import itertools
import json
import shutil
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from msjax.data import lesions as lesions_lib
from msjax.evaluate import cxx_sort, evaluate_mode, metrics

SHAPE = (40, 6, 6)


ONE_MM, TWO_MM = (1, 1, 1), (2, 2, 2)


def vol(*segments, shape=SHAPE):
  """Voxels set along x at (y, z): segments of (x0, x1, y, z)."""
  m = np.zeros(shape, np.uint8)
  for x0, x1, y, z in segments:
    m[x0:x1, y, z] = 1
  return m


def ev(pred, ref, spacing=ONE_MM):
  return metrics.evaluate_masks(pred, ref, spacing)


def _tie_case(mirror: bool):
  """Two reference lesions L1 (y=0) and L2 (y=2), 20 voxels each. Predicted: R, 5 voxels in L1;
  P, 3 in L1 + 1 bridging voxel + 7 in L2 (1/11 outside: passes β); Q, 3 in L1 + 8 outside
  (8/11 > β). P and Q tie in overlap with L1 (3) and in size (11). L1's walk: R (5/11), then the
  first of the tie: P reaches 8/11 >= γ (detected), Q fails β (missed). ITK numbers equal-size
  components in raster order (x fastest), so whichever starts at the lower x comes first."""
  shape = (24, 4, 5)
  m = np.zeros((2,) + shape, np.uint8)  # [reference, prediction]
  x = (lambda i: 19 - i) if mirror else (lambda i: i)

  def put(k, xs, y, z):
    for i in xs:
      m[k, x(i), y, z] = 1
  put(0, range(20), 0, 0)          # L1
  put(0, range(20), 2, 0)          # L2
  put(1, range(0, 5), 0, 0)        # R
  put(1, range(8, 11), 0, 0)       # P: in L1
  put(1, [10], 1, 0)               # P: bridge
  put(1, range(10, 17), 2, 0)      # P: in L2
  put(1, range(13, 16), 0, 0)      # Q: in L1
  for z in (1, 2):
    put(1, range(13, 16), 0, z)    # Q: outside
  put(1, range(13, 15), 0, 3)
  return m[1], m[0]


def _brute_hd95(a, b, spacing):
  """MedPy's definition, written out: surface voxels (mask minus its 6-connected erosion), every
  pairwise distance, nearest per voxel, both directions pooled, 95th percentile."""
  from scipy import ndimage
  surf = [np.argwhere(m & ~ndimage.binary_erosion(m, lesions_lib.SIX_CONNECTED)) * np.array(spacing)
          for m in (a.astype(bool), b.astype(bool))]
  d = np.sqrt(((surf[0][:, None, :] - surf[1][None, :, :]) ** 2).sum(-1))
  return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_both_empty_everything_ratio_is_undefined():
  r = ev(vol(), vol())
  for k in ("dice", "sensitivity", "precision", "lesion_sensitivity", "lesion_precision",
            "lesion_f1", "hd95_mm", "avd_percent"):
    assert r[k] is None, k
  assert r["abs_volume_diff_ml"] == 0.0 and r["ref_lesions"] == r["pred_lesions"] == 0


def test_empty_reference_nonempty_prediction():
  r = ev(vol((0, 5, 2, 2)), vol())
  assert r["dice"] == 0.0 and r["sensitivity"] is None and r["precision"] == 0.0
  # no reference lesion: sensitivity 0/0; the predicted lesion confirms nothing: 0/1
  assert r["lesion_sensitivity"] is None and r["lesion_precision"] == 0.0
  assert r["lesion_f1"] is None and r["hd95_mm"] is None and r["avd_percent"] is None
  assert r["abs_volume_diff_ml"] == pytest.approx(0.005)


def test_nonempty_reference_empty_prediction():
  r = ev(vol(), vol((0, 5, 2, 2)))
  assert r["dice"] == 0.0 and r["sensitivity"] == 0.0 and r["precision"] is None
  assert r["lesion_sensitivity"] == 0.0 and r["lesion_precision"] is None
  assert r["lesion_f1"] is None and r["hd95_mm"] is None and r["avd_percent"] == 100.0


def test_lesions_on_both_sides_none_matched_is_f1_zero_not_undefined():
  r = ev(vol((0, 5, 2, 2)), vol((20, 25, 2, 2)))
  assert (r["lesion_sensitivity"], r["lesion_precision"], r["lesion_f1"]) == (0.0, 0.0, 0.0)


def test_undefined_values_are_left_out_of_means_and_counted():
  rows = [{"dice": 0.5, "precision": None}, {"dice": 0.7, "precision": 0.9},
          {"dice": None, "precision": None}]
  mean, n = metrics.mean_over_defined(rows, ["dice", "precision"])
  assert mean == {"dice": pytest.approx(0.6), "precision": 0.9} and n == {"dice": 2, "precision": 1}
  mean, n = metrics.mean_over_defined([{"dice": None}], ["dice"])
  assert mean == {"dice": None} and n == {"dice": 0}


def test_undefined_is_null_in_json_and_an_empty_csv_cell(tmp_path):
  summary = {"exams": [{"exam_id": "a", "dice": 0.5, "precision": None},
                       {"exam_id": "b", "dice": None, "precision": 0.25}]}
  summary["mean"], summary["mean_n"] = metrics.mean_of(summary["exams"])
  summary["n"] = 2
  js, csv_path = evaluate_mode.write_summary(summary, str(tmp_path))
  saved = json.load(open(js))
  assert saved["exams"][0]["precision"] is None and saved["mean"]["precision"] == 0.25
  assert saved["mean_n"] == {"dice": 1, "precision": 1}
  assert open(csv_path).read().splitlines()[1:] == ["a,0.5,", "b,,0.25"]
  table = evaluate_mode.format_table(summary)
  assert "undef" in table and "(mean over n)" in table


def test_issue_example_weight_is_a_share_of_the_total_overlap():
  """20-voxel lesion; A covers 10 of it; B has 2 voxels in it and 10 outside. A's weight is
  10 / (10 + 2) = 0.83 >= γ: detected (a share of |lesion| would be 10/20 < γ, then B fails β)."""
  ref = vol((0, 20, 2, 2))
  a = vol((0, 10, 2, 2))
  b = vol((14, 16, 2, 2), (14, 24, 3, 2))  # 2 inside, 10 outside: 0.83 > β
  r = ev(a | b, ref)
  assert r["ref_lesions"] == 1 and r["pred_lesions"] == 2
  assert r["lesion_sensitivity"] == 1.0
  # precision: A is inside; B covers 2/12 > α of itself, and the lesion has 8/20 <= β outside
  # every predicted component, so B is confirmed too
  assert r["lesion_precision"] == 1.0 and r["lesion_f1"] == 1.0


def test_walk_looks_at_no_more_components_than_reference_labels():
  """One 20-voxel lesion; overlaps A 5, B 4, C 3 (C has 9 voxels outside: fails β), E 2; tp = 14.
  After A and B the weight is 9/14 = 0.643 < γ, but with one lesion (2 reference labels) the walk
  stops there without a β failure: detected. A second, unrelated lesion raises the bound to 3,
  the walk reaches C, and the first lesion is missed."""
  shape = (40, 8, 8)
  lesion = vol((0, 20, 0, 0), shape=shape)
  pred = vol((0, 5, 0, 0), (6, 10, 0, 0), (11, 14, 0, 0), (11, 14, 1, 0), (11, 14, 2, 0),
             (11, 14, 3, 0), (15, 17, 0, 0), shape=shape)
  r = ev(pred, lesion, TWO_MM)
  assert r["pred_lesions"] == 4 and r["lesion_sensitivity"] == 1.0
  other = vol((25, 30, 0, 6), shape=shape)
  r = ev(pred | other, lesion | other, TWO_MM)
  assert r["ref_lesions"] == 2 and r["detected_lesions"] == 1 and r["lesion_sensitivity"] == 0.5


def test_component_entirely_outside_is_a_false_positive_and_never_walked():
  ref = vol((0, 10, 2, 2))
  pred = vol((0, 10, 2, 2), (20, 30, 2, 2))  # a perfect match and a component far away
  r = ev(pred, ref)
  assert r["lesion_sensitivity"] == 1.0 and r["lesion_precision"] == 0.5
  assert r["lesion_f1"] == pytest.approx(2 / 3)


def test_ties_are_broken_as_the_evaluator_breaks_them():
  pred, ref = _tie_case(mirror=False)  # P starts at x = 8, Q at x = 13: P first
  r = ev(pred, ref, TWO_MM)
  assert (r["ref_lesions"], r["pred_lesions"]) == (2, 3)
  assert r["detected_lesions"] == 2 and r["lesion_sensitivity"] == 1.0
  pred, ref = _tie_case(mirror=True)   # mirrored: Q starts at x = 4, P at x = 9: Q first
  r = ev(pred, ref, TWO_MM)
  assert r["detected_lesions"] == 1 and r["lesion_sensitivity"] == 0.5


def test_lesion_numbering_is_itk_s():
  m = np.zeros((10, 4, 4), np.uint8)
  m[6:8, 0, 0] = 1   # 2 voxels, raster-first at x = 6
  m[0:2, 0, 2] = 1   # 2 voxels, raster-first at index 0 + 10 * 4 * 2 = 80
  m[0:3, 2, 0] = 1   # 3 voxels: largest, label 1
  labels, n = lesions_lib.lesion_labels(m, 8.0)
  assert n == 3 and labels[0, 2, 0] == 1 and labels[6, 0, 0] == 2 and labels[0, 0, 2] == 3


def test_lesions_of_three_mm3_or_less_are_dropped():
  assert lesions_lib.lesions(vol((0, 3, 2, 2)), 1.0)[1] == []
  assert len(lesions_lib.lesions(vol((0, 4, 2, 2)), 1.0)[1]) == 1
  assert lesions_lib.lesions(vol((0, 4, 2, 2)), 0.5)[1] == []  # 4 voxels of 0.5 mm³ = 2 mm³
  assert lesions_lib.min_lesion_voxels(1.422 * 1.703 * 1.422) == 1  # the paper's grid: 3.44 mm³
  r = ev(vol(), vol((0, 3, 2, 2)))
  assert r["ref_lesions"] == 0 and r["lesion_sensitivity"] is None
  assert r["dice"] == 0.0  # voxel-wise metrics still see it


def test_a_removed_component_counts_as_background_for_beta():
  ref = vol((0, 10, 2, 2), (12, 15, 3, 2))  # a lesion and a 3-voxel speck (removed)
  # 3 voxels in the lesion, 8 on the speck's row: the speck is background, so 8/11 > β
  pred = vol((7, 10, 2, 2), (7, 15, 3, 2))
  assert ev(pred, ref)["lesion_sensitivity"] == 0.0


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


def test_one_lesion_split_in_two():
  ref = vol((0, 10, 2, 2))
  pred = vol((0, 4, 2, 2), (6, 10, 2, 2))
  r = ev(pred, ref)
  assert (r["tp"], r["fp"], r["fn"]) == (8, 0, 2)
  assert r["dice"] == pytest.approx(16 / 18)
  assert r["ref_lesions"] == 1 and r["pred_lesions"] == 2
  assert r["lesion_sensitivity"] == 1.0 and r["lesion_precision"] == 1.0


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: cannot run std::sort")
def test_std_sort_port_matches_gcc(tmp_path):
  """The permutation libstdc++ produces, ties included, for inputs below and above the 16-element
  insertion-sort threshold (the evaluator sorts (label, overlap) pairs by overlap only)."""
  rng = np.random.default_rng(0)
  cases = [list(rng.integers(0, k, n)) for n in (3, 15, 16, 17, 40, 100, 300) for k in (2, 5, 50)]
  cases.append([0] * 64 + [3] * 3)  # mostly zero overlaps, as in a real column
  src = tmp_path / "sort.cc"
  src.write_text(
      "#include <algorithm>\n#include <cstdio>\n#include <utility>\n#include <vector>\n"
      "int main(){int n;while(scanf(\"%d\",&n)==1){std::vector<std::pair<int,int>> v;"
      "for(int i=0;i<n;++i){int x;scanf(\"%d\",&x);v.push_back({i,x});}"
      "std::sort(v.begin(),v.end(),[](const std::pair<int,int>&f,const std::pair<int,int>&s)"
      "{return f.second>s.second;});for(auto&p:v)printf(\"%d \",p.first);printf(\"\\n\");}}\n")
  exe = tmp_path / "sort"
  subprocess.run(["g++", "-O1", "-o", str(exe), str(src)], check=True)
  stdin = "".join(f"{len(c)} " + " ".join(map(str, c)) + "\n" for c in cases)
  out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
  for case, line in zip(cases, out.stdout.splitlines()):
    pairs = list(enumerate(int(v) for v in case))
    cxx_sort.std_sort(pairs, lambda f, s: f[1] > s[1])
    assert [p[0] for p in pairs] == [int(t) for t in line.split()], case


def test_std_sort_sorts_and_uses_heapsort_past_the_depth_limit():
  rng = np.random.default_rng(1)
  for n in (0, 1, 2, 17, 200):
    a = list(rng.integers(0, 9, n))
    cxx_sort.std_sort(a, lambda f, s: f < s)
    assert a == sorted(a)
  a = list(rng.integers(0, 1000, 300))
  cxx_sort._heap_sort(a, 0, len(a), lambda f, s: f < s)
  assert a == sorted(a)
  b = list(itertools.chain(range(50), range(50)))
  cxx_sort.std_sort(b, lambda f, s: f > s)
  assert b == sorted(b, reverse=True)


def test_hd95_is_medpy_s_pooled_percentile():
  a = np.zeros((20, 20, 20), np.uint8)
  b = np.zeros_like(a)
  a[5:10, 5:10, 5:10] = 1
  b[8:13, 5:10, 5:10] = 1
  assert metrics.hd95(a, a, ONE_MM) == 0.0
  assert metrics.hd95(a, b, ONE_MM) == pytest.approx(3.0)
  assert metrics.hd95(a, b, (2, 1, 1)) == pytest.approx(6.0)
  # asymmetric: b has a far blob. Pooled (MedPy) is below the larger directed percentile (MONAI)
  b[15:18, 15:18, 15:18] = 1
  pooled = metrics.hd95(a, b, (1, 1.5, 1))
  assert pooled == pytest.approx(_brute_hd95(a, b, (1, 1.5, 1)))
  directed = max(np.percentile(metrics._surface_distances(p, q, (1, 1.5, 1)), 95)
                 for p, q in ((a > 0, b > 0), (b > 0, a > 0)))
  assert pooled < directed
  with pytest.raises(ValueError, match="different grids"):
    metrics.evaluate_masks(a, a[:-1], ONE_MM)


def test_per_lesion_figures_are_ndimages():
  """Centres, means and maxima from each lesion's own voxels: what ndimage's center_of_mass,
  mean and maximum give over the whole grid; a label with no voxel is nan."""
  rng = np.random.default_rng(6)
  labels, n = lesions_lib.lesion_labels(rng.random((30, 25, 12)) > 0.85, 1.0, min_mm3=0.0)
  labels[labels == 2] = 0  # label 2 left empty
  value = rng.random(labels.shape).astype(np.float32)
  got = lesions_lib.per_lesion(labels, n, value)
  index = [k for k in range(1, n + 1) if k != 2]
  np.testing.assert_array_equal(got["voxels"], np.bincount(labels.ravel(), minlength=n + 1)[1:])
  np.testing.assert_allclose(got["centre"][np.array(index) - 1], ndimage.center_of_mass(
      np.ones_like(labels), labels, index), rtol=1e-12)
  np.testing.assert_allclose(got["mean"][np.array(index) - 1], ndimage.mean(value, labels, index),
                             rtol=1e-6)
  np.testing.assert_array_equal(got["max"][np.array(index) - 1],
                                ndimage.maximum(value, labels, index))
  assert np.isnan(got["mean"][1]) and np.isnan(got["max"][1]) and got["voxels"][1] == 0
  one = lesions_lib.per_lesion(labels > 0, 1, value)  # a bool mask is one lesion, as in ndimage
  assert one["max"][0] == ndimage.maximum(value, labels > 0, 1)
