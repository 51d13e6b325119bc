"""Where each lesion is, in the classes the McDonald criteria count for dissemination in space.

Definitions followed (brain MRI; the spinal cord is outside it):
- Thompson AJ et al., "Diagnosis of multiple sclerosis: 2017 revisions of the McDonald criteria",
  Lancet Neurol 17:162-173, 2018: dissemination in space is shown by T2-hyperintense lesions in
  at least two of periventricular, cortical or juxtacortical, infratentorial (and spinal cord)
  regions; cortical and juxtacortical lesions count together.
- Filippi M et al. (MAGNIMS), "MRI criteria for the diagnosis of multiple sclerosis: MAGNIMS
  consensus guidelines", Lancet Neurol 15:292-303, 2016: periventricular = in contact with the
  lateral ventricles (no white matter between), corpus callosum lesions included;
  juxtacortical = adjacent to the cortex (no white matter between); cortical = in the cortex;
  infratentorial = brainstem, cerebellar peduncles, cerebellum.

The rule here, per lesion (a 6-connected component of the mask, numbered as
msjax.data.lesions numbers them), first match wins:
1. infratentorial   at least half of its voxels lie in the posterior fossa of MNI space
                    (msjax.report.atlas.infratentorial_mni: below a tentorium read off the MNI152
                    template, plus the brainstem below the thalami);
2. periventricular  a voxel within `ventricle_mm` (3 mm between voxel centres: up to two voxels
                    of partial volume between lesion and CSF at 1 mm; at least the grid's
                    largest voxel edge: "allowing the resolution of the scan") of the lateral
                    ventricles;
3. juxtacortical    (cortical or juxtacortical) a voxel within `cortex_mm` (2.5 mm: at most one
                    voxel between lesion and grey matter at 1 mm, "no white matter in between";
                    at least the largest voxel edge) of the cortex;
4. deep white matter otherwise (deep grey matter lesions land here too, as in LST-AI's
                    "subcortical" class).
A lesion touching both the ventricles and the cortex (a confluent one) is periventricular; the
table keeps both distances, so it can be counted otherwise.

Lateral ventricles. The template's ventricles (msjax.report.atlas: 17.8 mL) are carried onto the
exam through its MNI registration. With the exam's FLAIR on the lesion grid, the ventricles are
the exam's own: voxels darker than halfway between the exam's CSF and darker-tissue intensities
(a 3-class Gaussian mixture fitted with the template's tissue priors), within `ventricle_grow_mm`
(8 mm) of the template's ventricles, connected to them, lesions excluded, the third ventricle cut
off (MNI |x| < 4, y < 0, z < 12 mm). MS brains are often atrophied: the exam's ventricles can be
twice the template's, and a lesion on their wall is then still periventricular.

Cortex. The template's cortical grey matter (GM probability >= 0.5 without the basal ganglia,
thalami and posterior fossa) grown by `cortex_grow_mm` (2 mm), and, with the exam's images, only
where the exam's own intensities say grey matter (the mixture's most likely class), not within
4 mm of the ventricles, in pieces of at least 0.2 mL (grey-looking islands in the white matter,
vessels or partial volume, are not cortex), lesions excluded.

Registration. Exam points go to MNI mm through `to_mni`; given the exam's brain mask, a
similarity (one scale, three shifts; msjax.report.atlas.fit_brain) then puts the mask where the
template's brain is: exams on the MNI grid that were registered rigidly (lesjak_mni: brains at
0.87x the template's size) need it, msjax's affine registration leaves it within 2 %.

Limits. The registration to MNI is affine: cortex position is off by a few mm where the exam's
folding differs from the template's, so juxtacortical vs deep white matter is the least certain
call near the cortex (cortical lesions proper are rarely visible on FLAIR at all); the temporal
horns are not in the template's ventricles (lesions on them are not periventricular unless they
are within reach of the atrium); the tentorium is a smooth surface fitted by eye, good to ~5 mm
(occipital and cerebellar lesions right at it may fall either side); the rim of a lesion
(partial volume) can look like grey matter next to the cortex. The McDonald count itself (how
many lesions are needed where) is the neurologist's: this gives the classes and their counts.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from ml_collections import config_dict
from scipy import ndimage

from msjax.report import atlas as atlas_lib

CLASSES = ("periventricular", "juxtacortical", "infratentorial", "deep_white_matter")
DISPLAY = {"periventricular": "periventricular", "juxtacortical": "cortical/juxtacortical",
           "infratentorial": "infratentorial", "deep_white_matter": "deep white matter"}
COLOURS = {"periventricular": "#00b4ff", "juxtacortical": "#ff3cc8",
           "infratentorial": "#ffd400", "deep_white_matter": "#ff5a1e"}
SIX = ndimage.generate_binary_structure(3, 1)


def config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.ventricle_mm = 3.0       # periventricular: within this distance of the lateral ventricles
  c.cortex_mm = 2.5          # juxtacortical: within this distance of the cortex
                             # (both at least the grid's largest voxel edge)
  c.infratentorial_share = 0.5  # share of a lesion's voxels in the posterior fossa
  c.ventricle_grow_mm = 8.0  # how far the exam's ventricles may reach beyond the template's
  c.cortex_grow_mm = 2.0     # how far the exam's cortex may reach beyond the template's
  c.cortex_min_ml = 0.2      # grey-looking pieces smaller than this are not cortex
  c.cortex_from_ventricle_mm = 4.0  # nor is anything this close to the ventricles
  c.use_exam_images = True   # refine ventricles and cortex with the exam's FLAIR (and T1)
  c.fit_brain = True         # given a brain mask, scale and shift the template onto it
  return c


@dataclasses.dataclass
class Locations:
  """Per lesion (keyed by lesion_id): its class and the numbers behind it; the regions used, on
  the lesion grid (for figures)."""
  classes: dict[int, str]
  details: dict[int, dict]
  ventricles: np.ndarray
  cortex: np.ndarray
  infratentorial: np.ndarray
  method: str  # how the ventricles and cortex were found
  brain_fit: dict | None = None  # the similarity fitted to the brain mask: scale, offset_mm
  rule: str = ""  # the rule in words, with its distances

  def counts(self) -> dict[str, int]:
    return {c: sum(1 for v in self.classes.values() if v == c) for c in CLASSES}


def spacing_of(affine: np.ndarray) -> np.ndarray:
  return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def _grow(mask: np.ndarray, mm: float, spacing) -> np.ndarray:
  """Voxels within mm of the mask (Euclidean, in the grid's own voxel sizes). The distance map
  is computed on the mask's bounding box grown by mm only (nothing further can be within mm):
  the same voxels as on the whole grid, at a fraction of the time for a small mask."""
  if mm <= 0 or not mask.any():
    return mask.copy()
  spacing = np.broadcast_to(np.asarray(spacing, float), (mask.ndim,))
  nz = np.nonzero(mask)
  # clamped to the grid: no limit (mm = inf) is the whole grid, not an integer overflow
  reach = np.minimum(np.ceil(mm / spacing), mask.shape).astype(int) + 1
  box = tuple(slice(max(int(a.min()) - r, 0), min(int(a.max()) + r + 1, n))
              for a, r, n in zip(nz, reach, mask.shape))
  out = np.zeros(mask.shape, bool)
  out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= mm
  return out


def _lesion_minimum(values: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
  """The least value over each lesion's voxels (labels 1..n; inf for an empty label):
  ndimage.minimum's answer, reading the lesion voxels only (it sorts the whole grid)."""
  out = np.full(n + 1, np.inf)
  inside = lab > 0
  np.minimum.at(out, lab[inside].astype(np.intp), values[inside])
  return out[1:]


def tissue_model(channels: list[np.ndarray], where: np.ndarray, priors: np.ndarray,
                 iterations: int = 12, max_voxels: int = 300_000, seed: int = 0) -> dict:
  """A Gaussian mixture of CSF, GM and WM (diagonal covariance over the channels) fitted by EM
  on the voxels `where`, each voxel's class weights being the template's priors (K, N-voxel maps
  flattened in the order of `where`). Returns {"mean": (K, C), "std": (K, C)}."""
  x = np.stack([c[where] for c in channels], -1).astype(np.float64)
  p = np.stack([q[where] for q in priors], -1).astype(np.float64) + 1e-3
  if len(x) > max_voxels:  # a fixed random sample is plenty for 3 means and spreads
    pick = np.random.default_rng(seed).choice(len(x), max_voxels, replace=False)
    x, p = x[pick], p[pick]
  p /= p.sum(1, keepdims=True)
  resp, log_p, floor = p, np.log(p), 1e-6 * x.var(0) + 1e-12
  for _ in range(iterations):
    w = resp.sum(0)[:, None] + 1e-9
    mean = resp.T @ x / w
    square = (x[:, None, :] - mean[None]) ** 2  # (N, K, C), for the spreads and the likelihood
    var = np.einsum("nk,nkc->kc", resp, square) / w
    std = np.sqrt(np.maximum(var, floor))
    log_like = -0.5 * (square / std[None] ** 2).sum(-1) - np.log(std).sum(-1)[None]
    log_post = log_p + log_like
    log_post -= log_post.max(1, keepdims=True)
    resp = np.exp(log_post)
    resp /= resp.sum(1, keepdims=True)
  return {"mean": mean, "std": std}


def most_likely(channels: list[np.ndarray], model: dict, where: np.ndarray) -> np.ndarray:
  """Class index (0 CSF, 1 GM, 2 WM) of greatest likelihood per voxel of `where` (flat prior),
  -1 elsewhere."""
  x = np.stack([c[where] for c in channels], -1).astype(np.float64)
  mean, std = model["mean"], model["std"]
  ll = -0.5 * (((x[:, None, :] - mean[None]) / std[None]) ** 2).sum(-1) - np.log(std).sum(-1)
  out = np.full(where.shape, -1, np.int8)
  out[where] = ll.argmax(1)
  return out


def _mni_points(voxels: np.ndarray, voxel_to_mni: np.ndarray) -> np.ndarray:
  return np.c_[voxels, np.ones(len(voxels))] @ voxel_to_mni[:3].T


def _crop_box(masks, shape, margin: int = 3):
  """The bounding box (slices) of the union of masks, with a margin; the whole grid if empty."""
  union = np.zeros(shape, bool)
  for m in masks:
    union |= m
  if not union.any():
    return tuple(slice(0, n) for n in shape)
  nz = np.nonzero(union)
  return tuple(slice(max(int(a.min()) - margin, 0), min(int(a.max()) + margin + 1, n))
               for a, n in zip(nz, shape))


def classify(labels: np.ndarray, affine: np.ndarray, *, to_mni=None, flair=None, t1=None,
             brain=None, cfg=None) -> Locations:
  """Location class of every lesion of a label map (0 background, 1..n lesions).

  labels: on any grid; affine: that grid's voxel -> world mm (RAS); to_mni: world mm -> MNI mm
  (None when the grid is on MNI, a 4x4 matrix, or a function such as
  msjax.preprocess.native.native_to_mni); flair, t1: the exam's images on the same grid (optional;
  without FLAIR the template's ventricles and cortex are used as they are); brain: the exam's
  brain mask on that grid (default: the template's brain, and the FLAIR's non-zero voxels).
  The work is done on the bounding box of the brain and the lesions."""
  cfg = cfg or config()
  labels = np.asarray(labels)
  affine = np.asarray(affine, float)
  shape = labels.shape
  lesion_full = labels > 0
  w2m = atlas_lib.world_to_mni_affine(to_mni, affine, shape)
  fit = None
  if brain is not None and cfg.fit_brain and np.any(brain):
    similarity, fit = atlas_lib.fit_brain(np.asarray(brain, bool), w2m @ affine)
    w2m = similarity @ w2m
  if brain is None:
    brain_full = atlas_lib.on_grid(shape, affine, w2m, fields=("brain",)).brain
    if flair is not None:
      brain_full &= np.asarray(flair) != 0
  else:
    brain_full = np.asarray(brain, bool)
  box = _crop_box([brain_full, lesion_full], shape)
  offset = np.eye(4)
  offset[:3, 3] = [b.start for b in box]
  lab = labels[box]
  lesion = lesion_full[box]
  prior = atlas_lib.on_grid(lab.shape, affine @ offset, w2m, fields=(
      "gm", "wm", "csf", "ventricles", "deep_gm", "cortex", "infratentorial"))
  crop = (lambda image: None if image is None else np.asarray(image, np.float32)[box])
  ventricles, cortex, method = _ventricles_and_cortex(
      prior, lesion, brain_full[box] | lesion, crop(flair), crop(t1), affine, cfg)
  classes, details, rule = _classify_lesions(lab, lesion, prior, ventricles, cortex,
                                             spacing_of(affine), cfg)

  def full(m):
    out = np.zeros(shape, bool)
    out[box] = m
    return out
  return Locations(classes=classes, details=details, ventricles=full(ventricles),
                   cortex=full(cortex), infratentorial=full(prior.infratentorial), method=method,
                   brain_fit=fit, rule=rule)


def _ventricles_and_cortex(prior, lesion, brain, flair, t1, affine, cfg):
  """The lateral ventricles and the cortex on the cropped grid, and how they were found: the
  template's priors, refined by the exam's FLAIR (and T1) with a Gaussian mixture when given."""
  spacing = spacing_of(affine)
  ventricles, cortex = prior.ventricles & ~lesion, prior.cortex & ~lesion
  method = "template (MNI152 priors through the exam's MNI registration)"
  channels = [c for c in (flair, t1) if c is not None] if cfg.use_exam_images else []
  if not channels or flair is None:
    return ventricles, cortex, method
  where = brain & ~lesion
  model = tissue_model(channels, where, [prior.csf, prior.gm, prior.wm])
  f_mean = model["mean"][:, 0]  # FLAIR: the first channel
  dark = 0.5 * (f_mean[0] + min(f_mean[1], f_mean[2]))
  search = _grow(prior.ventricles, cfg.ventricle_grow_mm, spacing) & where
  at = np.argwhere(search)
  mni_xyz = _mni_points(at, prior.affine)
  third = (np.abs(mni_xyz[:, 0]) < 4) & (mni_xyz[:, 1] < 0) & (mni_xyz[:, 2] < 12)
  search[tuple(at[third].T)] = False
  candidates = search & (flair < dark)
  parts, _ = ndimage.label(candidates, structure=SIX)
  keep = np.unique(parts[candidates & prior.ventricles])
  keep = keep[keep > 0]
  if not len(keep):
    return ventricles, cortex, method
  ventricles = np.isin(parts, keep)
  region = (_grow(prior.cortex, cfg.cortex_grow_mm, spacing) & ~prior.deep_gm & where
            & ~_grow(ventricles, cfg.cortex_from_ventricle_mm, spacing))
  grey = region & (most_likely(channels, model, region) == 1)
  # the cortex is a sheet: grey-looking islands in the white matter (vessels, perivascular
  # spaces, partial volume) are not cortex
  parts, n = ndimage.label(grey, structure=np.ones((3, 3, 3), bool))
  sizes = np.bincount(parts.ravel(), minlength=n + 1)
  voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
  big = np.flatnonzero(sizes * voxel_ml >= cfg.cortex_min_ml)
  cortex = np.isin(parts, big[big > 0])
  method = ("the exam's FLAIR" + (" and T1" if t1 is not None else "") +
            " within the MNI152 priors (Gaussian mixture, template tissue priors)")
  return ventricles, cortex, method


def _classify_lesions(lab, lesion, prior, ventricles, cortex, spacing, cfg):
  """Each lesion's class by the McDonald 2017 / MAGNIMS 2016 order (infratentorial, then
  periventricular, then juxtacortical, else deep white matter): classes, details, the rule."""
  edge = float(spacing.max()) * 1.01
  near_ventricle, near_cortex = max(cfg.ventricle_mm, edge), max(cfg.cortex_mm, edge)
  rule = (f"infratentorial: at least {100 * cfg.infratentorial_share:.0f} % of its "
          "voxels below the tentorium (MNI152); else periventricular: within "
          f"{near_ventricle:.1f} mm of the lateral ventricles; else cortical/"
          f"juxtacortical: within {near_cortex:.1f} mm of the cortex; else deep "
          "white matter")
  n = int(lab.max()) if lab.size else 0
  classes, details = {}, {}
  if not n:
    return classes, details, rule
  to_ventricle = (ndimage.distance_transform_edt(~ventricles, sampling=spacing)
                  if ventricles.any() else np.full(lab.shape, np.inf))
  to_cortex = (ndimage.distance_transform_edt(~cortex, sampling=spacing)
               if cortex.any() else np.full(lab.shape, np.inf))
  d_vent = _lesion_minimum(to_ventricle, lab, n)
  d_cort = _lesion_minimum(to_cortex, lab, n)
  ids = lab[lesion]
  infra_voxel = atlas_lib.infratentorial_mni(_mni_points(np.argwhere(lesion), prior.affine))
  sizes = np.bincount(ids, minlength=n + 1)[1:]
  infra_share = np.bincount(ids, weights=infra_voxel, minlength=n + 1)[1:] / np.maximum(sizes, 1)
  for i in range(n):
    if sizes[i] == 0:
      continue
    if infra_share[i] >= cfg.infratentorial_share:
      c = "infratentorial"
    elif d_vent[i] <= near_ventricle:
      c = "periventricular"
    elif d_cort[i] <= near_cortex:
      c = "juxtacortical"
    else:
      c = "deep_white_matter"
    classes[i + 1] = c
    details[i + 1] = {"location": c, "ventricle_mm": _finite(d_vent[i]),
                      "cortex_mm": _finite(d_cort[i]),
                      "infratentorial_share": round(float(infra_share[i]), 3)}
  return classes, details, rule


def _finite(v) -> float | None:
  v = float(v)
  return round(v, 2) if np.isfinite(v) else None


def class_volumes(labels: np.ndarray, affine: np.ndarray, locations: Locations,
                  min_mm3: float = 0.0) -> dict[str, dict]:
  """Count and volume (mL) per class, lesions of more than min_mm3 only (0: every component;
  3.0: what the MSSEG-2016 evaluator counts)."""
  voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
  sizes = np.bincount(np.asarray(labels).ravel(), minlength=int(labels.max()) + 1)
  out = {c: {"count": 0, "volume_ml": 0.0} for c in CLASSES}
  for lid, c in locations.classes.items():
    if sizes[lid] * voxel_ml * 1000.0 <= min_mm3:
      continue
    out[c]["count"] += 1
    out[c]["volume_ml"] += sizes[lid] * voxel_ml
  for c in CLASSES:
    out[c]["volume_ml"] = round(out[c]["volume_ml"], 4)
  return out
