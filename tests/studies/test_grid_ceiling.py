"""studies/grid_ceiling.py: big lesions survive the 128³ grid, lesions of a few voxels do not."""
import numpy as np

from studies import grid_ceiling


def test_the_grid_caps_small_lesions_far_below_large_ones():
  shape = (182, 218, 182)  # the Lesjak MNI grid: 1.4-1.7 mm model voxels
  big = np.zeros(shape, bool)
  big[60:90, 80:110, 60:90] = True
  small = np.zeros(shape, bool)
  for k in range(8):  # 2x2x2 mm lesions, far apart
    x = 30 + 15 * k
    small[x:x + 2, 100:102, 90:92] = True
  b, s = grid_ceiling.ceiling(big, 1.0), grid_ceiling.ceiling(small, 1.0)
  assert b["ml"] == 27.0 and b["lesions"] == 1 and s["lesions"] == 8
  assert b["dice_label_0.5"] > 0.95 and b["f1_label_0.5"] == 1.0
  # a 2 mm lesion spans about one model voxel (1.4-1.7 mm): its edges are lost
  assert s["dice_label_0.5"] < b["dice_label_0.5"] - 0.15, (s, b)
