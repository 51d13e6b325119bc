"""Figures: PNG files written atomically (msjax.files.atomic) with a headless backend, and the
axial FLAIR slice with mask outlines that every lesion figure is made of."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from msjax import files  # noqa: E402


def save_figure(fig, path: str, dpi: int = 110) -> str:
  try:
    with files.atomic(path) as tmp:
      fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)
  return path


def lesion_slices(reference: np.ndarray, n: int, min_gap: int = 6) -> list[int]:
  """The n axial slices (last axis, RAS) with the most reference lesion, at least min_gap apart."""
  per_slice = reference.reshape(-1, reference.shape[-1]).sum(0)
  chosen: list[int] = []
  for z in np.argsort(-per_slice, kind="stable"):
    if per_slice[z] == 0 or len(chosen) == n:
      break
    if all(abs(int(z) - c) >= min_gap for c in chosen):
      chosen.append(int(z))
  return sorted(chosen)


def brain_box(image: np.ndarray, pad: int = 4):
  nz = np.argwhere(image != 0)
  if not len(nz):
    return slice(None), slice(None)
  lo, hi = nz.min(0), nz.max(0) + 1
  return (slice(max(lo[0] - pad, 0), hi[0] + pad), slice(max(lo[1] - pad, 0), hi[1] + pad))


def window(image: np.ndarray) -> tuple[float, float]:
  """Display range: the 1st to 99.5th percentile of the non-zero voxels."""
  nz = image[image != 0]
  return tuple(np.percentile(nz, [1, 99.5])) if nz.size else (0.0, 1.0)


def draw_slice(ax, image: np.ndarray, z: int, box, limits, outlines) -> None:
  """Axial slice z of a canonical RAS volume in radiological view (patient left on the image's
  right, anterior up), with each (mask, colour) of `outlines` drawn as a contour."""
  bx, by = box
  ax.imshow(image[bx, by, z].T[::-1, ::-1], cmap="gray", vmin=limits[0], vmax=limits[1],
            interpolation="nearest")
  for mask, colour in outlines:
    m = mask[bx, by, z].T[::-1, ::-1]
    if m.any():
      ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)
  for x, side in ((0.02, "R"), (0.98, "L")):  # the patient's sides, so nobody has to guess
    ax.text(x, 0.5, side, transform=ax.transAxes, color="yellow", fontsize=8, fontweight="bold",
            ha="left" if side == "R" else "right", va="center")
  ax.set_xticks([])
  ax.set_yticks([])
