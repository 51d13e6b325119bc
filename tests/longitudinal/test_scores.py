"""Change scores and the reference's way between a common space and a visit's grid."""
import numpy as np
import pytest

from msjax.longitudinal import scores

sitk = pytest.importorskip("SimpleITK")


def test_both_directions_of_change_count():
  ref = np.zeros((20, 20, 6), np.uint8)
  ref[2:6, 2:6, 1:3] = 1      # appeared
  ref[12:16, 12:16, 3:5] = 1  # vanished
  signed = np.zeros_like(ref, dtype=np.int8)
  signed[2:6, 2:6, 1:3] = 1
  signed[12:16, 12:16, 3:5] = -1
  s = scores.change_scores(signed, ref, (1.0, 1.0, 3.0))
  assert s["dice"] == 1.0 and s["lesion_f1"] == 1.0 and s["ref_lesions"] == 2
  assert s["false_lesions"] == 0 and s["pred_volume_ml"] == pytest.approx(0.192)


def test_reference_to_visit_and_back_follows_the_itk_convention():
  """T maps common-space points to the visit's points (fixed = common, moving = visit)."""
  common = sitk.Image([60, 60, 20], sitk.sitkUInt8)
  common.SetSpacing((1.0, 1.0, 3.0))
  arr = np.zeros((20, 60, 60), np.uint8)  # sitk order z, y, x
  arr[8:12, 20:30, 35:45] = 1
  ref = sitk.GetImageFromArray(arr)
  ref.CopyInformation(common)
  visit = sitk.Image([80, 80, 30], sitk.sitkUInt8)
  visit.SetSpacing((0.8, 0.8, 2.0))
  visit.SetOrigin((-10.0, -5.0, -6.0))
  t = sitk.Euler3DTransform((30.0, 30.0, 30.0), 0.05, -0.03, 0.1, (4.0, -3.0, 2.0))
  on_visit = scores.reference_on_visit(ref, visit, t)
  assert on_visit.sum() > 0
  # a point inside the cube in common space lands, through T, inside the mask on the visit grid
  centre_common = ref.TransformContinuousIndexToPhysicalPoint((39.5, 24.5, 9.5))
  idx = visit.TransformPhysicalPointToIndex(t.TransformPoint(centre_common))
  assert on_visit[idx] == 1
  back_img = sitk.GetImageFromArray(np.ascontiguousarray(on_visit.transpose(2, 1, 0)))
  back_img.CopyInformation(visit)
  back = scores.mask_onto(back_img, ref, t)
  s = scores.change_scores(back, sitk.GetArrayFromImage(ref).transpose(2, 1, 0), (1, 1, 3))
  assert s["dice"] > 0.7 and s["lesion_f1"] == 1.0
