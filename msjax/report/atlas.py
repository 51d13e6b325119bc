"""Anatomical priors in MNI152 space, from the templates inside nilearn's wheel (no download):
grey/white-matter probabilities and the T1 template of the ICBM 2009a symmetric nonlinear atlas
(`nilearn/datasets/data/mni_icbm152_{gm,wm,t1}_tal_nlin_sym_09a_converted.nii.gz`, the same
template msjax's preprocessing registers exams to), and what msjax derives from them:

  csf             1 - GM - WM inside nilearn's MNI152 brain mask;
  ventricles      the lateral ventricles: the connected component of CSF >= 0.5 holding the
                  points (±8, -10, 20) mm (the ventricles' bodies), without the third ventricle
                  (|x| < 4, y < 0, z < 12 mm); 17.8 mL in the template;
  deep_gm         grey matter (GM >= 0.5) of the basal ganglia and thalami: inside the box
                  |x| < 33, -36 < y < 22, -12 < z < 30 mm and more than 5 mm from any CSF other
                  than the ventricles (cortex borders sulcal or cisternal CSF; these nuclei do not);
  cortex          GM >= 0.5 that is neither deep grey matter nor infratentorial;
  infratentorial  below the tentorium cerebelli, `infratentorial_mni` (a rule in MNI mm).

All of it is computed on the template's own 1 mm grid (197×233×189 voxels) once per machine
(about 5 s; kept in `~/.cache/msjax/` or `$MSJAX_ATLAS_CACHE`, keyed by this module's source and
the templates, so a `segment` run loads it in a fraction of a second) and once per process in
memory; `on_grid` brings it onto any exam grid through an affine map to MNI mm.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import interpolate, ndimage

from msjax.data.mni import load_template

VENTRICLE_SEEDS_MM = ((8.0, -10.0, 20.0), (-8.0, -10.0, 20.0))

# The tentorium cerebelli as a height z_t(|x|, y) in MNI mm, read off the ICBM 2009a T1 template
# (coronal slices every 10 mm from y = -40 to -92 and sagittal ones at x = 0, 10, 16, 25, 36, 40):
# a tent whose ridge runs along the midline (z = 0 above the culmen at y = -60) and whose sides
# fall to z = -20..-30 at |x| = 40. Rows: y; columns: |x|. Linear between, flat beyond.
_TENT_Y = np.array([-130.0, -92, -80, -70, -60, -50, -40, -30])
_TENT_X = np.array([0.0, 20, 40, 80])
_TENT_Z = np.array([[-25.0, -25, -26, -30],
                    [-20, -22, -23, -28],
                    [-10, -18, -22, -26],
                    [-3, -15, -20, -25],
                    [0, -12, -22, -27],
                    [-2, -15, -25, -32],
                    [-8, -20, -30, -36],
                    [-14, -26, -38, -44]])


def tentorium_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Height (MNI mm) of the tentorium above the point (x, y)."""
  f = interpolate.RegularGridInterpolator((_TENT_Y, _TENT_X), _TENT_Z)
  y = np.clip(np.asarray(y, float), _TENT_Y[0], _TENT_Y[-1])
  ax = np.clip(np.abs(np.asarray(x, float)), _TENT_X[0], _TENT_X[-1])
  return f(np.stack([y, ax], -1))


def infratentorial_mni(points: np.ndarray) -> np.ndarray:
  """Whether MNI points (N, 3) lie in the posterior fossa: the cerebellum (below the tentorium,
  behind y = -34 mm, or y = -40 mm where |x| >= 28 mm, so the temporal lobes stay out) or the
  brainstem (midbrain |x| <= 14, -42 <= y <= -12, -20 < z <= -8 mm: below the thalami and the
  mammillary bodies; pons and medulla |x| <= 16, -45 <= y <= -10, z <= -20 mm)."""
  p = np.asarray(points, float).reshape(-1, 3)
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  ax = np.abs(x)
  cerebellum = (z <= tentorium_z(x, y)) & (y <= np.where(ax >= 28, -40.0, -34.0))
  midbrain = (ax <= 14) & (y >= -42) & (y <= -12) & (z <= -8) & (z > -20)
  pons_medulla = (ax <= 16) & (y >= -45) & (y <= -10) & (z <= -20)
  return cerebellum | midbrain | pons_medulla


@dataclasses.dataclass(frozen=True)
class Atlas:
  """Priors on one grid: probabilities float32 in [0, 1], regions bool."""
  affine: np.ndarray  # voxel -> MNI mm (RAS)
  t1: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  csf: np.ndarray
  brain: np.ndarray
  ventricles: np.ndarray
  deep_gm: np.ndarray
  cortex: np.ndarray
  infratentorial: np.ndarray

  @property
  def shape(self):
    return self.gm.shape


def _mni_coordinates(shape, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  axes = [np.arange(n, dtype=np.float32) for n in shape]
  i, j, k = np.meshgrid(*axes, indexing="ij", sparse=True)
  a = np.asarray(affine, np.float32)
  return tuple(a[r, 0] * i + a[r, 1] * j + a[r, 2] * k + a[r, 3] for r in range(3))


def _cache_path() -> str | None:
  """Where the derived atlas is kept: named by a hash of this module's source and the template
  files' names and sizes (a change to either derives it again); None when turned off
  (MSJAX_ATLAS_CACHE='')."""
  import hashlib
  import os

  from msjax.data import mni
  folder = os.environ.get("MSJAX_ATLAS_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "msjax"))
  if not folder:
    return None
  h = hashlib.sha256(open(__file__, "rb").read())
  for kind in ("t1", "gm", "wm"):
    path = mni.template_path(kind)
    h.update(f"{os.path.basename(path)}:{os.path.getsize(path)}".encode())
  return os.path.join(folder, f"mni_atlas-{h.hexdigest()[:16]}.npz")


@functools.lru_cache(maxsize=1)
def mni_atlas() -> Atlas:
  """The priors on the template's own 1 mm grid (197×233×189 voxels): from the disk cache, else
  derived (about 5 s) and cached; a cache that cannot be read or written is only skipped."""
  import zipfile

  from msjax import files
  path = _cache_path()
  if path:
    try:
      with np.load(path) as z:
        return Atlas(**{f.name: z[f.name] for f in dataclasses.fields(Atlas)})
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
      pass
  atlas = _derive_mni_atlas()
  if path:
    try:
      with files.atomic(path) as tmp:
        with open(tmp, "wb") as f:
          np.savez(f, **{f_.name: getattr(atlas, f_.name) for f_ in dataclasses.fields(Atlas)})
    except (OSError, files.InvalidInputError):
      pass
  return atlas


def _derive_mni_atlas() -> Atlas:
  """The priors on the template's own 1 mm grid, derived from nilearn's templates."""
  t1, affine = load_template("t1")
  gm, wm = load_template("gm")[0], load_template("wm")[0]
  brain = t1 > 0.2  # nilearn.datasets.load_mni152_brain_mask's rule
  csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
  x, y, z = _mni_coordinates(gm.shape, affine)

  components, _ = ndimage.label(csf >= 0.5)
  inverse = np.linalg.inv(affine)
  seeds = {int(components[tuple(np.round(inverse @ [*s, 1.0])[:3].astype(int))])
           for s in VENTRICLE_SEEDS_MM}
  seeds.discard(0)
  ventricles = np.isin(components, sorted(seeds))
  ventricles &= ~((np.abs(x) < 4) & (y < 0) & (z < 12))  # the third ventricle

  grey = gm >= 0.5
  central = (np.abs(x) < 33) & (y > -36) & (y < 22) & (z > -12) & (z < 30)
  # distance to CSF outside the ventricles (sulci, cisterns) or to the outside of the brain,
  # computed on the central box with a margin wider than the 5 mm it is compared with
  outer = ~brain | ((csf >= 0.5) & ~ndimage.binary_dilation(ventricles, iterations=2))
  box = tuple(slice(max(int(a.min()) - 8, 0), int(a.max()) + 9) for a in np.nonzero(central))
  from_outer = np.zeros(gm.shape, np.float32)
  from_outer[box] = ndimage.distance_transform_edt(~outer[box])
  deep_gm = grey & central & (from_outer > 5)
  infra = infratentorial_grid(gm.shape, affine)
  cortex = grey & ~deep_gm & ~infra
  return Atlas(affine=affine, t1=t1, gm=gm, wm=wm, csf=csf, brain=brain, ventricles=ventricles,
               deep_gm=deep_gm, cortex=cortex, infratentorial=infra)


def infratentorial_grid(shape, affine: np.ndarray) -> np.ndarray:
  """`infratentorial_mni` for every voxel of a grid whose axes are those of MNI (diagonal affine,
  as the template's): the tentorium's height once per (x, y) column."""
  x, y, z = _mni_coordinates(shape, affine)
  xx, yy = np.broadcast_arrays(x[:, :, 0], y[:, :, 0])
  zt = tentorium_z(xx.ravel(), yy.ravel()).reshape(xx.shape)[..., None]
  ax = np.abs(x)
  cerebellum = (z <= zt) & (y <= np.where(ax >= 28, -40.0, -34.0))
  midbrain = (ax <= 14) & (y >= -42) & (y <= -12) & (z <= -8) & (z > -20)
  pons_medulla = (ax <= 16) & (y >= -45) & (y <= -10) & (z <= -20)
  return cerebellum | midbrain | pons_medulla


def world_to_mni_affine(to_mni, affine: np.ndarray, shape, tol_mm: float = 0.5) -> np.ndarray:
  """The 4x4 map from the exam's world mm to MNI mm. to_mni: None (the exam's world is MNI: an
  exam on the MNI grid), a 4x4 matrix, or a function (N, 3) world mm -> (N, 3) MNI mm such as
  msjax.preprocess.native.native_to_mni; a function is fitted on 27 points spanning the grid
  and must be affine there (msjax's MNI registration is) within tol_mm."""
  if to_mni is None:
    return np.eye(4)
  if not callable(to_mni):
    m = np.asarray(to_mni, float)
    if m.shape != (4, 4):
      raise ValueError(f"to_mni: a 4x4 matrix or a function, got shape {m.shape}")
    return m
  corners = np.array([[i, j, k] for i in (0, 0.5, 1) for j in (0, 0.5, 1) for k in (0, 0.5, 1)])
  voxels = corners * (np.array(shape, float) - 1)
  world = np.c_[voxels, np.ones(len(voxels))] @ np.asarray(affine, float)[:3].T
  mni = np.asarray(to_mni(world), float)
  design = np.c_[world, np.ones(len(world))]
  coef, *_ = np.linalg.lstsq(design, mni, rcond=None)
  residual = np.abs(design @ coef - mni).max()
  if residual > tol_mm:
    raise ValueError(f"to_mni is not affine over the exam's grid (residual {residual:.2f} mm)")
  out = np.eye(4)
  out[:3] = coef.T
  return out


def sample(volume: np.ndarray, source_affine: np.ndarray, shape, affine: np.ndarray,
           world_to_mni: np.ndarray, order: int = 1) -> np.ndarray:
  """A volume on the grid `source_affine` (voxel -> MNI mm) resampled onto the exam grid
  (`shape`, `affine`: voxel -> world mm), 0 outside the source."""
  m = np.linalg.inv(source_affine) @ world_to_mni @ np.asarray(affine, float)
  matrix = m[:3, :3]
  if np.abs(matrix - np.diag(np.diag(matrix))).max() < 1e-9:  # axes aligned: one axis at a time
    return _separable(volume, np.diag(matrix), m[:3, 3], tuple(shape), order)
  return ndimage.affine_transform(volume, matrix, m[:3, 3], output_shape=tuple(shape),
                                  order=order, mode="constant", cval=0.0, prefilter=False)


@functools.lru_cache(maxsize=1)
def _template_brain_stats() -> dict:
  a = mni_atlas()
  return _brain_stats(((a.gm + a.wm) >= 0.5) | a.ventricles, a.affine)


def _brain_stats(brain: np.ndarray, voxel_to_mni: np.ndarray) -> dict:
  v = np.argwhere(brain)[::3]  # every 3rd voxel is plenty for means and spreads
  p = np.c_[v, np.ones(len(v))] @ np.asarray(voxel_to_mni, float)[:3].T
  return {"centroid": p.mean(0), "std": p.std(0), "top": float(np.percentile(p[:, 2], 99.9))}


def fit_brain(brain: np.ndarray, voxel_to_mni: np.ndarray, fov: np.ndarray | None = None,
              template_brain: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
  """A similarity map (4x4, MNI mm -> MNI mm) that puts the exam's brain mask where the
  template's brain (GM + WM >= 0.5, ventricles) is: one scale from the left-right and
  front-back spreads, left-right and front-back shifts from the centroids, the up-down shift
  from the top of the brain (the bottom is where fields of view and skull strippers cut the
  brainstem). Exams registered affinely to the template (msjax's preprocessing) come out within
  a few % and mm of the identity; lesjak_mni's, rigidly registered, need a scale of 1.15-1.23.
  fov: the voxels of the exam's grid that its acquisition covered (None: all); the template's
  brain is then taken within them, as the exam's is, so that a brain cut by the field of view
  (its top, say) is compared with the same part of the template's; template_brain: the
  template's brain on the exam's grid where the caller has it (else it is sampled here).
  Also returns {"scale", "offset_mm"}: the scale and the distance between the centroids."""
  mine = _brain_stats(brain, voxel_to_mni)
  if fov is None or np.all(fov):
    ref = _template_brain_stats()
  else:
    if template_brain is None:
      t = on_grid(brain.shape, voxel_to_mni, None, fields=("gm", "wm", "ventricles"))
      template_brain = ((t.gm + t.wm) >= 0.5) | t.ventricles
    ref = _brain_stats(template_brain & fov, voxel_to_mni)
  scale = float(np.mean(ref["std"][:2] / np.maximum(mine["std"][:2], 1e-6)))
  a = np.eye(4)
  a[:3, :3] *= scale
  a[:2, 3] = ref["centroid"][:2] - scale * mine["centroid"][:2]
  a[2, 3] = ref["top"] - scale * mine["top"]
  offset = float(np.linalg.norm(mine["centroid"] - ref["centroid"]))
  return a, {"scale": round(scale, 4), "offset_mm": round(offset, 2)}


def spacing(affine: np.ndarray) -> np.ndarray:
  return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def _separable(volume, scales, offsets, shape, order: int) -> np.ndarray:
  """Output voxel i of each axis reads source coordinate scales * i + offsets, linearly
  (order 1) or nearest (order 0), 0 outside the source."""
  out = np.asarray(volume)
  for axis in range(3):
    n = out.shape[axis]
    c = scales[axis] * np.arange(shape[axis], dtype=np.float64) + offsets[axis]
    bshape = [1, 1, 1]
    bshape[axis] = -1
    if order == 0:
      idx = np.round(c).astype(np.int64)
      valid = (idx >= 0) & (idx < n)
      out = np.take(out, np.clip(idx, 0, n - 1), axis=axis)
    else:
      valid = (c > -0.5) & (c < n - 0.5)
      c = np.clip(c, 0, n - 1)
      lo = np.floor(c).astype(np.int64)
      hi = np.minimum(lo + 1, n - 1)
      w = (c - lo).astype(np.float32).reshape(bshape)
      out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    out = out * valid.reshape(bshape).astype(out.dtype)
  return out


PROBABILITIES = ("t1", "gm", "wm", "csf")
REGIONS = ("brain", "ventricles", "deep_gm", "cortex", "infratentorial")


def on_grid(shape, affine: np.ndarray, to_mni=None, fields=PROBABILITIES + REGIONS) -> Atlas:
  """The atlas on an exam grid (`shape` voxels, RAS `affine` voxel -> world mm) whose world
  maps to MNI mm by `to_mni` (see world_to_mni_affine). Probabilities linear, regions nearest
  (all of them in one pass, as the bits of one volume); fields not asked for are None."""
  src = mni_atlas()
  w2m = world_to_mni_affine(to_mni, affine, shape)
  out = dict.fromkeys(PROBABILITIES + REGIONS)
  for f in fields:
    if f in PROBABILITIES:
      out[f] = sample(getattr(src, f), src.affine, shape, affine, w2m)
  regions = [f for f in REGIONS if f in fields]
  if regions:
    packed = _packed_regions(tuple(regions))
    bits = sample(packed, src.affine, shape, affine, w2m, order=0)
    for k, f in enumerate(regions):
      out[f] = (bits & np.uint8(1 << k)) > 0
  return Atlas(affine=w2m @ np.asarray(affine, float), **out)


@functools.lru_cache(maxsize=4)
def _packed_regions(regions: tuple[str, ...]) -> np.ndarray:
  """The template's regions as the bits of one uint8 volume (bit k: regions[k])."""
  src = mni_atlas()
  packed = np.zeros(src.gm.shape, np.uint8)
  for k, f in enumerate(regions):
    packed |= getattr(src, f).astype(np.uint8) << k
  return packed
