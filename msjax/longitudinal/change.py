"""The change decision on two co-registered visits, numpy only (arrays on one grid, any voxel order).

1. Units. Each visit's FLAIR (and T2) in robust units of the baseline brain: (x - median) / (1.4826
   MAD) inside the brain; the follow-up's brain histogram is first mapped onto the baseline's by
   the piecewise-linear map of their percentile landmarks (Nyúl et al. 2000, within one patient).
2. Change z. d = follow-up - baseline after a light in-plane Gaussian; z = (d - median d) /
   sqrt(σ² + Σ_axis (δ_axis · min(|∂I1/∂axis|, |∂I2/∂axis|))²): σ is the brain's robust spread of
   d, δ the residual misalignment in mm (0.5 in-plane, 1.5 through thick slices: slice positions
   and profiles differ between visits). An edge present at both visits explains a difference of
   δ·gradient by misalignment alone; a lesion that appears has no edge at the other visit, so
   min() leaves it its full weight.
3. Change mask, per sign (brighter at follow-up: new/enlarging; darker: shrinking/disappearing):
   voxels with z beyond `grow_z` that are lesion-like at the visit where they would be lesion
   (above the brain median there), not CSF at the other (above `not_csf`: a voxel dark at one visit
   is ventricle or sulcus moving, atrophy or misregistration, not a lesion) and deeper than
   `border_mm` in the brain; of their 6-connected clusters, those holding a seed are kept: a voxel
   with FLAIR z >= `seed_z`, or FLAIR and T2 z both >= `seed_conjunction_z` (two independent
   acquisitions agreeing, as Ganiler et al. 2014 combine PD and T2 subtraction to cut false
   positives; at CSF borders FLAIR and T2 differences have opposite signs, at lesions the same),
   or, when both visits were segmented by one network (the mode with a model), FLAIR z >=
   `seed_conjunction_z` where the network calls the voxel lesion at the visit where the change
   would be lesion and not at the other (`network_agrees`: in the visit's mask as segment
   makes it, by the bundle's threshold, lesion peak and smallest lesion): the same conjunction
   of two independent opinions, with the network in T2's place. The network only seeds: it adds
   no voxel to a cluster, and alone (FLAIR z under 3) it seeds nothing, since two independent
   segmentations differenced are the naive baseline (the shipped model's p >= 0.5 at one visit
   only, on the decision grid of the Lesjak pairs 01 / 12: 35 / 261 change regions, 32 / 244 of
   them false).
   Clusters smaller than one resolution element of the change map are dropped: the volume of one
   independent noise blob, FWHM of the Gaussian per smoothed axis (2.355 σ) and the voxel along
   the others (`resel_mm3`; 10.6 mm³ at σ 0.8 mm on 3 mm slices), as random-field cluster
   inference counts resels: a smaller cluster is one correlated noise peak, not a region; never
   under the MSSEG-2016 evaluator's 3 mm³.
4. Classes, per lesion region (a 6-connected component of the lesions of either visit that holds
   change). Lesion voxels of a visit: smoothed FLAIR >= `lesion_z`, plus the change voxels that
   are lesion at that visit (brighter at the follow-up: visit 2; darker: visit 1). With V1, V2
   the region's lesion volumes:
   - new: V1 < 3 mm³ (no lesion there at baseline by the evaluator's size rule), V2 >= 3 mm³;
   - disappearing: V2 < 3 mm³, V1 >= 3 mm³;
   - enlarging: V2 >= 1.5·V1 and V2 - V1 >= 3 voxels of the follow-up (the rule issue 22 asks
     for, from clinical reads; MSSEG-2 itself scored purely new lesions only, its evaluation
     page says, so it does not define enlarging);
   - shrinking: the same rule the other way; stable: change below those bounds.
   merged: several baseline lesions in one follow-up lesion; split: the reverse.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from msjax.data.lesions import MIN_LESION_MM3, SIX_CONNECTED, min_lesion_voxels
from msjax.preprocess import nyul

CLASSES = {1: "new", 2: "enlarging", 3: "stable", 4: "shrinking", 5: "disappearing"}
CODES = {name: code for code, name in CLASSES.items()}


@dataclasses.dataclass(frozen=True)
class Rule:
  smooth_mm: float = 0.8               # in-plane Gaussian σ before subtracting
  misalign_mm: tuple = (0.5, 1.5)      # residual misalignment (in-plane, through-slice)
  seed_z: float = 5.0                  # FLAIR alone
  seed_conjunction_z: float = 3.0      # FLAIR and T2, both
  grow_z: float = 2.0
  lesion_like: float = 0.0             # robust units at the lesion's visit
  not_csf: float = -1.5                # robust units at the other visit
  border_mm: float = 8.0
  lesion_z: float = 1.5                # lesion voxels of a visit, for the classes
  cortex_mm: float = 3.0               # ... never within this of the brain's surface (cortex)
  enlarge_ratio: float = 1.5
  enlarge_voxels: int = 3              # follow-up voxels


# Two visits of one patient, rigidly registered, correlate over the brain (FLAIR in robust units):
# the Lesjak pairs 0.91 (patient01) and 0.90 (patient12) without N4; patient01's first visit
# against patient12's second 0.34. Below this they are not compared.
SAME_PATIENT_MIN_R = 0.7


def visits_correlation(z1: np.ndarray, z2: np.ndarray, brain: np.ndarray) -> float:
  """Correlation of two registered visits' FLAIR over the brain: do they look like one patient
  (and did the registration between them work)?"""
  a, b = z1[brain].astype(np.float64), z2[brain].astype(np.float64)
  a, b = a - a.mean(), b - b.mean()
  d = float(np.sqrt((a * a).sum() * (b * b).sum()))
  return float((a * b).sum() / d) if d > 0 else 0.0


def robust_units(image: np.ndarray, brain: np.ndarray, like: np.ndarray | None = None):
  """(image - median) / (1.4826 MAD) of `like` (default: image) inside the brain."""
  ref = (image if like is None else like)[brain]
  med = float(np.median(ref))
  mad = 1.4826 * float(np.median(np.abs(ref - med)))
  return ((image - med) / max(mad, 1e-6)).astype(np.float32)


def match_intensities(moving: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> np.ndarray:
  """moving's brain percentile landmarks mapped piecewise-linearly onto reference's (linear beyond
  the end landmarks), as Nyúl standardisation maps an exam onto standard landmarks."""
  src = np.percentile(moving[brain], nyul.PERCENTILES)
  dst = np.percentile(reference[brain], nyul.PERCENTILES)
  src = np.maximum.accumulate(src + np.arange(len(src)) * 1e-6)  # strictly increasing
  out = np.interp(moving, src, dst)
  lo, hi = moving < src[0], moving > src[-1]
  out[lo] = dst[0] + (moving[lo] - src[0]) * (dst[1] - dst[0]) / (src[1] - src[0])
  out[hi] = dst[-1] + (moving[hi] - src[-1]) * (dst[-1] - dst[-2]) / (src[-1] - src[-2])
  return out.astype(np.float32)


def visit_units(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray) -> tuple:
  """Step 1 for one sequence: (baseline, follow-up) in robust units of the baseline's brain, the
  follow-up's histogram first matched onto the baseline's."""
  return (robust_units(baseline, brain),
          robust_units(match_intensities(followup, baseline, brain), brain, like=baseline))


def lesion_change_possible(lesion_visit: np.ndarray, other_visit: np.ndarray, depth: np.ndarray,
                           rule: Rule = Rule()) -> np.ndarray:
  """Step 3's gate: lesion-like at the visit where the change would be lesion, not CSF at the
  other, deeper than border_mm in the brain (depth: mm to the brain's edge)."""
  return ((lesion_visit > rule.lesion_like) & (other_visit > rule.not_csf)
          & (depth > rule.border_mm))


def _slice_axis(spacing) -> int | None:
  """The thick-slice axis of a 2D multi-slice grid (None when near isotropic)."""
  sp = np.asarray(spacing, float)
  return int(np.argmax(sp)) if sp.max() >= 1.5 * sp.min() else None


def _smooth(image, spacing, sigma_mm):
  sigma = [sigma_mm / s if s < 2 * sigma_mm else 0.0 for s in spacing]
  return ndimage.gaussian_filter(image, sigma) if sigma_mm > 0 else image


def resel_mm3(spacing, sigma_mm: float) -> float:
  """Volume of one resolution element of an image smoothed as `_smooth` does: per axis the
  Gaussian's FWHM (2.355 σ) where it smooths, else the voxel spacing."""
  fwhm = [max(2.3548 * sigma_mm, s) if (sigma_mm > 0 and s < 2 * sigma_mm) else s for s in spacing]
  return float(np.prod(fwhm))


def change_z(z1: np.ndarray, z2: np.ndarray, brain: np.ndarray, spacing, rule: Rule = Rule()
             ) -> np.ndarray:
  """Follow-up minus baseline over what noise and residual misalignment explain (step 2)."""
  s1, s2 = _smooth(z1, spacing, rule.smooth_mm), _smooth(z2, spacing, rule.smooth_mm)
  d = s2 - s1
  thick = _slice_axis(spacing)
  edge = np.zeros_like(d)
  for axis, step in enumerate(spacing):
    delta = rule.misalign_mm[1] if axis == thick else rule.misalign_mm[0]
    g = np.minimum(np.abs(np.gradient(s1, step, axis=axis)),
                   np.abs(np.gradient(s2, step, axis=axis)))
    edge += (delta * g) ** 2
  med = float(np.median(d[brain]))
  sigma = 1.4826 * float(np.median(np.abs(d[brain] - med)))
  return ((d - med) / np.sqrt(max(sigma, 1e-6) ** 2 + edge)).astype(np.float32)


def network_agrees(s1: np.ndarray, s2: np.ndarray, sign: int) -> np.ndarray:
  """Where the network's mask calls lesion at the visit where a change of this sign would be
  lesion (brighter at follow-up: visit 2; darker: visit 1) and not at the other. s1, s2: each
  visit's mask as segment makes it (threshold, smallest and faint lesions removed:
  lesions.mask_of), so a lesion segment drops cannot seed a change either."""
  at, other = (s2, s1) if sign > 0 else (s1, s2)
  return (at > 0) & ~(other > 0)


def detect(zf: np.ndarray, z1: np.ndarray, z2: np.ndarray, brain: np.ndarray, spacing,
           rule: Rule = Rule(), zt: np.ndarray | None = None,
           segmentations: tuple | None = None) -> np.ndarray:
  """Signed change mask (int8: +1 brighter at follow-up, -1 darker, 0 none), step 3. zf/zt: FLAIR
  and T2 change z-maps; z1, z2: the visits' FLAIR in robust units; segmentations: the network's
  lesion mask of each visit (s1, s2) on this grid, made by the bundle's rule (threshold, lesion
  peak, smallest lesion: lesions.mask_of), or None."""
  depth = ndimage.distance_transform_edt(brain, sampling=spacing)
  min_voxels = min_lesion_voxels(float(np.prod(spacing)),
                                 max(MIN_LESION_MM3, resel_mm3(spacing, rule.smooth_mm)))
  out = np.zeros(zf.shape, np.int8)
  for sign, lesion_visit, other_visit in ((1, z2, z1), (-1, z1, z2)):
    cand = ((sign * zf > rule.grow_z) & brain
            & lesion_change_possible(lesion_visit, other_visit, depth, rule))
    labels, n = ndimage.label(cand, structure=SIX_CONNECTED)
    if not n:
      continue
    seeds = sign * zf >= rule.seed_z
    if zt is not None:
      seeds |= np.minimum(sign * zf, sign * zt) >= rule.seed_conjunction_z
    if segmentations is not None:
      seeds |= ((sign * zf >= rule.seed_conjunction_z)
                & network_agrees(*segmentations, sign))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[seeds & cand])] = True
    keep &= np.bincount(labels.ravel(), minlength=n + 1) >= min_voxels
    keep[0] = False
    out[keep[labels]] = sign
  return out


def _count_lesions(mask, min_voxels):
  labels, n = ndimage.label(mask, structure=SIX_CONNECTED)
  return int((np.bincount(labels.ravel(), minlength=n + 1)[1:] >= min_voxels).sum())


def visit_lesions(z: np.ndarray, brain: np.ndarray, spacing, rule: Rule = Rule(),
                  segmentation: np.ndarray | None = None) -> np.ndarray:
  """A visit's lesion voxels, for the classes: smoothed FLAIR >= lesion_z robust units and
  brighter than cortex, never within cortex_mm of the brain's surface (a new lesion touching
  cortex must not join a region of the whole cortical ribbon and read as stable); with the
  network's mask of the visit, only what it also calls lesion (grown by a voxel for partial
  volume): FLAIR-bright tissue the network rejects is no lesion, and a network that calls too
  much cannot add what FLAIR does not show."""
  depth = ndimage.distance_transform_edt(brain, sampling=spacing)
  smooth = _smooth(z, spacing, rule.smooth_mm)
  # lesions are brighter than cortex on FLAIR: above the bright end (99th percentile) of the
  # brain's outer shell, which is cortex and sulcal CSF, as well as above lesion_z
  shell = brain & (depth <= rule.cortex_mm)
  bar = max(rule.lesion_z, float(np.percentile(smooth[shell], 99)) if shell.any() else 0.0)
  lesions = (smooth >= bar) & brain & (depth > rule.cortex_mm)
  # specks of noise above the bar are no lesion: components smaller than a lesion go
  labels, n = ndimage.label(lesions, structure=SIX_CONNECTED)
  big = np.bincount(labels.ravel(), minlength=n + 1) >= min_lesion_voxels(float(np.prod(spacing)))
  big[0] = False
  lesions = big[labels]
  if segmentation is not None:
    lesions &= ndimage.binary_dilation(segmentation > 0, SIX_CONNECTED)
  return lesions


def classify(change: np.ndarray, z1: np.ndarray, z2: np.ndarray, brain: np.ndarray, spacing,
             rule: Rule = Rule(), followup_voxel_mm3: float | None = None, zf=None,
             segmentations: tuple | None = None):
  """Step 4. Returns (class map uint8 on the change voxels, region labels int32, one row per
  changed lesion region: id, class, merged/split, volumes, centroid voxel, peak |z|).
  segmentations: each visit's lesion mask from the network on this grid (visit_lesions)."""
  voxel_mm3 = float(np.prod(spacing))
  present = min_lesion_voxels(voxel_mm3)
  enlarge = rule.enlarge_voxels * (followup_voxel_mm3 or voxel_mm3) / voxel_mm3
  pos, neg = change > 0, change < 0
  s1, s2 = segmentations or (None, None)
  lesion1 = visit_lesions(z1, brain, spacing, rule, s1)
  lesion2 = visit_lesions(z2, brain, spacing, rule, s2)
  at1, at2 = lesion1 | neg, lesion2 | pos
  regions, n = ndimage.label(at1 | at2, structure=SIX_CONNECTED)
  classes = np.zeros(change.shape, np.uint8)
  out_regions = np.zeros(change.shape, np.int32)
  rows = []
  for k, box in enumerate(ndimage.find_objects(regions), 1):
    r = regions[box] == k
    c = change[box] != 0
    if not (r & c).any():
      continue
    v1, v2 = int((at1[box] & r).sum()), int((at2[box] & r).sum())
    if v1 < present <= v2:
      name = "new"
    elif v2 < present <= v1:
      name = "disappearing"
    elif v2 >= rule.enlarge_ratio * v1 and v2 - v1 >= enlarge:
      name = "enlarging"
    elif v1 >= rule.enlarge_ratio * v2 and v1 - v2 >= enlarge:
      name = "shrinking"
    else:
      name = "stable"
    n1, n2 = _count_lesions(at1[box] & r, present), _count_lesions(at2[box] & r, present)
    lesion_id = len(rows) + 1
    classes[box][r & c] = CODES[name]
    out_regions[box][r] = lesion_id
    centre = np.array(ndimage.center_of_mass(r)) + [s.start for s in box]
    peak = float(np.abs(zf[box][r & c]).max()) if zf is not None else None
    rows.append({"lesion_id": lesion_id, "class": name,
                 "merged": n1 > 1 and n2 == 1, "split": n1 == 1 and n2 > 1,
                 "lesions_baseline": n1, "lesions_followup": n2,
                 "volume_baseline_ml": round(v1 * voxel_mm3 / 1000, 5),
                 "volume_followup_ml": round(v2 * voxel_mm3 / 1000, 5),
                 "appeared_ml": round(int((pos[box] & r).sum()) * voxel_mm3 / 1000, 5),
                 "vanished_ml": round(int((neg[box] & r).sum()) * voxel_mm3 / 1000, 5),
                 "peak_abs_z": None if peak is None else round(peak, 2),
                 "centroid_voxel": [round(float(v), 1) for v in centre]})
  return classes, out_regions, rows
