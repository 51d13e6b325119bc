"""The paper's model grid: 128³ voxels spanning FSL's 182×218×182 MNI152 1 mm box
(1.422×1.703×1.422 mm), as a SimpleITK reference image (ITK works in LPS, NIfTI in RAS)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from msjax.data.mni import MODEL_SHAPE, box_affine

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def reference_image(shape=MODEL_SHAPE, affine=None) -> sitk.Image:
  """An empty SimpleITK image on the grid of a RAS affine."""
  affine = box_affine(shape) if affine is None else affine
  spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
  direction = RAS_TO_LPS @ affine[:3, :3] / spacing
  img = sitk.Image([int(s) for s in shape], sitk.sitkFloat32)
  img.SetSpacing([float(s) for s in spacing])
  img.SetOrigin([float(v) for v in RAS_TO_LPS @ affine[:3, 3]])
  img.SetDirection([float(v) for v in direction.ravel()])
  return img


def to_numpy(img: sitk.Image) -> np.ndarray:
  """SimpleITK image -> array indexed [i, j, k] like nibabel (sitk's own view is [k, j, i])."""
  return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def from_numpy(array: np.ndarray, like: sitk.Image) -> sitk.Image:
  img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
  img.CopyInformation(like)
  return img
