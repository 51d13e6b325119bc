"""Which lesions does the model find, by size, and what does that make of a heavy lesion load?

Reads leave-one-out workdirs (their saved probability maps: nothing is trained or predicted
again); per arm, each left-out exam's maps are averaged over the arm's runs, made into the mask
`segment` writes (lesions.mask_of at the threshold and lesion peak given) and scored lesion by
lesion with the evaluator's detection criterion (MSSEG-2016, msjax/evaluate/metrics.py), pooled
over both left-out patients and every input. Two sides, so that neither can flatter: reference
lesions found by their size, and predicted lesions confirmed by theirs.

Then the projection: each lesion map of ../shared/data/lesjak_lesion_maps above --heavy-ml (the
same database's patients, their images not public) has its own mix of lesion sizes; weighting the
measured share found per size by that mix says what share of such a patient's lesions the arm
would find if it found lesions of each size as it does on the left-out patients. It is an
estimate by lesion size alone: in a heavy load lesions merge (fewer, larger components) and the
brain is atrophic, which the two patients do not show.

  python studies/found_by_size.py --arm 'shipped recipe=runs/loo_ft2400_renorm_s0,\
runs/loo_ft2400_renorm_s1,runs/loo_ft2400_renorm_s2' --out docs/results/found_by_size.md
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax.data import lesions as lesions_lib  # noqa: E402
from msjax.evaluate import ensemble, metrics  # noqa: E402
from studies import results  # noqa: E402

FOLDS = ("test_patient07", "test_patient26")
VARIANTS = ("all", "FLAIR+T1W", "FLAIR+T2W", "FLAIR", "slab5mm")
STRATEGY = "0CF"
EDGES_MM3 = (3, 10, 30, 100, 300, 1000)  # lesion volume bins (mm³); the last is open


def size_bin(volumes_mm3) -> np.ndarray:
  return np.digitize(volumes_mm3, EDGES_MM3) - 1


def bin_names() -> list[str]:
  return ([f"{a}-{b}" for a, b in zip(EDGES_MM3[:-1], EDGES_MM3[1:])]
          + [f">= {EDGES_MM3[-1]}"])


def lesion_sizes(mask: np.ndarray, voxel_mm3: float) -> tuple[np.ndarray, int, np.ndarray]:
  """(labels, n, volume of each in mm³) as the evaluator counts lesions."""
  labels, n = lesions_lib.lesion_labels(mask, voxel_mm3)
  return labels, n, np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_mm3


def count(runs: list[str], threshold: float, peak: float) -> dict:
  """{'ref': (lesions, found) per bin, 'pred': (lesions, confirmed) per bin}, pooled."""
  nb = len(EDGES_MM3)
  out = {"ref": np.zeros((2, nb), int), "pred": np.zeros((2, nb), int)}
  for fold in FOLDS:
    for variant in VARIANTS:
      rows = [ensemble.recorded(r, fold, STRATEGY, variant) for r in runs]
      ref_img = nib.load(rows[0]["reference"])
      spacing = ref_img.header.get_zooms()[:3]
      voxel_mm3 = float(np.prod(spacing))
      reference = np.asarray(ref_img.dataobj) > 0
      mean = np.mean([np.asarray(nib.load(ensemble.probability_path(r["prediction"])).dataobj,
                                 np.float32) for r in rows], axis=0)
      mask = ensemble.mask_at(mean, spacing, threshold, 0.0, peak)
      ref_labels, n_ref, ref_mm3 = lesion_sizes(reference, voxel_mm3)
      pred_labels, n_pred, pred_mm3 = lesion_sizes(mask, voxel_mm3)
      table = metrics.overlap_table(ref_labels, n_ref, pred_labels, n_pred)
      found = metrics.detected_lesions(table) if n_pred else [False] * n_ref
      confirmed = metrics.detected_lesions(table.T) if n_ref else [False] * n_pred
      for side, mm3, hit in (("ref", ref_mm3, found), ("pred", pred_mm3, confirmed)):
        bins = size_bin(mm3)
        np.add.at(out[side][0], bins, 1)
        np.add.at(out[side][1], bins, np.asarray(hit, int))
  return out


def heavy_maps(folder: str, heavy_ml: float) -> list[tuple[str, float, np.ndarray]]:
  """(patient, load in mL, lesions per size bin) of each lesion map over heavy_ml."""
  out = []
  for path in sorted(glob.glob(os.path.join(folder, "*.nii*"))):
    img = nib.load(path)
    voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
    mask = np.asarray(img.dataobj) > 0
    load = mask.sum() * voxel_mm3 / 1000
    if load < heavy_ml:
      continue
    _, _, mm3 = lesion_sizes(mask, voxel_mm3)
    out.append((os.path.basename(path).split("_")[0], load,
                np.bincount(size_bin(mm3), minlength=len(EDGES_MM3))))
  return out


def share(counts: np.ndarray) -> np.ndarray:
  n, hit = counts
  return np.divide(hit, n, out=np.full(len(n), np.nan), where=n > 0)


def projected(rate: np.ndarray, mix: np.ndarray) -> float:
  """Share of a map's lesions found at the measured rate per bin (bins never measured count as
  never found: the estimate errs low)."""
  return float(np.nansum(np.where(np.isnan(rate), 0.0, rate) * mix) / mix.sum())


def figure(path: str, arms: dict) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  x = np.arange(len(EDGES_MM3))
  for name, c in arms.items():
    axes[0].plot(x, 100 * share(c["ref"]), marker="o", label=name)
    axes[1].plot(x, 100 * share(c["pred"]), marker="o", label=name)
  for ax, title in zip(axes, ("reference lesions found", "predicted lesions confirmed")):
    ax.set_xticks(x, bin_names(), rotation=30)
    ax.set_xlabel("lesion volume (mm³)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def by_volume_table(arms: dict, side: str, names: list[str]) -> list[str]:
  """One row per arm: hits / lesions in each volume bin of `side` ('ref' or 'pred'), then the
  share over all bins."""
  rows = ["| arm | " + " | ".join(names) + " | all |",
          "| --- | " + " | ".join("---" for _ in names) + " | --- |"]
  for name, c in arms.items():
    n, hit = c[side]
    rows.append(f"| {name} | " + " | ".join(f"{h} / {k}" for k, h in zip(n, hit))
                + f" | **{100 * hit.sum() / max(n.sum(), 1):.1f} %** |")
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--arm", action="append", required=True,
                  help="'name[@peak]=run1,run2,...': leave-one-out workdirs whose maps are "
                       "averaged; @peak: predict.min_lesion_peak (default 0)")
  ap.add_argument("--threshold", type=float, default=0.5)
  ap.add_argument("--maps", default="../shared/data/lesjak_lesion_maps")
  ap.add_argument("--heavy-ml", type=float, default=15.0)
  ap.add_argument("--note", default="")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  arms = {}
  for spec in args.arm:
    name, _, runs = spec.partition("=")
    _, _, peak = name.partition("@")
    runs = [r.strip() for r in runs.split(",") if r.strip()]
    arms[name] = count(runs, args.threshold, float(peak or 0.0))
    print(f"[found_by_size] {name}: found {arms[name]['ref'][1].sum()} of "
          f"{arms[name]['ref'][0].sum()}, confirmed {arms[name]['pred'][1].sum()} of "
          f"{arms[name]['pred'][0].sum()}", flush=True)
  png = os.path.splitext(args.out)[0] + ".png"
  figure(png, arms)
  heavy = heavy_maps(args.maps, args.heavy_ml)
  names = bin_names()
  text = [results.header("Lesions found and confirmed by size on the Lesjak leave-one-out, and "
                         "what that makes of a heavy load", argv=argv)]
  if args.note:
    text += [args.note, ""]
  text += [f"Each arm's runs' maps averaged per left-out exam, p >= {args.threshold:g}, lesions "
           "peaking under the arm's peak removed; reference lesions found and predicted lesions "
           "confirmed by the MSSEG-2016 criterion, pooled over patient07 and patient26 and the "
           f"inputs {', '.join(VARIANTS)} (each lesion counted once per input). Lesion volume "
           "in mm³ (1 mm³ voxels).", "", f"![found and confirmed by size]"
           f"({os.path.basename(png)})", "", "Reference lesions found / lesions, by volume:", ""]
  text += by_volume_table(arms, "ref", names)
  text += ["", "Predicted lesions confirmed / predicted, by volume:", ""]
  text += by_volume_table(arms, "pred", names)
  text += ["", f"Projected share of lesions found for each lesion map of the database over "
           f"{args.heavy_ml:g} mL (its lesions per volume bin times each arm's share found "
           "there; bins an arm never saw count as missed):", "",
           "| patient (map) | mL | lesions | " + " | ".join(names) + " | "
           + " | ".join(arms) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | "
           + " | ".join("---" for _ in arms) + " |"]
  for patient, load, mix in heavy:
    text.append(f"| {patient} | {load:.1f} | {mix.sum()} | " + " | ".join(map(str, mix)) + " | "
                + " | ".join(f"{100 * projected(share(c['ref']), mix):.0f} %"
                             for c in arms.values()) + " |")
  if heavy:
    text.append("| median | | | " + " | ".join("" for _ in names) + " | " + " | ".join(
        f"**{100 * np.median([projected(share(c['ref']), m) for _, _, m in heavy]):.0f} %**"
        for c in arms.values()) + " |")
  results.write(args.out, "\n".join(text) + "\n")
  print(f"[found_by_size] -> {args.out}, {png}")


if __name__ == "__main__":
  main()
