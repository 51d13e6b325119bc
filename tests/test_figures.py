"""Figure helpers (msjax/figures.py)."""
import numpy as np

from msjax import figures


def test_lesion_slices_picks_the_most_lesioned_and_spreads_them():
  ref = np.zeros((10, 10, 40), bool)
  ref[2:8, 2:8, 10] = True   # 36 voxels
  ref[2:6, 2:6, 11] = True   # 16, too close to 10
  ref[2:5, 2:5, 30] = True   # 9
  assert figures.lesion_slices(ref, 2) == [10, 30]
  assert figures.lesion_slices(ref, 5) == [10, 30]  # only slices with lesion
