"""Is this exam fit to segment? A per-exam verdict, `ok` / `check` / `fail`, with its reasons,
computed from the exam on the model grid (the 128³ MNI grid, or the MNI152 1 mm box) rather than
looked at: each measure below is compared with two thresholds (`config()`), the worst result is
the verdict, and every measure past its `ok` threshold is a reason, with its value.

  registration   how well the exam sits on the MNI template: the distance between the centres
                 of the exam's brain mask and of the template's brain, the brain's size against
                 the template's (msjax.report.atlas.fit_brain), and, with the template scaled and
                 shifted onto the brain mask, the overlap (Dice) of the brain's outline with the
                 template brain's, which atrophy and lesions leave alone, and the correlation
                 (both smoothed by 3 mm) of the FLAIR with the best linear combination of the
                 template's GM, WM and CSF probabilities (any contrast fits; a rotated, flipped
                 or slipped brain does not) and of the T1 with the MNI152 T1 when there is one.
                 Large ventricles and heavy lesion loads lower the correlations too: with the
                 outline fitting, they ask for a look (check) and never fail an exam alone;
  brain volume   the brain mask's volume in the exam's own space (through the registration's
                 scale; an exam on the MNI grid without it: its MNI-space volume);
  resolution     the raw FLAIR's slice thickness and in-plane voxel size against what the model
                 saw (3D 1 mm exams and 2D clinical ones with 3-4 mm slices);
  intensities    the exam's Nyúl landmarks before standardisation (from the 30th percentile
                 up: below it lies CSF's share of the mask, which atrophy moves), scaled to
                 [0, 100], against the model bundle's: the largest gap (a very different
                 histogram, e.g. a T2 given as FLAIR, is stretched into place and looks nothing
                 like what the model saw);
  FLAIR          missing: the model, the locations and this QC all rely on it;
  image structure  each sequence against noise: the correlation of its voxels with their
                 neighbours 2 mm away (the least over the three axes) inside the brain, away from
                 its edge. An MR image of a brain has structure at that scale (0.33-0.85 on the
                 real Lesjak exams); a sequence that is noise (a corrupted series, a phase map or a
                 wrong file under the sequence's name) has none (0.00 for Gaussian noise given as
                 patient01 study 2's FLAIR, which the tissue-fit correlation, ruled by the brain's
                 outline, let pass at r 0.79). Lesions and atrophy add structure; they never lower
                 it;
  alignment      each sequence's tissue boundaries against FLAIR's: the correlation of their
                 edges (gradient magnitude, smoothed 1.5 mm) inside the brain, away from its
                 edge. Whatever the contrasts, one exam's sequences share their boundaries
                 (0.52-0.71 on the real Lesjak exams); a sequence of another patient registered
                 onto the FLAIR by mutual information does not (0.25-0.27), and QC let it pass;
  contrast       whether each sequence has its own contrast, from its medians in the template's
                 white matter, grey matter and ventricles (moved onto the brain as above),
                 scaled by the brain's interquartile range: FLAIR's grey matter brighter than
                 its white and its CSF dark, T1W's (and T1WKS's) white matter brighter than its
                 grey, T2W's CSF bright. A sequence under the wrong name (a T1W given as FLAIR,
                 a T2W as FLAIR, FLAIR as T1W), which the fit and the landmarks let through with
                 a `check`, reverses an order that lesions and atrophy only narrow;
  field of view  the share of the template's brain (scaled and shifted onto the brain mask, so
                 a small head is not a small field of view) that the mask covers, and the
                 share of the brain mask's voxels on the grid's outer faces (a brain cut by the
                 field of view). With the raw FLAIR's field of view known (`fov`), the
                 registration measures above are taken within it: a brain whose top was not
                 acquired, registered within 1.1 mm of the full exam's registration, had four
                 registration failures reported beside the true reason.

Defaults measured on the real Lesjak exams (the two of lesjak_mni and the four raw exams of
lesjak_longitudinal_raw after msjax's preprocessing, all `ok`) and on damaged copies of them
(each flagged for its own reason): the comment under `config()` lists what was measured.
"""
from __future__ import annotations

import numpy as np
from ml_collections import config_dict
from scipy import ndimage

from msjax.preprocess import nyul

OK, CHECK, FAIL = "ok", "check", "fail"
ORDER = {OK: 0, CHECK: 1, FAIL: 2}


def config() -> config_dict.ConfigDict:
  """Thresholds: (check, fail) pairs, or (ok low, ok high, fail low, fail high) ranges. A value
  past `check` is a reason to look at the exam, past `fail` a reason not to use its result.
  Each sits between the real exams and the damaged copies (the comment below)."""
  c = config_dict.ConfigDict()
  c.offset_mm = (6.0, 10.0)           # max distance of the brain's centroid from the template's
  c.scale = (0.80, 1.30, 0.70, 1.50)  # brain spread / template's (1.14 in lesjak_mni: rigid)
  c.overlap = (0.89, 0.80)            # min Dice of the brain mask with the fitted template brain
  c.flair_fit_r = (0.60, 0.45)        # min correlation of the FLAIR with the tissue-prior fit
  c.t1_ncc = (0.65, 0.50)             # min correlation of the T1 with the MNI152 T1
  c.brain_ml = (800.0, 1900.0, 500.0, 2400.0)  # brain volume, mL, the exam's own (see measure)
  c.slice_mm = (5.0, 7.0)             # max slice thickness (largest voxel edge of the raw FLAIR)
  c.inplane_mm = (1.8, 3.0)           # max in-plane voxel edge (the model grid's is 1.4-1.7)
  c.landmark_gap = (25.0, 35.0)       # max |landmark - bundle's| on the [0, 100] Nyúl scale
  c.structure_r = (0.20, 0.10)        # min neighbour correlation (2 mm) of every sequence
  c.aligned_r = (0.40, 0.30)          # min edge correlation of every sequence with FLAIR
  # contrast, (tissue - white matter) / the brain's IQR: FLAIR grey matter (min), FLAIR
  # ventricles (max), T1W / T1WKS grey matter (max), T2W ventricles (min)
  c.flair_gm_wm = (-0.15, -0.30)
  c.flair_csf_wm = (1.0, 2.0)
  c.t1_gm_wm = (-0.20, -0.10)
  c.t2_csf_wm = (0.20, -0.20)
  c.coverage = (0.85, 0.70)           # min share of the (fitted) template brain in the mask
  c.border = (0.002, 0.008)           # max share of brain voxels on the grid's outer faces
  return c


# What the defaults were set from (measure_qc of studies/report_reference.py, in the repository,
# not the package; standard landmarks: fitted on the two lesjak_mni exams, as a bundle trained on
# them holds; raw exams: msjax preprocessing,
# images before Nyúl standardisation). Real exams, min-max over the 6: offset 0.2-3.0 mm, scale
# 0.98-1.14, FLAIR fit r 0.66-0.83, T1 r 0.73-0.84, brain 1123-1461 mL (lesjak_mni 1123/1135 in
# MNI space, rigidly registered; raw 1310-1461 in their own space), slices 1-4 mm, in-plane
# 0.72-1.0 mm, landmark gap 6.6-20.0 (the raw exams' T1W against lesjak_mni's: 15.6-20.0),
# coverage 0.91-0.97, border 0. Damaged copies (studies/qc_damage.py), same 6 exams:
#   shift 15 mm       offset 15.1-17.5 mm
#   rotation 20 deg   FLAIR fit r 0.29-0.46, T1 r 0.38-0.51 (lesjak_mni: overlap 0.855-0.869)
#   skull (+12 mm)    brain 2050-2371 mL (and landmark gap 67-70: zeros inside the mask)
#   8 mm slices       slice 8.0 mm;  3.5 mm in-plane: in-plane 3.5 mm
#   inverted contrast landmark gap 49.3-60.3
#   slab of 45 mm     coverage 0.29-0.31;  cut (45 mm lower): border 0.0097-0.0132, offset 38-41
# Image structure (the least neighbour correlation over the sequences, 2 mm, inside the brain 3 mm
# from its edge; 2026-12-07): raw exams after msjax's preprocessing 0.52-0.63 (their FLAIR; T1W
# 0.77-0.84, T2W 0.69-0.74), lesjak_mni FLAIR 0.33 / 0.38 (T1W 0.69, T2W 0.59-0.60); patient01
# study 2 with Gaussian noise as its FLAIR 0.00 (its other measures all ok: tissue fit r 0.79,
# landmark gap 4.4), the `noise` damage of studies/qc_damage.py alike.
# Alignment (each sequence's edges against FLAIR's, smoothed 1.5 mm, inside the brain 3 mm from
# its edge; 2026-12-07): raw exams after msjax's preprocessing 0.62-0.71 (ten copies of patient01
# study 2 re-stored, rescaled, reoriented, moved: 0.66-0.71), lesjak_mni 0.52-0.62, a 6 mm FLAIR
# 0.56-0.57; FLAIR of patient01 with T1W and T2W of patient12 (registered by mutual information,
# QC ok before) 0.25-0.27, a FLAIR whose affine shears 0.08-0.10, noise 0.02-0.04.
# Contrast ((tissue median - white matter median) / brain IQR; template WM > 0.9, GM > 0.7,
# ventricles > 0.5; 2026-12-07, /tmp probes on the 1 mm exams): FLAIR grey - white +0.11 to
# +0.70 on the real exams and their re-stored copies, +0.04 to +0.12 with 32-42 mL of lesion
# (another patient's lesion map, voxels drawn from the exam's own lesions) in lesjak_mni's; a T1W
# given as FLAIR -0.60. FLAIR ventricles - white -3.6 to +0.17 (lesjak_mni's rigidly registered
# brains highest), a T2W given as FLAIR +2.50. T1W grey - white -0.48 to -0.73 (T1WKS -0.37 /
# -0.47), FLAIR given as T1W 0.00. T2W ventricles - white +0.47 to +5.7 (lesjak_mni lowest).
# The overlap and the 30th-percentile landmarks (runs of msjax.report.qc on lesjak_mni's two
# exams): real 0.907 / 0.914; rotation 0.855 / 0.869 (its correlations 0.36-0.46 fail it); with
# a 49-53 mL lesion map of lesjak_lesion_maps transplanted (msjax.data.transplant) and with the
# ventricles grown 5 mm (+41-57 mL) and the outer 1.5 mm dark: every verdict ok or check,
# landmark gap 20-21, the inverted-contrast copies' gap 30-32 (check), the skull copies' 45.
def correlation(a: np.ndarray, b: np.ndarray) -> float:
  a = a - a.mean()
  b = b - b.mean()
  d = float(np.sqrt((a * a).sum() * (b * b).sum()))
  return float((a * b).sum() / d) if d > 0 else 0.0


def tissue_fit_r(image: np.ndarray, priors: list[np.ndarray], where: np.ndarray) -> float:
  """Correlation of the image with its least-squares fit by the priors (and a constant) on the
  voxels `where`: 1 when the exam's tissues lie where the template's do, whatever the contrast."""
  y = image[where].astype(np.float64)
  x = np.stack([p[where] for p in priors] + [np.ones(len(y))], -1).astype(np.float64)
  coef, *_ = np.linalg.lstsq(x, y, rcond=None)
  return correlation(x @ coef, y)


def field_of_view(shape, affine: np.ndarray, world_to_mni: np.ndarray, native_shape,
                  native_affine: np.ndarray) -> np.ndarray:
  """The voxels of a grid (`shape`, `affine`: voxel -> MNI mm) whose centres lie inside a raw
  image's voxel grid (`native_shape`, `native_affine`: voxel -> world mm), the exam's world
  mapping to MNI mm by `world_to_mni`: what the acquisition covered."""
  vox_to_native = np.linalg.solve(np.asarray(native_affine, float),
                                  np.linalg.solve(np.asarray(world_to_mni, float),
                                                  np.asarray(affine, float)))
  idx = np.indices(tuple(shape), dtype=np.float32).reshape(3, -1)
  native = vox_to_native[:3, :3].astype(np.float32) @ idx + vox_to_native[:3, 3:].astype(
      np.float32)
  inside = np.ones(idx.shape[1], bool)
  for axis, n in enumerate(tuple(native_shape)[:3]):
    inside &= (native[axis] > -0.5) & (native[axis] < n - 0.5)
  return inside.reshape(tuple(shape))


# which tissue difference says a sequence is what its name says: (key, tissue, config field,
# below): FLAIR's grey matter over its white, FLAIR's CSF under it, and so on (`contrast` above)
CONTRAST_RULES = {
    "FLAIR": (("gm_wm", "grey matter", "flair_gm_wm", True),
              ("csf_wm", "CSF (ventricles)", "flair_csf_wm", False)),
    "T1W": (("gm_wm", "grey matter", "t1_gm_wm", False),),
    "T1WKS": (("gm_wm", "grey matter", "t1_gm_wm", False),),
    "T2W": (("csf_wm", "CSF (ventricles)", "t2_csf_wm", True),),
}
MIN_TISSUE_VOXELS = 200


def tissue_contrasts(images: dict, brain: np.ndarray, fitted) -> dict:
  """{modality: {"gm_wm": ..., "csf_wm": ...}}: the median of each sequence in the template's grey
  matter (p > 0.7) and ventricles (p > 0.5) less its median in white matter (p > 0.9), inside
  the brain, over the brain's interquartile range. Medians: lesions and partial volume move
  them little. A sequence whose white-matter median is CSF's is left out (below)."""
  regions = {"wm": brain & (fitted.wm > 0.9), "gm": brain & (fitted.gm > 0.7),
             "csf": brain & (fitted.ventricles > 0.5)}
  if any(int(r.sum()) < MIN_TISSUE_VOXELS for r in regions.values()):
    return {}
  out = {}
  for mod, image in images.items():
    if mod not in CONTRAST_RULES:
      continue
    q25, q75 = np.percentile(image[brain], [25, 75])
    if q75 <= q25:
      continue
    wm, gm, csf = (float(np.median(image[regions[t]])) for t in ("wm", "gm", "csf"))
    # ventricles grown far into the white matter (22 mm in tests/report/test_qc.py's atrophic
    # exam) make the template's white matter CSF: its median then sits at CSF's, nearer to it
    # than grey matter's is, and says nothing of the contrast: such a sequence is not judged
    if abs(wm - csf) < 0.5 * abs(gm - csf):
      continue
    out[mod] = {"gm_wm": round((gm - wm) / float(q75 - q25), 3),
                "csf_wm": round((csf - wm) / float(q75 - q25), 3)}
  return out


STRUCTURE_LAG_MM = 2.0    # the neighbour distance of `structure_r`
STRUCTURE_INSET_MM = 3.0  # how far inside the brain mask's edge it is measured


def structure_r(image: np.ndarray, inside: np.ndarray, spacing) -> float:
  """The least, over the three axes, of the correlation between the voxels `inside` and their
  neighbours STRUCTURE_LAG_MM along that axis (also inside): ~0 for noise, whatever its level."""
  image = np.asarray(image, np.float32)
  out = []
  for axis in range(3):
    k = max(1, int(round(STRUCTURE_LAG_MM / float(spacing[axis]))))
    n = image.shape[axis]
    if n <= k:
      continue
    a, b = np.take(image, range(n - k), axis=axis), np.take(image, range(k, n), axis=axis)
    both = np.take(inside, range(n - k), axis=axis) & np.take(inside, range(k, n), axis=axis)
    if both.sum() > 100:
      out.append(correlation(a[both].astype(np.float64), b[both].astype(np.float64)))
  return min(out) if out else float("nan")


EDGE_SIGMA_MM = 1.5  # the smoothing before `edges`: a 2D stack's blur apart, tissue boundaries


def edges(image: np.ndarray, spacing) -> np.ndarray:
  """Gradient magnitude (per mm) of the image smoothed by EDGE_SIGMA_MM."""
  spacing = np.asarray(spacing, float)
  smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), EDGE_SIGMA_MM / spacing)
  return np.sqrt(sum((g / d) ** 2 for g, d in zip(np.gradient(smooth), spacing)))


def aligned_r(image: np.ndarray, flair_edges: np.ndarray, inside: np.ndarray, spacing) -> float:
  """Correlation, over the voxels `inside`, of a sequence's edges with FLAIR's: whatever the
  contrasts, the tissue boundaries of two sequences of one exam lie in the same places."""
  return correlation(edges(image, spacing)[inside].astype(np.float64),
                     flair_edges[inside].astype(np.float64))


def landmark_gap(values: np.ndarray, standard) -> float:
  """Largest gap between an exam's Nyúl landmarks (of brain intensities `values`, or the 11
  landmarks themselves), each scaled linearly to [0, 100] by its ends, and the standard ones."""
  values = np.asarray(values, float)
  lm = values if values.shape == (len(nyul.PERCENTILES),) else nyul.landmarks(values)
  # the landmarks from the 30th percentile up: the lower ones are CSF's share of the brain
  # mask, which atrophy (wide sulci, large ventricles) moves without the contrast being wrong
  first = int(np.searchsorted(nyul.PERCENTILES, TISSUE_PERCENTILE))
  lm = lm[first:]
  lo, hi = nyul.SCALE
  mine = lo + (lm - lm[0]) / max(lm[-1] - lm[0], 1e-6) * (hi - lo)
  std = np.asarray(standard, float)[first:]
  std = lo + (std - std[0]) / max(std[-1] - std[0], 1e-6) * (hi - lo)
  return float(np.abs(mine - std).max())


TISSUE_PERCENTILE = 30


def _grade(value, check, fail, below: bool) -> str:
  if value is None:
    return OK
  if below:
    return FAIL if value < fail else CHECK if value < check else OK
  return FAIL if value > fail else CHECK if value > check else OK


def _range_grade(value, ok_lo, ok_hi, fail_lo, fail_hi) -> str:
  if value is None:
    return OK
  if value < fail_lo or value > fail_hi:
    return FAIL
  return CHECK if value < ok_lo or value > ok_hi else OK


def measure(images: dict[str, np.ndarray], brain: np.ndarray, affine: np.ndarray, *,
            native_spacing=None, world_to_mni=None, landmarks: dict | None = None,
            raw_landmarks: dict | None = None, fov: np.ndarray | None = None) -> dict:
  """The numbers behind the verdict. images: modality -> array on the model grid (canonical RAS,
  0 outside the brain); brain: the brain mask there; affine: the grid's voxel -> MNI mm;
  native_spacing: the raw FLAIR's voxel size (mm); world_to_mni: the 4x4 map from the raw exam's
  world to MNI mm (its determinant gives the exam's own brain volume); landmarks: the model
  bundle's Nyúl landmarks {modality: {"standard": [...]}}; raw_landmarks: the exam's own Nyúl
  landmarks before standardisation {modality: [11 values]} (default: computed from `images`,
  right when they were not standardised); fov: the grid's voxels inside the raw FLAIR's field of
  view (`field_of_view`; None: all), within which the registration is judged."""
  from msjax.report import atlas as atlas_lib
  brain = np.asarray(brain) > 0
  affine = np.asarray(affine, float)
  m: dict = {"sequences": sorted(images), "flair": "FLAIR" in images}
  if not brain.any():
    brain = np.zeros(brain.shape, bool)
  # the registration is judged on what was acquired: a brain cut by the field of view against
  # the template's brain cut alike (its own measure, coverage, says how much is missing)
  fov = np.ones(brain.shape, bool) if fov is None else np.asarray(fov, bool)
  # the template where registration put it (tissue volume, coverage; with a field of view, the
  # brain the fit below compares within it), and moved onto the exam's brain by the similarity
  # (correlations: how well the brain's inside matches, scale apart)
  cut = not fov.all()
  prior = atlas_lib.on_grid(brain.shape, affine, None,
                            fields=("gm", "wm") + (("ventricles",) if cut else ()))
  tissue = (prior.gm + prior.wm) >= 0.5  # the template's brain tissue, without its CSF
  similarity, fit = (atlas_lib.fit_brain(brain, affine, fov, tissue | prior.ventricles if cut
                                         else None) if brain.any() else (np.eye(4), {}))
  m["registration_offset_mm"] = fit.get("offset_mm")
  m["registration_scale"] = fit.get("scale")
  fitted = atlas_lib.on_grid(brain.shape, affine, similarity,
                             fields=("t1", "gm", "wm", "csf", "ventricles"))
  where = (brain | ((fitted.gm + fitted.wm) >= 0.5)) & fov
  # the brain's shape against the template brain's, moved onto it by the similarity: atrophy,
  # large ventricles and lesions leave a skull-stripped brain's outline where it was (its size
  # is taken out by the similarity's scale); a rotated, flipped or slipped brain does not
  template_brain = (((fitted.gm + fitted.wm) >= 0.5) | fitted.ventricles) & fov
  if brain.any():
    m["overlap"] = round(2.0 * float((brain & template_brain).sum()) /
                         max(int(brain.sum() + template_brain.sum()), 1), 4)
  sigma = 3.0 / atlas_lib.spacing(affine)  # 3 mm: registration, not cortical folding
  smooth = lambda v: ndimage.gaussian_filter(np.asarray(v, np.float32), sigma)  # noqa: E731
  voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
  if "FLAIR" in images and brain.any():
    m["flair_fit_r"] = round(tissue_fit_r(
        smooth(images["FLAIR"]), [smooth(fitted.gm), smooth(fitted.wm), smooth(fitted.csf)],
        where), 4)
  if "T1W" in images and brain.any():
    m["t1_ncc"] = round(correlation(smooth(images["T1W"])[where].astype(np.float64),
                                    smooth(fitted.t1)[where].astype(np.float64)), 4)
  template_ml = float(tissue.sum()) * voxel_ml
  m["brain_ml_mni"] = round(float(brain.sum()) * voxel_ml, 1)
  m["brain_ratio"] = round(m["brain_ml_mni"] / template_ml, 4)
  if world_to_mni is not None:
    scale = abs(float(np.linalg.det(np.asarray(world_to_mni, float)[:3, :3])))
    m["brain_ml_native"] = round(m["brain_ml_mni"] / scale, 1)
  # the exam's own brain volume: through its registration's scale when known; on an MNI grid
  # without it, the MNI-space volume stands for it (exact for a rigid registration, as
  # lesjak_mni's; an affine one to the template gives 1700-2000 mL whatever the head)
  m["brain_ml"] = m.get("brain_ml_native", m["brain_ml_mni"])
  if native_spacing is not None:
    s = sorted(float(v) for v in native_spacing)
    m["slice_mm"], m["inplane_mm"] = round(s[2], 3), round(s[1], 3)
  if landmarks:
    gaps = {}
    for mod, lm in landmarks.items():
      if raw_landmarks and mod in raw_landmarks:
        gaps[mod] = landmark_gap(raw_landmarks[mod], lm["standard"])
      elif mod in images and brain.any():
        gaps[mod] = landmark_gap(images[mod][brain], lm["standard"])
    if gaps:
      m["landmark_gaps"] = {k: round(v, 2) for k, v in gaps.items()}
      m["landmark_gap"] = round(max(gaps.values()), 2)
  if brain.any():
    inset = ndimage.distance_transform_edt(brain, sampling=atlas_lib.spacing(affine))
    inside = inset > STRUCTURE_INSET_MM
    if inside.sum() > 1000:
      m["structure_rs"] = {mod: round(structure_r(v, inside, atlas_lib.spacing(affine)), 4)
                           for mod, v in images.items()}
      m["structure_r"] = min(m["structure_rs"].values())
      others = [mod for mod in images if mod != "FLAIR"]
      if "FLAIR" in images and others:
        flair_edges = edges(images["FLAIR"], atlas_lib.spacing(affine))
        m["aligned_rs"] = {mod: round(aligned_r(images[mod], flair_edges, inside,
                                                atlas_lib.spacing(affine)), 4) for mod in others}
        m["aligned_r"] = min(m["aligned_rs"].values())
  contrasts = tissue_contrasts(images, brain, fitted)
  if contrasts:
    m["contrasts"] = contrasts
  m["coverage_mni"] = round(float((tissue & brain).sum()) / max(int(tissue.sum()), 1), 4)
  fitted_tissue = (fitted.gm + fitted.wm) >= 0.5
  m["coverage"] = round(float((fitted_tissue & brain).sum()) / max(int(fitted_tissue.sum()), 1),
                        4)
  faces = np.zeros(brain.shape, bool)
  for axis in range(3):
    for end in (0, -1):
      idx = [slice(None)] * 3
      idx[axis] = end
      faces[tuple(idx)] = True
  m["border"] = round(float((brain & faces).sum()) / max(int(brain.sum()), 1), 5)
  return m


def verdict(m: dict, cfg=None) -> dict:
  """{"verdict": ok|check|fail, "reasons": [...], "checks": {name: status}, "measures": m}."""
  cfg = cfg or config()
  checks, reasons = {}, []

  def add(name, status, text):
    checks[name] = status
    if status != OK:
      reasons.append(f"{status}: {text}")

  if not m.get("flair"):
    add("flair", FAIL, f"no FLAIR (sequences: {', '.join(m.get('sequences', [])) or 'none'})")
  else:
    add("flair", OK, "")
  registration = []
  if m.get("registration_offset_mm") is not None:
    registration.append((_grade(m["registration_offset_mm"], *cfg.offset_mm, below=False),
                         "MNI registration: the brain's centre is "
                         f"{m['registration_offset_mm']:.0f} mm from the template's "
                         f"(ok <= {cfg.offset_mm[0]:g} mm)"))
    registration.append((_range_grade(m["registration_scale"], *cfg.scale),
                         f"MNI registration: the brain is {m['registration_scale']:.2f} x the "
                         f"template's size (ok {cfg.scale[0]:g}-{cfg.scale[1]:g})"))
  shape_ok = True
  if m.get("overlap") is not None:
    status = _grade(m["overlap"], *cfg.overlap, below=True)
    shape_ok = status == OK
    registration.append((status, f"MNI registration: the brain's outline overlaps the template "
                                 f"brain's by Dice {m['overlap']:.2f} (ok >= {cfg.overlap[0]:g})"))
  # intensity correlations with the template drop with atrophy and heavy lesion loads, which a
  # correct registration of a sick brain has: with the brain's outline where the template's is,
  # they can ask for a look (check), not fail the exam
  for key, name, limits in (("flair_fit_r", "FLAIR vs template tissues", cfg.flair_fit_r),
                            ("t1_ncc", "T1 vs MNI152 T1", cfg.t1_ncc)):
    if key in m:
      status = _grade(m[key], *limits, below=True)
      note = ""
      if status == FAIL and shape_ok:
        status, note = CHECK, "; the outline fits, as with atrophy or a heavy lesion load"
      registration.append((status, f"MNI registration: {name} r = {m[key]:.2f} "
                                   f"(ok >= {limits[0]:g}){note}"))
  if registration:
    checks["registration"] = max((s for s, _ in registration), key=ORDER.get)
    reasons.extend(f"{s}: {t}" for s, t in registration if s != OK)
  if m.get("brain_ml") is not None:
    add("brain_volume", _range_grade(m["brain_ml"], *cfg.brain_ml),
        f"brain volume {m['brain_ml']:.0f} mL (ok {cfg.brain_ml[0]:g}-{cfg.brain_ml[1]:g} mL)")
  if "slice_mm" in m:
    add("slice_thickness", _grade(m["slice_mm"], *cfg.slice_mm, below=False),
        f"slices {m['slice_mm']:.1f} mm thick (the model saw up to {cfg.slice_mm[0]:g} mm)")
    add("inplane_resolution", _grade(m["inplane_mm"], *cfg.inplane_mm, below=False),
        f"in-plane voxels {m['inplane_mm']:.2f} mm (the model saw up to {cfg.inplane_mm[0]:g} mm)")
  if "landmark_gap" in m:
    worst = max(m["landmark_gaps"], key=m["landmark_gaps"].get)
    add("intensities", _grade(m["landmark_gap"], *cfg.landmark_gap, below=False),
        f"{worst} intensities far from the model's Nyúl landmarks (gap {m['landmark_gap']:.1f} "
        f"of 100, ok <= {cfg.landmark_gap[0]:g})")
  if "structure_r" in m:
    worst = min(m["structure_rs"], key=m["structure_rs"].get)
    add("image_structure", _grade(m["structure_r"], *cfg.structure_r, below=True),
        f"{worst} looks like noise: its voxels correlate with their neighbours "
        f"{STRUCTURE_LAG_MM:g} mm away at r = {m['structure_r']:.2f} (an MR image of a brain: "
        f"ok >= {cfg.structure_r[0]:g})")
  if "aligned_r" in m:
    worst = min(m["aligned_rs"], key=m["aligned_rs"].get)
    add("alignment", _grade(m["aligned_r"], *cfg.aligned_r, below=True),
        f"{worst}'s tissue boundaries do not lie on FLAIR's (edge correlation r = "
        f"{m['aligned_r']:.2f}, ok >= {cfg.aligned_r[0]:g}): a sequence of another exam, or a "
        "failed co-registration")
  if m.get("contrasts"):
    graded = []
    for mod, values in sorted(m["contrasts"].items()):
      for key, tissue, field, below in CONTRAST_RULES.get(mod, ()):
        check, fail = cfg[field]
        status = _grade(values[key], check, fail, below=below)
        graded.append((status, f"{mod} lacks a {mod}'s contrast: its {tissue} against its white "
                               f"matter {values[key]:+.2f} of the brain's IQR (ok "
                               f"{'>=' if below else '<='} {check:+g}): a sequence under the "
                               "wrong name?"))
    if graded:
      checks["contrast"] = max((s for s, _ in graded), key=ORDER.get)
      reasons.extend(f"{s}: {t}" for s, t in graded if s != OK)
  cov = _grade(m["coverage"], *cfg.coverage, below=True)
  bord = _grade(m["border"], *cfg.border, below=False)
  add("field_of_view", max(cov, bord, key=ORDER.get),
      f"field of view: the brain mask covers {100 * m['coverage']:.0f} % of the template brain "
      f"(ok >= {100 * cfg.coverage[0]:g} %), {100 * m['border']:.1f} % of it on the grid's "
      f"border (ok <= {100 * cfg.border[0]:g} %)")
  worst = max(checks.values(), key=ORDER.get) if checks else OK
  return {"verdict": worst, "reasons": reasons, "checks": checks, "measures": m}


def lift(v: dict, check: str, status: str, reason: str) -> dict:
  """The verdict `v` with one more reason: `check` raised to `status` (never lowered)."""
  checks = dict(v["checks"])
  checks[check] = max(checks.get(check, OK), status, key=ORDER.get)
  worst = max(checks.values(), key=ORDER.get)
  return {**v, "verdict": worst, "checks": checks, "reasons": v["reasons"] + [f"{status}: {reason}"]}


def exam_qc(images, brain, affine, cfg=None, **kwargs) -> dict:
  """measure + verdict in one call (see both)."""
  return verdict(measure(images, brain, affine, **kwargs), cfg)
