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


def ras_affine(img: sitk.Image) -> np.ndarray:
  """The NIfTI (RAS) affine of an ITK image's grid: the inverse of `reference_image`."""
  a = np.eye(4)
  a[:3, :3] = RAS_TO_LPS @ np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
  a[:3, 3] = RAS_TO_LPS @ np.array(img.GetOrigin())
  return a


def canonical(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
  """An ITK image as msjax computes on it: the array in RAS voxel order (the nearest axes of an
  oblique grid) and that array's affine, as `nifti.read_nifti` gives for the same file."""
  from nibabel import orientations as ornt_lib
  affine = ras_affine(img)
  to_ras = ornt_lib.ornt_transform(ornt_lib.io_orientation(affine),
                                   ornt_lib.axcodes2ornt(("R", "A", "S")))
  array = to_numpy(img)
  out = np.ascontiguousarray(ornt_lib.apply_orientation(array, to_ras))
  return out, affine @ ornt_lib.inv_ornt_aff(to_ras, array.shape)


def from_numpy(array: np.ndarray, like: sitk.Image) -> sitk.Image:
  img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
  img.CopyInformation(like)
  return img
