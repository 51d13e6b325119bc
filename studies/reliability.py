"""Is the model's probability a probability? Reliability of a leave-one-out's left-out
predictions (issue 32): per bin of predicted lesion probability, the share of voxels that are
lesion in the reference; and per predicted lesion (6-connected, > 3 mm³), its mean probability
against whether it overlaps a reference lesion (the lesion table's confidence, read as a chance).
Several runs (one per seed of an ensemble's recipe) are read as the ensemble: each left-out
exam's maps averaged over them (msjax/evaluate/ensemble.py), as segment averages its members.

  python studies/reliability.py --loo runs/loo_recipe_s0,runs/loo_recipe_s1,runs/loo_recipe_s2 \\
      --threshold 0.35 --out docs/results/reliability.md

Writes the table (markdown) and reliability.png beside it.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from studies import results  # noqa: E402

BINS = np.linspace(0.0, 1.0, 11)


def pairs(runs: list[str], strategy: str = "0CF"):
  """(patient, probability, reference, voxel mm³) of each left-out patient, all sequences: the
  runs' maps averaged."""
  from msjax.evaluate import ensemble
  for fold in ensemble.folds(runs):
    maps, reference, spacing, _ = ensemble.member_maps(runs, fold, strategy, ensemble.ALL)
    yield fold[len("test_"):], np.mean(maps, axis=0), reference, float(np.prod(spacing))


def voxel_reliability(p: np.ndarray, ref: np.ndarray):
  idx = np.clip(np.digitize(p, BINS) - 1, 0, len(BINS) - 2)
  keep = p > 0.05  # the background's near-zero mass would swamp the first bin
  n = np.bincount(idx[keep], minlength=len(BINS) - 1)
  hit = np.bincount(idx[keep], weights=ref[keep].astype(float), minlength=len(BINS) - 1)
  return n, hit


def lesion_reliability(p: np.ndarray, ref: np.ndarray, voxel_mm3: float, threshold: float):
  from scipy import ndimage
  labels, k = ndimage.label(p >= threshold)
  out = []
  for i in range(1, k + 1):
    region = labels == i
    if region.sum() * voxel_mm3 <= 3.0:
      continue
    out.append((float(p[region].mean()), bool(ref[region].any())))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--loo", required=True, help="leave-one-out workdirs, comma-separated (one "
                  "per seed: read as their ensemble)")
  ap.add_argument("--threshold", type=float, default=0.5, help="the model's threshold")
  ap.add_argument("--out", default=os.path.join(results.ROOT, "docs", "results",
                                                "reliability.md"))
  a = ap.parse_args(argv)
  n_all = np.zeros(len(BINS) - 1)
  hit_all = np.zeros(len(BINS) - 1)
  lesions = []
  runs = [r.strip() for r in a.loo.split(",") if r.strip()]
  for patient, p, ref, voxel_mm3 in pairs(runs):
    n, hit = voxel_reliability(p, ref)
    n_all += n
    hit_all += hit
    lesions += [(patient, *x) for x in lesion_reliability(p, ref, voxel_mm3, a.threshold)]
  if not n_all.sum():
    raise SystemExit(f"{a.loo}: no left-out predictions found")
  text = results.header("Reliability of the left-out predictions (leave-one-out, 0CF)",
                        argv=argv)
  if len(runs) > 1:
    names = ", ".join(os.path.basename(r) for r in runs)
    text += (f"The ensemble of {len(runs)} runs of one recipe ({names}): each left-out exam's "
             "probability maps averaged over them.\n\n")
  text += ("| predicted probability | voxels | share lesion in the reference |\n"
           "| --- | --- | --- |\n")
  for lo, hi, n, h in zip(BINS[:-1], BINS[1:], n_all, hit_all):
    text += f"| {lo:.1f}-{hi:.1f} | {int(n):,} | {h / n:.2f} |\n" if n else \
        f"| {lo:.1f}-{hi:.1f} | 0 | – |\n"
  text += (f"\nPredicted lesions (p >= {a.threshold:g}, > 3 mm³) by their mean probability: "
           "share that overlaps a reference lesion\n\n| mean probability | lesions | share "
           "true |\n| --- | --- | --- |\n")
  edges = (a.threshold, 0.7, 0.8, 0.9, 1.01)
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = [t for _, m, t in lesions if lo <= m < hi]
    text += (f"| {lo:.2f}-{min(hi, 1.0):.2f} | {len(sel)} | "
             + (f"{np.mean(sel):.2f} |\n" if sel else "– |\n"))
  png = os.path.splitext(a.out)[0] + ".png"
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  mid = (BINS[:-1] + BINS[1:]) / 2
  ok = n_all > 0
  ax[0].plot([0, 1], [0, 1], color="gray", lw=1)
  ax[0].plot(mid[ok], hit_all[ok] / n_all[ok], "o-")
  for x, n, h in zip(mid[ok], n_all[ok], hit_all[ok]):
    ax[0].annotate(f"{h / n:.2f}", (x, h / n), fontsize=7, xytext=(3, -10),
                   textcoords="offset points")
  ax[0].set(xlabel="predicted lesion probability", ylabel="share lesion in the reference",
            title="voxels (p > 0.05)")
  mids, shares, counts = [], [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = [t for _, m, t in lesions if lo <= m < hi]
    if sel:
      mids.append((lo + min(hi, 1.0)) / 2)
      shares.append(np.mean(sel))
      counts.append(len(sel))
  ax[1].plot([0, 1], [0, 1], color="gray", lw=1)
  ax[1].plot(mids, shares, "o-")
  for x, y, c in zip(mids, shares, counts):
    ax[1].annotate(f"{y:.2f} (n={c})", (x, y), fontsize=7, xytext=(3, -10),
                   textcoords="offset points")
  ax[1].set(xlabel="predicted lesion's mean probability", ylabel="share overlapping a reference "
            "lesion", title="lesions", xlim=(a.threshold - 0.1, 1.0), ylim=(0, 1.05))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
  fig.savefig(png, dpi=100)
  text += f"\nFigure: docs/results/{os.path.basename(png)} (beside this file in the repository).\n"
  print(text)
  results.write(a.out, text)
  print(f"-> {a.out}, {png}")


if __name__ == "__main__":
  main()
