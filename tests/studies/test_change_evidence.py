"""The evidence ceiling (studies/change_evidence.py) on synthetic visits: a change that is in
the images shows as a strong peak, a reference region with no change in the images as none."""
from scipy import ndimage

from longitudinal import phantom
from studies import change_evidence as evidence

BASE = [((-18.0, 8.0, 6.0), 3.5)]
NEW = ((18.0, 16.0, 9.0), 3.5)
INVISIBLE = ((-16.0, -18.0, -9.0), 3.0)   # marked in the reference, absent from both visits


def test_visible_change_peaks_high_and_invisible_reference_region_does_not(tmp_path):
  v1 = phantom.visit(BASE, seed=1)
  v2 = phantom.visit(BASE + [NEW], seed=2)
  brain = ndimage.binary_fill_holes(ndimage.binary_erosion(v1 > 60, iterations=2))
  points = phantom.world_points()
  reference = ((phantom.head(points, [NEW]) > 150) | (phantom.head(points, [INVISIBLE]) > 150))
  maps = evidence.evidence_maps((v1, v2), None, brain, phantom.SPACING)
  assert sorted(maps) == ["flair", "flair_unsmoothed", "plausible"]
  out = evidence.region_peaks(maps, reference, brain, phantom.SPACING)
  assert out["reference_lesions"] == 2
  weak, strong = out["peaks"]
  assert strong > 8 and weak < 4, out["peaks"]
  first, last = out["curve"][0], out["curve"][-1]
  assert first["tau"] == 2.0 and last["tau"] == 8.0
  # every threshold between the two peaks: half the reference found, F1 ceiling 2/3
  between = [c for c in out["curve"] if weak < c["tau"] <= strong]
  assert between and all(c["reference_lesions_with_evidence"] == 1
                         and c["f1_ceiling_no_false"] == 0.667 for c in between)
  # the noise of two independent visits makes some clusters of |z| >= 2, few reach 4
  assert first["non_reference_clusters"] >= next(
      c["non_reference_clusters"] for c in out["curve"] if c["tau"] == 4.0)
  png = evidence.figure([dict(out, patient="phantom")], str(tmp_path / "evidence.png"))
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert all(c["non_reference_clusters_plausible"] <= c["non_reference_clusters"]
             for c in out["curve"])
