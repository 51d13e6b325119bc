"""Figures are PNG files written atomically (msjax.files.atomic) with a headless backend."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from msjax import files  # noqa: E402


def save_figure(fig, path: str, dpi: int = 110) -> str:
  try:
    with files.atomic(path) as tmp:
      fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)
  return path
