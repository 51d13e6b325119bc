"""Per-lesion and per-exam numbers of the report: the columns added to msjax's lesion table
(location, confidence), the counts and volumes per location class, and one cohort-table row.

Per-lesion confidence, from the maps msjax's prediction writes (probability: the weighted mean
of the overlapping patch predictions, test-time mirrors included; spread: their weighted
standard deviation):
  mean_probability, max_probability   over the lesion's voxels;
  mean_uncertainty                    mean spread over the lesion's voxels;
  confidence                          the share of the lesion's voxels whose probability stays
                                      at or above the threshold one spread lower (p - spread >=
                                      threshold): 1 when every voxel of the lesion is called
                                      lesion by a clear margin over what the patch predictions
                                      disagree on, near 0 for a lesion that exists only because
                                      some patches (or mirrors) said so.
"""
from __future__ import annotations

import numpy as np

from msjax.data import lesions as lesions_lib
from msjax.report import locations as locations_lib

EXTRA_COLUMNS = ("location", "ventricle_mm", "cortex_mm", "infratentorial_share",
                 "mean_uncertainty", "confidence", "fov_edge")
FOV_EDGE_MM = 5.0      # a lesion this close to the first or last acquired slice is flagged,
FOV_EDGE_SLICES = 3    # or this many slices, whichever reaches further (2D stacks)
FOV_EDGE_ML = 0.1      # flagged lesions of this much volume lift the QC verdict to check


def fov_edge_reach(affine: np.ndarray, edge_mm: float = FOV_EDGE_MM,
                   edge_slices: int = FOV_EDGE_SLICES) -> tuple[int, int, float]:
  """(slice axis, slices, mm) of the end zones: the acquisition's coarsest voxel axis, and
  edge_mm or edge_slices slices of it, whichever reaches further. In a 2D FLAIR stack the
  uninverted CSF and blood flowing in through an end of the stack keep their signal for the
  first few slices (the inflow artefact: bright spots in the posterior fossa at the bottom of
  the stack), so the zone is counted in slices there; a 1 mm 3D acquisition keeps 5 mm."""
  spacing = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))
  axis = int(np.argmax(spacing))
  reach = max(int(np.floor(edge_mm / spacing[axis])), int(edge_slices))
  return axis, reach, reach * float(spacing[axis])


def fov_edge_lesions(labels: np.ndarray, image: np.ndarray, affine: np.ndarray,
                     edge_mm: float = FOV_EDGE_MM,
                     edge_slices: int = FOV_EDGE_SLICES) -> dict[int, bool]:
  """{lesion_id: True when any of its voxels lies in the end zones (fov_edge_reach) of the
  first or last slice that holds data along the acquisition's slice axis}. The end slices of a
  2D acquisition carry partial-volume and inflow artefacts that look like lesion (e.g. the
  cerebellum at the bottom of a FLAIR stack)."""
  axis, reach, _ = fov_edge_reach(affine, edge_mm, edge_slices)
  other = tuple(a for a in range(3) if a != axis)
  acquired = np.flatnonzero((np.asarray(image) != 0).any(axis=other))
  n = labels.max()
  if not len(acquired) or n == 0:
    return {}
  near = np.zeros(labels.shape[axis], bool)
  near[acquired[0]:acquired[0] + reach + 1] = True
  near[max(acquired[-1] - reach, 0):acquired[-1] + 1] = True
  shape = [1, 1, 1]
  shape[axis] = -1
  hit = np.unique(labels[(labels > 0) & near.reshape(shape)])
  return {int(k): int(k) in set(hit.tolist()) for k in range(1, n + 1)}


def lesion_labels(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
  """Every 6-connected component of the mask, numbered as msjax.infer.outputs.lesion_table
  numbers the rows of its lesion table (lesion_id = label)."""
  voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3])))
  return lesions_lib.lesion_labels(mask, voxel_mm3, min_mm3=0.0)[0]


def confidence(labels: np.ndarray, probability: np.ndarray, spread: np.ndarray | None,
               threshold: float = 0.5) -> dict[int, dict]:
  """{lesion_id: {mean_probability, max_probability, mean_uncertainty, confidence}}."""
  n = int(labels.max()) if labels.size else 0
  if n == 0:
    return {}
  p = np.asarray(probability, np.float32)
  s = np.zeros_like(p) if spread is None else np.asarray(spread, np.float32)
  prob = lesions_lib.per_lesion(labels, n, p)
  sizes, mean_p, max_p = prob["voxels"], prob["mean"], prob["max"]
  mean_s = lesions_lib.per_lesion(labels, n, s)["mean"]
  sure_share = lesions_lib.per_lesion(labels, n, (p - s) >= threshold)["mean"]
  out = {}
  for i in range(n):
    if sizes[i] == 0:
      continue
    out[i + 1] = {"mean_probability": round(float(mean_p[i]), 4),
                  "max_probability": round(float(max_p[i]), 4),
                  "mean_uncertainty": None if spread is None else round(float(mean_s[i]), 4),
                  "confidence": None if spread is None else round(float(sure_share[i]), 4)}
  return out


def lesion_rows(labels: np.ndarray, affine: np.ndarray, *, probability=None, spread=None,
                to_mni=None, flair=None, t1=None, brain=None, threshold: float = 0.5,
                locations: locations_lib.Locations | None = None, cfg=None
                ) -> tuple[dict[int, dict], locations_lib.Locations]:
  """The columns EXTRA_COLUMNS for every lesion of `labels` (lesion_labels of the mask written
  with the table), keyed by lesion_id, to merge into msjax's lesion table row by row; and the
  Locations (for the page). Location arguments as msjax.report.locations.classify (given
  `locations`, they are not computed again); probability and spread on the same grid."""
  if locations is None:
    locations = locations_lib.classify(labels, affine, to_mni=to_mni, flair=flair, t1=t1,
                                       brain=brain, cfg=cfg)
  conf = confidence(labels, probability, spread, threshold) if probability is not None else {}
  rows = {}
  for lid, detail in locations.details.items():
    c = conf.get(lid, {})
    rows[lid] = {"location": detail["location"], "ventricle_mm": detail["ventricle_mm"],
                 "cortex_mm": detail["cortex_mm"],
                 "infratentorial_share": detail["infratentorial_share"],
                 "mean_uncertainty": c.get("mean_uncertainty"), "confidence": c.get("confidence")}
  return rows, locations


def merge(table: list[dict], extra: dict[int, dict]) -> list[dict]:
  """msjax's lesion table rows with the extra columns of their lesion_id (empty when missing)."""
  return [{**row, **{k: extra.get(int(row["lesion_id"]), {}).get(k) for k in EXTRA_COLUMNS}}
          for row in table]


def class_summary(labels: np.ndarray, affine: np.ndarray, locations: locations_lib.Locations,
                  min_mm3: float = lesions_lib.MIN_LESION_MM3) -> dict:
  """Counts and volumes (mL) per location class and in total, of the lesions of more than
  min_mm3 (MSSEG-2016's 3 mm³ by default: what msjax counts as a lesion elsewhere), and the
  volume of every component (the mask's volume)."""
  per_class = locations_lib.class_volumes(labels, affine, locations, min_mm3)
  voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
  return {"classes": per_class,
          "lesions": sum(v["count"] for v in per_class.values()),
          "lesion_volume_ml": round(sum(v["volume_ml"] for v in per_class.values()), 4),
          "mask_volume_ml": round(float((np.asarray(labels) > 0).sum()) * voxel_ml, 4)}


def cohort_row(exam_id: str, summary: dict, qc: dict | None = None, **extra) -> dict:
  """One row of the cohort table: per class count and mL, total lesions and lesion mL (lesions
  of more than 3 mm³), the mask's mL, the QC verdict and its reasons (joined by '; ')."""
  row = {"exam_id": exam_id, **extra}
  for c in locations_lib.CLASSES:
    row[f"{c}_count"] = summary["classes"][c]["count"]
    row[f"{c}_ml"] = summary["classes"][c]["volume_ml"]
  row["lesions"] = summary["lesions"]
  row["lesion_volume_ml"] = summary["lesion_volume_ml"]
  row["mask_volume_ml"] = summary["mask_volume_ml"]
  row["qc"] = qc["verdict"] if qc else None
  row["qc_reasons"] = "; ".join(qc["reasons"]) if qc else None
  return row


COHORT_COLUMNS = ("exam_id",) + tuple(f"{c}_{k}" for c in locations_lib.CLASSES
                                      for k in ("count", "ml")) + (
    "lesions", "lesion_volume_ml", "mask_volume_ml", "qc", "qc_reasons")
