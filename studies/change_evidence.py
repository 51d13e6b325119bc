"""How much image evidence of change a reference change mask holds, and the best lesion F1 that
any detector working from that evidence could reach.

  python studies/change_evidence.py --data ../shared/data --out runs/evidence

A change detector (subtraction, or a network that sees both visits) can only find a reference
change region where the two visits differ by more than noise. Per patient of the Lesjak
longitudinal database this puts both visits onto the reference's own (halfway) grid with the
database's own transforms (the best registration there is: it is the one the raters worked in),
N4-corrected and intensity-matched as the mode does (change.py step 1), and measures per reference
lesion (6-connected, >= 3 mm³, as the MSSEG-2016 evaluator counts them) its peak |change z|
(change.change_z) over three maps: FLAIR after the mode's 0.8 mm smoothing, FLAIR unsmoothed,
and T2. It also counts the clusters of the same evidence map outside the reference whose peak
reaches each threshold (what a detector that ranks by evidence meets first).

The ceiling: a detector that keeps exactly the regions with evidence >= τ and no false region
reaches lesion sensitivity s(τ) = share of reference lesions with peak >= τ and F1 2s/(1+s);
its noise at τ is the count of non-reference clusters that peak as high. Writes evidence.json and
evidence.png (per patient: each reference lesion's peak |z|, the F1 ceiling against τ, and the
non-reference clusters at each τ).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np
from scipy import ndimage

from msjax import files
from msjax.data.lesions import SIX_CONNECTED, lesion_labels, min_lesion_voxels
from msjax.longitudinal import change

# the repository root: `from studies import ...` as a script (python studies/x.py) too
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from studies import lesjak_longitudinal  # noqa: E402

THRESHOLDS = tuple(np.round(np.arange(2.0, 8.01, 0.25), 2))


def evidence_maps(flair: tuple, t2: tuple | None, brain: np.ndarray, spacing) -> dict:
  """|change z| maps of two visits on one grid (arrays), named; the follow-up intensity-matched to
  the baseline inside the brain as run.run_patient does. Also "plausible" (bool, not an evidence
  map): where the mode's rule lets a change be a lesion (change.detect's candidate domain for
  either sign: lesion-like at one visit, not CSF at the other, deeper than border_mm)."""
  z1, z2 = change.visit_units(*flair, brain)
  maps = {"flair": np.abs(change.change_z(z1, z2, brain, spacing)),
          "flair_unsmoothed": np.abs(change.change_z(
              z1, z2, brain, spacing, dataclasses.replace(change.Rule(), smooth_mm=0.0)))}
  if t2 is not None:
    maps["t2"] = np.abs(change.change_z(*change.visit_units(*t2, brain), brain, spacing))
  depth = ndimage.distance_transform_edt(brain, sampling=spacing)
  maps["plausible"] = brain & (change.lesion_change_possible(z2, z1, depth)
                               | change.lesion_change_possible(z1, z2, depth))
  return maps


def region_peaks(maps: dict, reference: np.ndarray, brain: np.ndarray, spacing,
                 thresholds=THRESHOLDS) -> dict:
  """Per reference lesion its peak over all evidence maps; the F1 ceiling and the non-reference
  clusters (6-connected, >= 3 mm³, of evidence >= the lowest threshold) at each threshold, in the
  whole brain and within maps["plausible"] when given."""
  voxel_mm3 = float(np.prod(spacing))
  labels, n = lesion_labels(reference > 0, voxel_mm3)
  maps = dict(maps)
  plausible = maps.pop("plausible", None)
  evidence = np.max(np.stack(list(maps.values())), axis=0) * brain
  peaks = (np.asarray(ndimage.maximum(evidence, labels, np.arange(1, n + 1)), float)
           if n else np.zeros(0))
  clusters, m = ndimage.label(evidence >= thresholds[0], structure=SIX_CONNECTED)
  ids = np.arange(1, m + 1)
  cluster_peak = np.asarray(ndimage.maximum(evidence, clusters, ids), float) if m else np.zeros(0)
  big = np.bincount(clusters.ravel(), minlength=m + 1)[1:] >= min_lesion_voxels(voxel_mm3)
  touches = (np.asarray(ndimage.maximum(reference > 0, clusters, ids)) > 0) if m else np.zeros(0,
                                                                                        bool)
  inner = (np.asarray(ndimage.maximum(evidence * plausible, clusters, ids), float) if
           plausible is not None and m else None)
  curve = []
  for tau in thresholds:
    s = float((peaks >= tau).mean()) if n else 0.0
    curve.append({"tau": float(tau), "reference_lesions_with_evidence": int((peaks >= tau).sum()),
                  "sensitivity_ceiling": round(s, 3),
                  "f1_ceiling_no_false": round(2 * s / (1 + s), 3),
                  "non_reference_clusters": int(((cluster_peak >= tau) & big & ~touches).sum()),
                  "non_reference_clusters_plausible": None if inner is None else
                  int(((inner >= tau) & big & ~touches).sum())})
  return {"reference_lesions": int(n), "peaks": [round(float(p), 2) for p in np.sort(peaks)],
          "maps": sorted(maps), "curve": curve}


def lesjak_patient(data: str, patient: str, log=print) -> dict:
  """Both raw visits onto the reference's grid with the database's transforms; region_peaks."""
  maps, reference, brain, spacing = lesjak_maps(data, patient)
  out = region_peaks(maps, reference, brain, spacing)
  log(f"[evidence] {patient}: {out['reference_lesions']} reference lesions, peak |z| "
      f"{out['peaks']}")
  return dict(out, patient=patient)


def lesion_peaks(maps: dict, reference: np.ndarray, brain: np.ndarray, spacing):
  """(reference lesion labels, n, each lesion's peak evidence in label order 1..n)."""
  labels, n = lesion_labels(reference > 0, float(np.prod(spacing)))
  evidence = np.max(np.stack([v for k, v in maps.items() if k != "plausible"]), axis=0) * brain
  peaks = (np.asarray(ndimage.maximum(evidence, labels, np.arange(1, n + 1)), float)
           if n else np.zeros(0))
  return labels, n, peaks


def lesjak_maps(data: str, patient: str):
  """(evidence maps, reference array, brain, spacing) of one patient on the reference's grid."""
  import SimpleITK as sitk

  from msjax.longitudinal import align
  from msjax.preprocess import grid as grid_lib
  from msjax.preprocess import steps
  raw = os.path.join(data, "lesjak_longitudinal_raw", patient)
  ref_dir = os.path.join(data, "lesjak_longitudinal_change", patient)
  reference = sitk.ReadImage(os.path.join(ref_dir, "change_gt.nii.gz"))
  grid = sitk.Cast(reference, sitk.sitkFloat32)
  on_grid = lambda img, tfm, linear=True: grid_lib.to_numpy(  # noqa: E731
      steps.resample(img, grid, tfm, linear=linear))
  flair, t2, inside, brain = [], [], None, None
  for k in (1, 2):
    exam = lesjak_longitudinal.exam_files(raw, f"study{k}")
    common_to_visit = sitk.ReadTransform(os.path.join(ref_dir,
                                                      f"study{k}_FLAIR_to_common_space.txt"))
    f = align.read_image(exam["FLAIR"])
    flair.append(on_grid(f, common_to_visit))
    seen = on_grid(sitk.Cast(f * 0 + 1, sitk.sitkFloat32), common_to_visit, False) > 0
    inside = seen if inside is None else inside & seen
    if k == 1:
      brain = on_grid(sitk.Cast(align.brain_mask_otsu(f), sitk.sitkFloat32), common_to_visit,
                      False) > 0
    if "T2W" in exam:
      image = align.read_image(exam["T2W"])
      into = align.to_flair(f, image, exam.get("T2W_transform"))
      t2.append(on_grid(image, sitk.CompositeTransform([into, common_to_visit])))
  brain &= inside
  spacing = reference.GetSpacing()
  maps = evidence_maps(tuple(flair), tuple(t2) if len(t2) == 2 else None, brain, spacing)
  return maps, grid_lib.to_numpy(reference), brain, spacing


def figure(results: list[dict], path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
  for (left, right), r in zip(axes, results):
    peaks = r["peaks"]
    left.bar(range(len(peaks)), peaks, color=["tab:red" if p < 3 else "tab:blue" for p in peaks])
    left.axhline(3, color="k", lw=0.8, ls=":")
    left.set_yscale("log")
    left.set_title(f"{r['patient']}: peak |change z| of each of {len(peaks)} reference lesions "
                   f"({sum(p < 3 for p in peaks)} under 3)", fontsize=9)
    left.set_xlabel("reference lesion (sorted)")
    taus = [c["tau"] for c in r["curve"]]
    right.plot(taus, [c["f1_ceiling_no_false"] for c in r["curve"]], "b-",
               label="lesion F1 ceiling (no false region)")
    right.axhline(0.5, color="k", lw=0.8, ls=":")
    right.set_ylim(0, 1)
    right.set_xlabel("evidence threshold τ (peak |change z|)")
    right.set_ylabel("F1 ceiling")
    twin = right.twinx()
    twin.semilogy(taus, [max(c["non_reference_clusters"], 0.5) for c in r["curve"]], "r--",
                  label="non-reference clusters peaking >= τ (brain)")
    if r["curve"][0]["non_reference_clusters_plausible"] is not None:
      twin.semilogy(taus, [max(c["non_reference_clusters_plausible"], 0.5) for c in r["curve"]],
                    "r:", label="... where a lesion change is plausible")
    twin.set_ylabel("non-reference clusters", color="r")
    lines = right.get_lines()[:1] + twin.get_lines()
    right.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
  fig.tight_layout()
  with files.atomic(path) as tmp:
    fig.savefig(tmp, dpi=80, format="png")
  plt.close(fig)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="../shared/data")
  parser.add_argument("--out", default="runs/evidence")
  args = parser.parse_args(argv)
  names = lesjak_longitudinal.patients(args.data)
  if not names:
    raise SystemExit(f"{args.data}: no lesjak_longitudinal_raw/ + lesjak_longitudinal_change/ "
                     "patients")
  results = []
  for k, p in enumerate(names, 1):  # ~35 s a patient on 2 cores (N4 of four images)
    print(f"[evidence] {k}/{len(names)} {p} ...", flush=True)
    results.append(lesjak_patient(args.data, p))
  js = files.write_json({"results": results}, os.path.join(args.out, "evidence.json"))
  png = figure(results, os.path.join(args.out, "evidence.png"))
  for r in results:
    print(f"{r['patient']}: {r['reference_lesions']} reference lesions")
    for c in r["curve"][::4]:
      print(f"  tau {c['tau']:.1f}: {c['reference_lesions_with_evidence']} with evidence, F1 "
            f"ceiling {c['f1_ceiling_no_false']:.2f}, non-reference clusters as strong: "
            f"{c['non_reference_clusters']} in the brain, "
            f"{c['non_reference_clusters_plausible']} where lesion change is plausible")
  print(f"[evidence] wrote {js}, {png}")


if __name__ == "__main__":
  main()
