"""The paper's model grid in numbers: FSL's MNI152 1 mm box and its 128³ resampling
(1.422×1.703×1.422 mm), whether an exam already sits on either, and the MNI152 templates shipped
in nilearn's wheel (read for preprocessing's registration and the report's priors)."""
from __future__ import annotations

import numpy as np

MNI_SHAPE = (182, 218, 182)
MNI_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
MODEL_SHAPE = (128, 128, 128)


def box_affine(shape=MODEL_SHAPE, box_shape=MNI_SHAPE, box_affine=MNI_AFFINE) -> np.ndarray:
  """RAS affine of `shape` voxels spanning the same field of view as the box grid."""
  scale = np.array(box_shape, float) / np.array(shape, float)
  step = np.diag(list(scale) + [1.0])
  step[:3, 3] = 0.5 * scale - 0.5
  return box_affine @ step


def is_mni_grid(shape, affine, atol: float = 1e-2) -> bool:
  """The MNI152 1 mm box or a resampling of it (the paper's 128³ in any voxel order, another
  model grid in the box's own order): world mm are MNI mm."""
  shape = tuple(int(s) for s in shape)
  boxes = [(MNI_SHAPE, MNI_AFFINE), (MODEL_SHAPE, box_affine())]
  if shape not in (MNI_SHAPE, MODEL_SHAPE):
    boxes.append((shape, box_affine(shape)))
  for box_shape, box in boxes:
    corners = np.array([[i, j, k, 1] for i in (0, box_shape[0] - 1) for j in (0, box_shape[1] - 1)
                        for k in (0, box_shape[2] - 1)], float)
    want = {tuple(np.round(c, 1)) for c in (corners @ box.T)[:, :3]}
    if sorted(shape) != sorted(box_shape):
      continue
    mine = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                     for k in (0, shape[2] - 1)], float)
    got = {tuple(np.round(c, 1)) for c in (mine @ np.asarray(affine).T)[:, :3]}
    if all(min(np.abs(np.subtract(g, w)).max() for w in want) < max(atol, 0.1) for g in got):
      return True
  return False


TEMPLATES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
             "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def template_path(name: str) -> str:
  """A template file inside nilearn's installed package (found without importing nilearn, which
  takes seconds): the `preprocess` extra installs it."""
  import importlib.util
  import os
  spec = importlib.util.find_spec("nilearn")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("lesion locations need nilearn's MNI152 templates: pip install "
                      "'msjax[preprocess]'")
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data",
                      TEMPLATES[name])
  if not os.path.exists(path):
    raise ImportError(f"{path}: not in this nilearn installation (nilearn >= 0.10 ships it)")
  return path


def load_template(name: str) -> tuple[np.ndarray, np.ndarray]:
  """As nilearn.datasets.load_mni152_{template,gm_template,wm_template}(resolution=1): the
  stored uint8 values divided by their maximum."""
  import nibabel as nib
  img = nib.load(template_path(name))
  data = np.asarray(img.dataobj, np.float32)
  return data / data.max(), np.asarray(img.affine, float)
