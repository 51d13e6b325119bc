"""The change decision on arrays of one grid (no registration): synthetic visits of the phantom."""
import numpy as np
import pytest
from scipy import ndimage

from msjax.data import lesions
from msjax.longitudinal import change
from longitudinal import phantom

BASE_LESIONS = [((-18.0, 8.0, 6.0), 3.5), ((16.0, -14.0, -6.0), 3.0)]
NEW = [((18.0, 16.0, 9.0), 3.5), ((-16.0, -18.0, -9.0), 3.0), ((-20.0, 22.0, 0.0), 3.5)]


def decide(v1, v2, t2=None):
  brain = v1 > 60
  brain = ndimage.binary_fill_holes(ndimage.binary_opening(brain, iterations=2))
  brain = ndimage.label(brain)[0]
  brain = brain == np.argmax(np.bincount(brain.ravel())[1:]) + 1
  brain = ndimage.binary_fill_holes(brain)
  z1 = change.robust_units(v1, brain)
  z2 = change.robust_units(change.match_intensities(v2, v1, brain), brain, like=v1)
  zf = change.change_z(z1, z2, brain, phantom.SPACING)
  signed = change.detect(zf, z1, z2, brain, phantom.SPACING)
  classes, regions, rows = change.classify(signed, z1, z2, brain, phantom.SPACING, zf=zf)
  return signed, classes, rows


def lesion_voxels(lesions):
  return phantom.head(phantom.world_points(), lesions) > 150


@pytest.fixture(scope="module")
def baseline():
  return phantom.visit(BASE_LESIONS, seed=1)


def test_pasted_lesions_all_new_and_nothing_else(baseline):
  followup = phantom.visit(BASE_LESIONS + NEW, seed=2)
  signed, classes, rows = decide(baseline, followup)
  assert [r["class"] for r in rows] == ["new"] * 3
  assert (signed >= 0).all()
  truth = lesion_voxels(NEW)
  labels, n = ndimage.label(truth)
  assert n == 3
  for k in range(1, n + 1):  # every pasted lesion is covered, mostly
    assert (signed[labels == k] > 0).mean() > 0.5
  near = lesion_voxels([(c, r + 3.0) for c, r in NEW])  # partial volume: one 3 mm slice
  assert not signed[~near].any()  # and nothing else


def test_independent_noise_alone_is_no_change(baseline):
  signed, _, rows = decide(baseline, phantom.visit(BASE_LESIONS, seed=3))
  assert rows == [] and not signed.any()


def test_enlarged_lesion_is_enlarging_and_shrunk_one_shrinking():
  centre = (-18.0, 8.0, 6.0)
  small, large = [(centre, 2.5)], [(centre, 5.0)]
  _, _, rows = decide(phantom.visit(small, seed=4), phantom.visit(large, seed=5))
  assert [r["class"] for r in rows] == ["enlarging"]
  assert rows[0]["volume_followup_ml"] >= 1.5 * rows[0]["volume_baseline_ml"]
  _, _, rows = decide(phantom.visit(large, seed=6), phantom.visit(small, seed=7))
  assert [r["class"] for r in rows] == ["shrinking"]


def test_vanished_lesion_is_disappearing(baseline):
  signed, _, rows = decide(baseline, phantom.visit(BASE_LESIONS[1:], seed=8))
  assert [r["class"] for r in rows] == ["disappearing"]
  assert (signed <= 0).all() and signed.any()


def test_two_lesions_growing_into_one_are_merged():
  a, b = ((-20.0, 4.0, 3.0), 3.0), ((-12.0, 4.0, 3.0), 3.0)
  merged = [((-16.0, 4.0, 3.0), 7.0)]
  _, _, rows = decide(phantom.visit([a, b], seed=9), phantom.visit(merged, seed=10))
  assert len(rows) == 1 and rows[0]["merged"] and rows[0]["class"] == "enlarging"
  assert rows[0]["lesions_baseline"] == 2 and rows[0]["lesions_followup"] == 1


def test_match_intensities_undoes_a_monotone_remap(baseline):
  brain = baseline > 60
  remapped = 0.5 * np.clip(baseline, 0, None) ** 1.1 + 7
  back = change.match_intensities(remapped, baseline, brain)
  assert np.percentile(np.abs(back - baseline)[brain], 90) < 3.0


def test_edge_term_absorbs_a_sub_voxel_shift(baseline):
  """The same head moved 1 mm through the 3 mm slices: no change, although plain subtraction sees
  large differences at every edge."""
  shifted = phantom.visit(BASE_LESIONS, shift_mm=(0.0, 0.0, 1.0), seed=11)
  signed, _, rows = decide(baseline, shifted)
  assert rows == []
  brain = baseline > 60
  plain = np.abs(shifted - baseline)[brain]
  assert (plain > 5 * 3.0 * np.sqrt(2)).sum() > 1000


def _flat_maps(shape):
  """A brain away from the volume's edges, both visits at robust value 1 (lesion-like, not CSF)
  and no change: (brain, z1, z2, change z) for detect()."""
  brain = np.zeros(shape, bool)
  brain[2:-2, 2:-2, 1:-1] = True
  z1 = np.ones(shape, np.float32)
  return brain, z1, z1.copy(), np.zeros(shape, np.float32)


def test_change_smaller_than_one_resolution_element_is_dropped():
  """A change cluster must hold one resel of the smoothed change map (FWHM 2.355 σ in-plane × the
  3 mm slice = 10.6 mm³ at σ 0.8 mm), not just the evaluator's 3 mm³: a 2-voxel (6 mm³) bright
  blob far above the seed threshold is one noise peak; a 4-voxel (12 mm³) one is kept, brighter
  and darker alike."""
  spacing = (1.0, 1.0, 3.0)
  assert change.resel_mm3(spacing, change.Rule().smooth_mm) == pytest.approx(10.65, abs=0.01)
  shape = (40, 40, 12)
  brain, z1, z2, zf = _flat_maps(shape)
  blobs = [((slice(18, 20), slice(18, 19), 6), 1), ((slice(18, 20), slice(22, 24), 4), 1),
           ((slice(10, 12), slice(10, 11), 5), -1), ((slice(10, 12), slice(28, 30), 7), -1)]
  for box, sign in blobs:
    zf[box] = 8.0 * sign
  signed = change.detect(zf, z1, z2, brain, spacing)
  labels, n = ndimage.label(signed != 0)
  assert n == 2
  assert sorted(np.bincount(labels.ravel())[1:]) == [4, 4]
  assert set(np.unique(signed[signed != 0])) == {-1, 1}


def test_faint_change_is_kept_only_where_the_network_agrees():
  """A change of z 3.5 (under the FLAIR seed 5, no T2) is kept when the network's lesion
  probability says lesion at the visit where the change would be lesion and not at the other (a
  second opinion, as T2 agreeing with FLAIR at z 3 is): brighter at follow-up with p2 >= 0.5 > p1,
  darker with p1 >= 0.5 > p2, in the masks segment makes of them. Not kept: without
  probabilities, a lesion at both visits (stable), a lesion at the other visit only, or the
  network alone where the subtraction stays under z 3."""
  spacing = (1.0, 1.0, 3.0)
  shape = (48, 48, 12)
  brain, z1, z2, zf = _flat_maps(shape)
  p1 = np.full(shape, 0.05, np.float32)
  p2 = p1.copy()
  blob = lambda x, y, z: (slice(x, x + 3), slice(y, y + 3), slice(z, z + 2))  # noqa: E731
  regions = {  # name: (box, change z, p1, p2, kept)
      "new": (blob(10, 10, 3), 3.5, 0.1, 0.9, 1),
      "vanished": (blob(10, 30, 3), -3.5, 0.8, 0.2, -1),
      "stable lesion": (blob(30, 10, 3), 3.5, 0.9, 0.9, 0),
      "lesion at the other visit": (blob(30, 30, 3), 3.5, 0.9, 0.1, 0),
      "network alone": (blob(20, 20, 7), 2.8, 0.05, 0.95, 0)}
  for box, z, a, b, _ in regions.values():
    zf[box], p1[box], p2[box] = z, a, b
  assert not change.detect(zf, z1, z2, brain, spacing).any()
  masks = lambda t: tuple(lesions.mask_of(p, 3.0, t) > 0 for p in (p1, p2))  # noqa: E731
  signed = change.detect(zf, z1, z2, brain, spacing, segmentations=masks(0.5))
  for name, (box, _, _, _, kept) in regions.items():
    assert (signed[box] == kept).all(), name
  assert ndimage.label(signed != 0)[1] == 2
  # the network's own mask decides what it calls lesion: at 0.95 it calls none of them
  assert not change.detect(zf, z1, z2, brain, spacing, segmentations=masks(0.95)).any()


def _brain():
  """The phantom's brain as a skull stripper gives it: cortex and white matter (and the
  ventricles inside), not the CSF rim, skull or scalp."""
  p = phantom.world_points()
  return (p[..., 0] / 40) ** 2 + (p[..., 1] / 46) ** 2 + (p[..., 2] / 38) ** 2 <= 1


@pytest.mark.parametrize("x_mm", [-33.0, -28.0])  # touching the cortex; 5 mm deeper
def test_a_new_lesion_touching_cortex_is_new(x_mm):
  """A visit's lesion region is lesion, not cortex: a new lesion at the cortex must not join the
  cortical ribbon (as bright as lesion_z) into one region that reads as stable."""
  lesion = [((x_mm, 0.0, 0.0), 4.0)]
  v1, v2 = phantom.visit((), seed=11), phantom.visit(lesion, seed=12)
  brain = _brain()
  z1 = change.robust_units(v1, brain)
  z2 = change.robust_units(change.match_intensities(v2, v1, brain), brain, like=v1)
  signed = np.where(lesion_voxels(lesion) & brain, 1, 0).astype(np.int8)
  _, _, rows = change.classify(signed, z1, z2, brain, phantom.SPACING)
  assert [r["class"] for r in rows] == ["new"]
  assert rows[0]["volume_baseline_ml"] < 0.05 and rows[0]["volume_followup_ml"] < 0.5


def test_with_the_networks_masks_what_it_rejects_is_no_lesion():
  """A lesion grown from r 2.5 to 5 mm is enlarging; when the network calls nothing there at
  baseline (its bright spot an artefact to it), the region is new; a network that calls the
  whole brain lesion adds nothing FLAIR does not show (still enlarging)."""
  centre = (-20.0, 10.0, 0.0)
  small, large = [(centre, 2.5)], [(centre, 5.0)]
  v1, v2 = phantom.visit(small, seed=13), phantom.visit(large, seed=14)
  brain = _brain()
  z1, z2 = change.robust_units(v1, brain), change.robust_units(v2, brain, like=v1)
  signed = np.where(lesion_voxels(large) & ~lesion_voxels(small), 1, 0).astype(np.int8)
  _, _, rows = change.classify(signed, z1, z2, brain, phantom.SPACING)
  assert [r["class"] for r in rows] == ["enlarging"]
  seg2 = lesion_voxels(large)
  _, _, rows = change.classify(signed, z1, z2, brain, phantom.SPACING,
                               segmentations=(np.zeros_like(seg2), seg2))
  assert [r["class"] for r in rows] == ["new"]
  _, _, rows = change.classify(signed, z1, z2, brain, phantom.SPACING,
                               segmentations=(brain, brain))
  assert [r["class"] for r in rows] == ["enlarging"]


def test_visits_of_two_patients_do_not_correlate_like_one_patients():
  """One patient's two visits (the phantom with its own noise at each) correlate far above the
  bar; a visit against another head (the phantom moved by 12 mm, as if another anatomy) or
  against noise falls below it."""
  v1, v2 = phantom.visit(BASE_LESIONS, seed=21), phantom.visit(BASE_LESIONS, seed=22)
  brain = _brain()
  z1, z2 = change.robust_units(v1, brain), change.robust_units(v2, brain, like=v1)
  assert change.visits_correlation(z1, z2, brain) > 0.9
  other = phantom.visit(BASE_LESIONS, shift_mm=(12.0, 9.0, 0.0), rotation_deg=(0, 0, 25), seed=23)
  zo = change.robust_units(other, brain, like=v1)
  assert change.visits_correlation(z1, zo, brain) < change.SAME_PATIENT_MIN_R
  noise = np.random.default_rng(0).normal(size=v1.shape).astype(np.float32)
  assert abs(change.visits_correlation(z1, noise, brain)) < 0.1
