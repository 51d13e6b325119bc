"""The visible-change F1 (studies/visible_change.py): sensitivity over the reference lesions with
visible change only, precision over every predicted lesion."""
import numpy as np

from msjax.data.lesions import lesion_labels
from studies import visible_change


def test_faint_reference_lesions_leave_sensitivity_and_found_ones_stay_right():
  ref = np.zeros((40, 20, 20), np.uint8)
  for x in (5, 15, 25):  # three reference lesions, the last one faint
    ref[x:x + 3, 8:11, 8:11] = 1
  labels, n = lesion_labels(ref > 0, 1.0)
  peaks = np.array([6.0, 5.0, 2.0])  # label order follows x
  pred = np.zeros_like(ref, bool)
  pred[5:8, 8:11, 8:11] = True      # the first visible one found
  pred[25:28, 8:11, 8:11] = True    # the faint one found: right, not false
  pred[34:37, 2:5, 2:5] = True      # a false change lesion
  s = visible_change.visible_scores(labels, n, peaks, pred, ref, (1.0, 1.0, 1.0), tau=4.0)
  assert (s["visible"], s["found_visible"], s["found_faint"]) == (2, 1, 1)
  assert (s["predicted"], s["confirmed"]) == (3, 2)
  assert s["sensitivity_visible"] == 0.5 and abs(s["precision"] - 2 / 3) < 1e-9
  assert abs(s["f1_visible"] - 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) < 1e-9
  assert abs(s["sensitivity_all"] - 2 / 3) < 1e-9
