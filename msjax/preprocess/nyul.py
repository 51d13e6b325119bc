"""Nyúl histogram standardisation (Nyúl, Udupa & Zhang 2000), numpy only: landmarks (percentiles of
the brain's intensities) learned from reference exams, and the piecewise-linear map of an exam's
landmarks onto them. Used by the preprocessing and by model bundles (no SimpleITK needed)."""
from __future__ import annotations

import numpy as np

PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
SCALE = (0.0, 100.0)


def landmarks(values: np.ndarray) -> np.ndarray:
  return np.percentile(values, PERCENTILES)


def fit_nyul(samples: dict[str, list[np.ndarray]]) -> dict:
  """samples: modality -> brain-voxel intensities of the reference exams. Each exam's [p1, p99]
  is mapped linearly onto SCALE; the standard landmarks are the means of the mapped landmarks."""
  out = {}
  for modality, exams in samples.items():
    mapped = []
    for v in exams:
      lm = landmarks(v)
      mapped.append(SCALE[0] + (lm - lm[0]) / max(lm[-1] - lm[0], 1e-6) * (SCALE[1] - SCALE[0]))
    out[modality] = {"percentiles": list(PERCENTILES),
                     "standard": [float(x) for x in np.mean(mapped, axis=0)],
                     "n_exams": len(exams)}
  return out


def apply_nyul(image: np.ndarray, brain: np.ndarray, standard: list[float]) -> np.ndarray:
  """Piecewise-linear map of the exam's landmarks onto the standard ones (linear beyond the ends);
  zero outside the brain."""
  lm = landmarks(image[brain > 0])
  std = np.asarray(standard)
  out = np.interp(image, lm, std)
  lo, hi = image < lm[0], image > lm[-1]
  out[lo] = std[0] + (image[lo] - lm[0]) * (std[1] - std[0]) / max(lm[1] - lm[0], 1e-6)
  out[hi] = std[-1] + (image[hi] - lm[-1]) * (std[-1] - std[-2]) / max(lm[-1] - lm[-2], 1e-6)
  return np.where(brain > 0, out, 0).astype(np.float32)

