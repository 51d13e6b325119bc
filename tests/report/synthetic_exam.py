"""A synthetic exam made of the MNI152 template itself, for the report tests: a FLAIR-like image
from the tissue priors (CSF dark, white matter darker than grey), the template's T1, its brain,
on a coarse MNI grid, and lesion centres chosen in each location class from the atlas."""
import numpy as np
from scipy import ndimage

from msjax.data import mni
from msjax.report import atlas


def mni_grid(step_mm: float):
  """An RAS grid with step_mm voxels over FSL's MNI box."""
  shape = tuple(int(round(s / step_mm)) for s in mni.MNI_SHAPE)
  affine = np.diag([step_mm, step_mm, step_mm, 1.0])
  affine[:3, 3] = [-90.0 + step_mm / 2 - 0.5, -126.0 + step_mm / 2 - 0.5, -72.0 + step_mm / 2 - 0.5]
  return shape, affine


def template_exam(shape, affine, seed=0):
  a = atlas.on_grid(shape, affine, None)
  rng = np.random.default_rng(seed)
  brain = ((a.gm + a.wm) >= 0.5) | a.ventricles
  flair = 0.08 * a.csf + 0.75 * a.gm + 0.55 * a.wm + rng.normal(0, 0.01, shape)
  flair = np.where(brain, flair, 0).astype(np.float32)
  t1 = np.where(brain, a.t1, 0).astype(np.float32)
  return {"FLAIR": flair, "T1W": t1}, brain, a


def class_centres(a, affine, rng_seed=0):
  """A voxel in white matter for each class, the centre of a ball of one voxel's radius: 3-4.5 mm
  from the ventricles (its edge within 3 mm) and far from the cortex; 3-4.5 mm from the cortex
  and far from the ventricles; in the pons; far from both."""
  step = float(affine[0, 0])
  wm = (a.wm >= 0.7) & ~a.infratentorial
  to_v = ndimage.distance_transform_edt(~a.ventricles) * step
  to_c = ndimage.distance_transform_edt(~a.cortex) * step
  picks = {
      "periventricular": wm & (to_v > 3) & (to_v <= 4.5) & (to_c > 10),
      "juxtacortical": wm & (to_c > 3) & (to_c <= 4.5) & (to_v > 20),
      "deep_white_matter": wm & (to_c > 10) & (to_v > 10),
  }
  out = {}
  for c, where in picks.items():
    vox = np.argwhere(where)
    assert len(vox), c
    out[c] = vox[len(vox) // 2]
  pons = np.linalg.solve(affine, [0.0, -25.0, -32.0, 1.0])[:3]
  out["infratentorial"] = np.round(pons).astype(int)
  return out


def paint(shape, centres: dict, radius_vox: float = 1.0):
  """A label map with one small ball (6-neighbourhood + centre) per class, labelled 1..n in the
  order of `centres`; returns (labels, {label: class})."""
  labels = np.zeros(shape, np.int32)
  truth = {}
  ball = ndimage.generate_binary_structure(3, 1)
  for i, (c, centre) in enumerate(centres.items(), start=1):
    sl = tuple(slice(int(v) - 1, int(v) + 2) for v in centre)
    labels[sl][ball] = i
    truth[i] = c
  return labels, truth
