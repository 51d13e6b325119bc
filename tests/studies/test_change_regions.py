"""The raw-exam change-region check (studies/change_regions.py) on arrays made by hand."""
import numpy as np

from studies import change_regions as regions


def _case():
  shape = (20, 20, 20)
  reference = np.zeros(shape, np.uint8)
  reference[4:7, 4:7, 4:7] = 1      # region 1: brighter at study 2 (a new lesion)
  reference[12:15, 12:15, 12:15] = 1  # region 2: darker at study 2 (a disappearing lesion)
  flair = {1: np.full(shape, 100.0), 2: np.full(shape, 100.0)}
  flair[2][4:7, 4:7, 4:7] = 180.0
  flair[1][12:15, 12:15, 12:15] = 180.0
  return reference, flair


def test_each_region_is_looked_for_in_the_visit_where_it_is_lesion():
  reference, flair = _case()
  masks = {1: np.zeros(reference.shape, bool), 2: np.zeros(reference.shape, bool)}
  masks[2][4:7, 4:7, 4:7] = True       # the new lesion, in study 2's mask: found
  masks[2][12:15, 12:15, 12:15] = True  # the disappearing one in the wrong visit's mask: not found
  got = regions.found_regions(reference, flair, masks)
  assert got == {"regions": 2, "found": 1, "found_50": 1, "brighter": 1, "brighter_found": 1, "darker": 1,
                 "darker_found": 0, "share": 0.5}


def test_a_region_needs_a_tenth_of_it_covered():
  reference, flair = _case()
  masks = {1: np.zeros(reference.shape, bool), 2: np.zeros(reference.shape, bool)}
  masks[1][12, 12, 12:15] = True      # 3 of 27 voxels: 11 %
  masks[2][4, 4, 4:6] = True          # 2 of 27: 7 %
  got = regions.found_regions(reference, flair, masks)
  assert (got["darker_found"], got["brighter_found"]) == (1, 0)
  assert got["found_50"] == 0  # 11 % is found at the 10 % bar, not at the 50 % one


def test_half_covered_regions_count_at_the_50_percent_bar():
  reference, flair = _case()
  masks = {1: np.zeros(reference.shape, bool), 2: np.zeros(reference.shape, bool)}
  masks[1][12:15, 12:15, 12:14] = True  # 18 of 27: 67 %
  masks[2][4:7, 4:7, 4] = True          # 9 of 27: 33 %
  got = regions.found_regions(reference, flair, masks)
  assert (got["found"], got["found_50"]) == (2, 1)
