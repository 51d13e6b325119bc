"""Test-time grid phases (predict.phases=8) on the Lesjak leave-one-out: does averaging the 8
half-voxel placements of the model grid score as 8-flip mirroring does, at its compute, and does
the mask move less when the exam lands on the grid a little differently?

Each left-out exam (1 mm MNI, as ../shared/data/lesjak_mni) is predicted by each seed's fold
network with 8-flip mirroring (the leave-one-out's own saved maps) and with the 8 phases (phase k
in flip k); the seeds' maps are averaged and thresholded by the shipped rule, then scored as the
leave-one-out scores. Then the whole model grid is moved by `--move-mm` along each axis (what
another registration or another visit does) and the exam predicted again both ways: the Dice of
each mask against its own unmoved mask is how far the mask moves with the grid.

  python studies/grid_phases.py --runs runs/loo_ft2400_renorm_s0,runs/loo_ft2400_renorm_s1,\
runs/loo_ft2400_renorm_s2 --out docs/results/grid_phases.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax.configs import leave_one_out as loo_config  # noqa: E402
from msjax.data import cohort as cohort_lib  # noqa: E402
from msjax.data import exams as exams_lib  # noqa: E402
from msjax.evaluate import ensemble, metrics  # noqa: E402
from msjax.evaluate import variants as variants_lib  # noqa: E402
from msjax.infer import predict  # noqa: E402
from studies import results  # noqa: E402
from studies import seed_ensemble  # noqa: E402

FOLDS, VARIANTS, STRATEGY = seed_ensemble.FOLDS, seed_ensemble.VARIANTS, seed_ensemble.STRATEGY
SETTINGS = {"flips8": "8-flip mirroring (the leave-one-out's, nnU-Net's)",
            "phases8": "the 8 half-voxel grid phases, phase k in flip k (predict.phases=8)"}


def options_for(setting: str) -> predict.PredictOptions:
  return predict.PredictOptions.from_config(loo_config.get_config().predict, mirror=True,
                                            flips="all", phases=8 if setting == "phases8" else 1)


class Maps:
  """Each (seed, fold, input, setting, move) map in its exam file's voxel order, kept in
  `scratch` (float16) so that the table is written again in seconds, with its seconds and
  patches beside it (`cost`). options: setting -> PredictOptions (default options_for)."""

  def __init__(self, labelled: str, scratch: str, options=None, recorded_setting="flips8"):
    self.exams = {e.exam_id: e for e in cohort_lib.load_cohort(labelled).exams}
    self.scratch, self._predictors = scratch, {}
    self.options = options or options_for
    self.recorded_setting = recorded_setting  # the setting the leave-one-out's own maps are

  def _key(self, run, fold, variant, setting, move_mm):
    return "_".join([os.path.abspath(run).strip("/").replace("/", "-"), fold, variant, setting,
                     f"{move_mm:g}mm"])

  def cost(self, run, fold, variant, setting, move_mm=0.0) -> dict | None:
    """{"seconds", "patches"} of a map this study predicted (None: the leave-one-out's own)."""
    kept = os.path.join(self.scratch, "maps", self._key(run, fold, variant, setting, move_mm))
    if not os.path.exists(kept + ".json"):
      return None
    with open(kept + ".json") as f:
      return json.load(f)

  def __call__(self, run: str, fold: str, variant: str, setting: str, move_mm: float):
    if setting == self.recorded_setting and move_mm == 0:  # what the leave-one-out saved
      row = seed_ensemble.recorded(run, fold, variant)
      return seed_ensemble._file_array(ensemble.probability_path(row["prediction"]))
    kept = os.path.join(self.scratch, "maps", self._key(run, fold, variant, setting, move_mm)
                        + ".npy")
    if os.path.exists(kept):
      return np.load(kept).astype(np.float32)
    if (run, fold) not in self._predictors:
      self._predictors[(run, fold)] = predict.Predictor(os.path.join(run, "folds", fold,
                                                                     STRATEGY))
    predictor = self._predictors[(run, fold)]
    exam = variants_lib.make(self.exams[fold.removeprefix("test_")], variant,
                             os.path.join(self.scratch, "variants", variant))
    t0 = time.time()
    load = exams_lib.exam_loader(exam, model_shape=predictor.model_shape,
                                 patch_size=predictor.patch)
    arrays = load()
    spacing = np.array(arrays.grid.spacing)
    origin = tuple(move_mm / spacing) if move_mm else (0.0, 0.0, 0.0)
    if move_mm:
      arrays = load(phase=origin)
    pred, patches = predict.phased_probabilities(predictor, arrays, load, self.options(setting),
                                                 origin)
    probability, _, _ = predict.in_file_space(exam, arrays, pred.probability)
    seconds = time.time() - t0
    print(f"[grid_phases] {os.path.basename(run)} {fold} {variant} {setting} moved {move_mm:g} mm:"
          f" {seconds:.0f} s, {patches} patches", flush=True)
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    np.save(kept + ".tmp.npy", probability.astype(np.float16))
    os.replace(kept + ".tmp.npy", kept)
    with open(kept[:-4] + ".json", "w") as f:
      json.dump({"seconds": round(seconds, 1), "patches": int(patches)}, f)
    return probability


def agreement(a: np.ndarray, b: np.ndarray) -> float:
  return float(2 * (a & b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def scores(runs, maps: Maps, threshold: float, min_mm3: float, peak: float, move_mm: float,
           moved_variants, settings=tuple(SETTINGS)) -> dict:
  """{(fold, variant, setting): {"score": the ensemble's scores, "agreement": Dice of its mask
  against the mask with the grid moved (None where not computed)}}."""
  out = {}
  for fold in FOLDS:
    for variant in VARIANTS:
      ref = nib.load(seed_ensemble.recorded(runs[0], fold, variant)["reference"])
      reference, spacing = np.asarray(ref.dataobj) > 0, ref.header.get_zooms()[:3]
      for setting in settings:
        def mask(move, setting=setting, variant=variant):
          mean = np.mean([maps(r, fold, variant, setting, move) for r in runs], axis=0)
          return ensemble.mask_at(mean, spacing, threshold, min_mm3, peak) > 0
        still = mask(0.0)
        moved = mask(move_mm) if variant in moved_variants else None
        out[(fold, variant, setting)] = {
            "score": metrics.evaluate_masks(still, reference, spacing, surface=False),
            "agreement": None if moved is None else agreement(still, moved)}
  return out


def table(result: dict, moved_variants) -> list[str]:
  lines = ["| input | mean Dice, 8 flips | 8 phases | lesion F1 26, 8 flips | 8 phases | "
           "lesions found 26 / 07, 8 flips | 8 phases | mL 26, 8 flips | 8 phases | mask against "
           "itself moved, 07 / 26, 8 flips | 8 phases |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  pct = seed_ensemble._pct
  for variant in VARIANTS:
    cells = [variant]
    get = {s: {f: result[(f, variant, s)] for f in FOLDS} for s in SETTINGS}
    cells += [f"{100 * np.mean([get[s][f]['score']['dice'] for f in FOLDS]):.1f}"
              for s in SETTINGS]
    cells += [pct(get[s]["test_patient26"]["score"]["lesion_f1"]) for s in SETTINGS]
    cells += [" / ".join(pct(get[s][f]["score"]["lesion_sensitivity"])
                         for f in ("test_patient26", "test_patient07")) for s in SETTINGS]
    cells += [f"{get[s]['test_patient26']['score']['pred_volume_ml']:.2f}" for s in SETTINGS]
    cells += ["–" if variant not in moved_variants else " / ".join(
        f"{get[s][f]['agreement']:.3f}" for f in ("test_patient07", "test_patient26"))
              for s in SETTINGS]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def leave_one_out_arguments(ap: argparse.ArgumentParser, scratch: str) -> None:
  """The arguments of a study that predicts the leave-one-out's left-out exams again, the grid
  moved and not (this one and studies/offset_windows.py)."""
  ap.add_argument("--runs", required=True, help="leave-one-out workdirs of one recipe, a seed each")
  ap.add_argument("--threshold", type=float, default=0.5)
  ap.add_argument("--min-lesion-peak", type=float, default=0.75, help="the shipped mask rule")
  ap.add_argument("--move-mm", type=float, default=0.5, help="the grid moved this far per axis")
  ap.add_argument("--moved-inputs", default="all,FLAIR",
                  help="inputs predicted again on the moved grid (each costs 2 maps per seed)")
  ap.add_argument("--labelled", default="../shared/data/lesjak_mni")
  ap.add_argument("--scratch", default=scratch)
  ap.add_argument("--note", default="")
  ap.add_argument("--out", required=True)


def checked_runs(ap: argparse.ArgumentParser, args) -> tuple[list, list]:
  """(the runs, the inputs predicted moved) of leave_one_out_arguments, refused in one line when a
  run lacks a fold's network or an input is unknown."""
  runs = [r.strip() for r in args.runs.split(",") if r.strip()]
  for run in runs:
    for fold in FOLDS:
      where = os.path.join(run, "folds", fold, STRATEGY)
      if not os.path.isdir(where):
        ap.error(f"{run}: no network of fold {fold} ({where} is missing)")
  moved_variants = [v.strip() for v in args.moved_inputs.split(",") if v.strip()]
  unknown = sorted(set(moved_variants) - set(VARIANTS))
  if unknown:
    ap.error(f"--moved-inputs {unknown}: one of {', '.join(VARIANTS)}")
  return runs, moved_variants


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  leave_one_out_arguments(ap, "/tmp/grid_phases")
  args = ap.parse_args(argv)
  runs, moved_variants = checked_runs(ap, args)
  min_mm3 = float(loo_config.get_config().predict.min_lesion_mm3)
  result = scores(runs, Maps(args.labelled, args.scratch), args.threshold, min_mm3,
                  args.min_lesion_peak, args.move_mm, moved_variants)
  move = float(np.sqrt(3) * args.move_mm)
  text = [results.header("Test-time grid phases on the Lesjak leave-one-out (0CF, ensembles of "
                         "seeds, Dice and lesion F1 %)", argv=argv)]
  if args.note:
    text += [args.note, ""]
  text += [f"{len(runs)} seeds' fold networks ({', '.join(os.path.basename(r) for r in runs)}); "
           "each left-out exam predicted two ways at the same compute (8 network passes per "
           "seed): " + "; ".join(f"`{k}`, {v}" for k, v in SETTINGS.items()) + f". The seeds' "
           f"maps averaged, p >= {args.threshold:g}, lesions peaking at "
           f"{args.min_lesion_peak:g} kept, scored as the leave-one-out scores (mean Dice: "
           "patient07's and patient26's). 'Mask against itself moved': the Dice between the mask "
           f"and the same prediction with the model grid moved {args.move_mm:g} mm along each "
           f"axis ({move:.2f} mm) before sampling, as another registration or visit moves it "
           "(1.000: the mask did not move).", ""]
  text += table(result, moved_variants) + [""]
  results.write(args.out, "\n".join(text))
  print("\n".join(text[-len(VARIANTS) - 3:]))
  print(f"[grid_phases] -> {args.out}")


if __name__ == "__main__":
  main()
