"""What the paper's 128³ model grid alone costs a lesion mask (issue 32): every real lesion mask
taken to the model grid and back, scored against itself as leave_one_out scores a prediction.

  python studies/grid_ceiling.py --data ../shared/data --out docs/results/grid_ceiling.md

A network on the 128³ grid can at best reproduce its training label there (the consensus resampled
as msjax.data.exams makes it: trilinear, >= 0.5) or, at the very best, each coarse voxel's lesion
fraction (a soft label). Either is brought back to the 1 mm grid the way a prediction is
(msjax.infer.predict: trilinear, then the threshold) and scored with msjax's own Dice and
lesion F1 (Anima's detection rules). The result is the ceiling of any Dice this grid can give:
small lesions lose most, so light-load patients are capped lowest. The same for the leave-one-out's
`slab5mm` input: the soft mask re-acquired as the images are there (5 mm axial slabs, a 1 mm gap,
cubic back; msjax.evaluate.variants.slab_slices), i.e. each slab's true lesion fraction, then the
model grid and back: what the slices themselves say of the lesions. A network with a shape prior
could recover more than that; nothing in a slab tells it where inside the 5 mm the lesion lies.
Masks: the two labelled Lesjak
patients (lesjak_mni) and the 27 lesion maps of the same database (lesjak_lesion_maps), all on
the same 182×218×182 1 mm MNI grid.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from msjax.data import nifti  # noqa: E402
from msjax.data.lesions import lesion_labels  # noqa: E402
from msjax.evaluate import metrics, variants  # noqa: E402

MODEL_GRID = (128, 128, 128)


def masks(data: str) -> dict[str, str]:
  """{name: path} of every real lesion mask under `data`."""
  found = {os.path.basename(os.path.dirname(p)): p
           for p in sorted(glob.glob(os.path.join(data, "lesjak_mni", "*", "consensus_gt.nii*")))}
  for p in sorted(glob.glob(os.path.join(data, "lesjak_lesion_maps", "*_consensus_gt.nii*"))):
    found[os.path.basename(p).split("_")[0] + " (map)"] = p
  if not found:
    raise SystemExit(f"{data}: no lesjak_mni/*/consensus_gt.nii* nor lesjak_lesion_maps/*")
  return found


def slab_fraction(mask: np.ndarray, axis: int, zoom_mm: float, mm: float = 5.0) -> np.ndarray:
  """Each voxel's lesion fraction as `slab<mm>mm` re-acquires an image: the mean over its slab,
  cubic back (slab_slices keeps zeros at zero as outside the head: the mask is lifted by 1 so that
  every voxel counts, then lowered again). The images' slabs average over the brain's voxels
  only, so a lesion at the brain's edge is a little fainter here than in them."""
  lifted = mask.astype(np.float32) + 1.0
  return variants.slab_slices(lifted, axis, mm / zoom_mm, variants.SLAB_GAP_MM / zoom_mm) - 1.0


def ceiling(mask: np.ndarray, voxel_mm3: float, thresholds=(0.4, 0.5), slab_axis: int = 2,
            slab_zoom_mm: float = 1.0) -> dict:
  """Dice and lesion F1 of `mask` after the model grid and back, per threshold, for the binary
  training label, the soft (lesion-fraction) one and the lesion fraction on 5 mm slabs."""
  label = nifti.resample_mask(mask, MODEL_GRID)               # what training teaches
  soft = nifti.resample_box(mask.astype(np.float32), MODEL_GRID)  # the best a coarse voxel holds
  slab = nifti.resample_box(slab_fraction(mask, slab_axis, slab_zoom_mm), MODEL_GRID)
  _, n = lesion_labels(mask, voxel_mm3)
  out = {"ml": float(mask.sum() * voxel_mm3 / 1000), "lesions": int(n)}
  for name, coarse in (("label", label), ("soft", soft), ("slab", slab)):
    back = nifti.resample_box(coarse.astype(np.float32), mask.shape)
    # a slab dilutes a lesion thinner than it: its fraction peaks below 0.5, so lower cuts too
    for t in ((0.25,) if name == "slab" else ()) + tuple(thresholds):
      pred = back >= t
      out[f"dice_{name}_{t:g}"] = metrics.voxel_metrics(pred, mask)["dice"]
      out[f"f1_{name}_{t:g}"] = metrics.lesion_metrics(pred, mask, voxel_mm3)["lesion_f1"]
  return out


def figure(rows: dict, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.2))
  names = list(rows)
  ml = np.array([rows[n]["ml"] for n in names])
  for key, style, label in (("dice_label_0.4", "o", "Dice, training label, p >= 0.4"),
                            ("dice_soft_0.5", "s", "Dice, lesion fraction, p >= 0.5"),
                            ("f1_label_0.4", "^", "lesion F1, training label, p >= 0.4"),
                            ("dice_slab_0.4", "x", "Dice, 5 mm slabs' lesion fraction, p >= 0.4")):
    ax.scatter(ml, [rows[n][key] for n in names], marker=style, label=label, alpha=0.75)
  for n in names:
    if "(map)" not in n:
      ax.annotate(n, (rows[n]["ml"], rows[n]["dice_label_0.4"]), fontsize=8,
                  xytext=(4, -10), textcoords="offset points")
  ax.set_xscale("log")
  ax.set_xlabel("lesion load (mL, log scale)")
  ax.set_ylabel("score of the mask after the 128³ grid")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title("The model grid's ceiling per real lesion mask (29 Lesjak patients)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", default="../shared/data")
  ap.add_argument("--out", default="docs/results/grid_ceiling.md")
  args = ap.parse_args(argv)
  rows = {}
  for name, path in masks(args.data).items():
    img = nib.load(path)
    mask = np.asarray(img.dataobj) > 0
    axis = int(np.argmax(np.abs(img.affine[2, :3])))  # as variants.slab_image picks it
    rows[name] = ceiling(mask, float(np.prod(img.header.get_zooms()[:3])), slab_axis=axis,
                         slab_zoom_mm=float(img.header.get_zooms()[axis]))
    print(f"{name}: {rows[name]['ml']:.2f} mL, {rows[name]['lesions']} lesions, Dice ceiling "
          f"{rows[name]['dice_label_0.4']:.3f} (p >= 0.4)", flush=True)
  png = figure(rows, os.path.splitext(args.out)[0] + ".png")
  light = [r for r in rows.values() if r["ml"] < 5]
  heavy = [r for r in rows.values() if r["ml"] >= 5]
  lines = [results.header("The 128³ model grid's ceiling on the Lesjak lesion masks"),
           __doc__.split("\n\n", 2)[2].strip(), "",
           f"![ceiling against load]({os.path.basename(png)})", "",
           "Dice and lesion F1 (Anima's rules) in %, of each mask against itself after the model "
           "grid and back; 'label' is the binarised training label, 'soft' each coarse voxel's "
           "lesion fraction, 'slabs' its lesion fraction on 5 mm slabs (1 mm gap).", "",
           "| mask | mL | lesions | Dice label p≥0.4 | Dice label p≥0.5 | Dice soft p≥0.5 "
           "| lesion F1 label p≥0.4 | lesion F1 label p≥0.5 | Dice slabs p≥0.25 | Dice slabs p≥0.4 "
           "| Dice slabs p≥0.5 | lesion F1 slabs p≥0.25 | lesion F1 slabs p≥0.4 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  pct = lambda v: "undef" if v is None else f"{100 * v:.1f}"  # noqa: E731
  for name, r in sorted(rows.items(), key=lambda kv: ("(map)" in kv[0], kv[1]["ml"])):
    lines.append(f"| {name} | {r['ml']:.2f} | {r['lesions']} | {pct(r['dice_label_0.4'])} | "
                 f"{pct(r['dice_label_0.5'])} | {pct(r['dice_soft_0.5'])} | "
                 f"{pct(r['f1_label_0.4'])} | {pct(r['f1_label_0.5'])} | "
                 f"{pct(r['dice_slab_0.25'])} | {pct(r['dice_slab_0.4'])} | "
                 f"{pct(r['dice_slab_0.5'])} | {pct(r['f1_slab_0.25'])} | {pct(r['f1_slab_0.4'])} |")
  mean = lambda rs, k: 100 * float(np.mean([r[k] for r in rs]))  # noqa: E731
  lines += ["", f"Mean Dice ceiling (training label, p >= 0.4): {mean(light, 'dice_label_0.4'):.1f} "
                f"over the {len(light)} masks under 5 mL, {mean(heavy, 'dice_label_0.4'):.1f} "
                f"over the {len(heavy)} of 5 mL or more; on 5 mm slabs (lesion fraction, p >= 0.4) "
                f"{mean(light, 'dice_slab_0.4'):.1f} and {mean(heavy, 'dice_slab_0.4'):.1f}.", ""]
  labelled = [n for n in rows if "(map)" not in n]
  if labelled:
    for key, what in (("dice_label_0.4", "the model grid (training label, p >= 0.4)"),
                      ("dice_slab_0.25", "5 mm slabs (lesion fraction, p >= 0.25)"),
                      ("dice_slab_0.4", "5 mm slabs (lesion fraction, p >= 0.4)"),
                      ("dice_slab_0.5", "5 mm slabs (lesion fraction, p >= 0.5)")):
      lines.append(f"Mean over the labelled patients ({', '.join(labelled)}), {what}: "
                   f"{mean([rows[n] for n in labelled], key):.1f}  ")
    lines.append("")
  results.write(args.out, "\n".join(lines))
  print(f"[grid_ceiling] {len(rows)} masks -> {args.out}, {png}")


if __name__ == "__main__":
  main()
