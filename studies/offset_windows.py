"""Offset windows (predict.phase_windows="offset") and central windows (predict.windows="central")
against a full sliding window in every grid phase (issue 36: the network's share of an exam's
time): on the Lesjak leave-one-out, left-out Dice and lesion F1 per input, how far the mask moves
with the model grid, seconds and patches.

Each left-out exam (1 mm MNI, ../shared/data/lesjak_mni) is predicted by each seed's fold network
at the 8 grid phases two ways: `all`, every phase its full 50 % overlap sliding window (the
leave-one-out's own maps, predict.phases=8, are these); `offset`, phase k only its share of that
window's windows (a patch apart, moved half a patch along k's axes; about 1/5 of the patches),
the phases' maps averaged by their windows' importance (sliding_window.OFFSET_SIGMA). Then the
whole model grid is moved by --move-mm along each axis and the exam predicted again both ways.
With --sigmas, the offset map again at each importance-map width (the choice of OFFSET_SIGMA).

  python studies/offset_windows.py --runs runs/loo_exam2d_s0 --out docs/results/offset_windows.md
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax.configs import leave_one_out as loo_config  # noqa: E402
from msjax.infer import predict, sliding_window  # noqa: E402
from studies import grid_phases, results, seed_ensemble  # noqa: E402

FOLDS, VARIANTS = seed_ensemble.FOLDS, seed_ensemble.VARIANTS


def settings_for(sigmas, central: bool = False) -> dict:
  """setting -> (PredictOptions, importance-map width of offset windows or None)."""
  full = predict.PredictOptions.from_config(loo_config.get_config().predict)
  out = {"all": (dataclasses.replace(full, phase_windows="all", windows="touching"), None)}
  if central:
    out["central"] = (dataclasses.replace(full, phase_windows="all", windows="central"), None)
  for sigma in sigmas:
    name = "offset" if sigma == sliding_window.OFFSET_SIGMA else f"offset_s{sigma:g}"
    out[name] = (dataclasses.replace(full, phase_windows="offset"), sigma)
  return out


class SigmaMaps(grid_phases.Maps):
  """grid_phases.Maps whose offset settings predict at their own importance-map width."""

  def __init__(self, labelled, scratch, settings):
    super().__init__(labelled, scratch, options=lambda s: settings[s][0], recorded_setting="all")
    self.settings = settings

  def __call__(self, run, fold, variant, setting, move_mm):
    sigma, kept = self.settings[setting][1], sliding_window.OFFSET_SIGMA
    try:
      if sigma is not None:
        sliding_window.OFFSET_SIGMA = sigma
      return super().__call__(run, fold, variant, setting, move_mm)
    finally:
      sliding_window.OFFSET_SIGMA = kept


def table(result: dict, maps: SigmaMaps, runs, settings, moved_variants, move_mm: float
          ) -> list[str]:
  names = list(settings)
  head = ["input", "setting", "mean Dice", "Dice 07 / 26", "lesion F1 26", "lesions found 26 / 07",
          "mL 26", "mask against itself moved, 07 / 26", "patches (s) a prediction, 07 / 26"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  pct = seed_ensemble._pct
  for variant in VARIANTS:
    for name in names:
      get = {f: result[(f, variant, name)] for f in FOLDS}
      order = ("test_patient07", "test_patient26")
      costs = [maps.cost(runs[0], f, variant, name) or maps.cost(runs[0], f, variant, name,
                                                                   move_mm) for f in order]
      cells = [variant, name, f"{100 * np.mean([get[f]['score']['dice'] for f in FOLDS]):.1f}",
               " / ".join(f"{100 * get[f]['score']['dice']:.1f}" for f in order),
               pct(get["test_patient26"]["score"]["lesion_f1"]),
               " / ".join(pct(get[f]["score"]["lesion_sensitivity"])
                          for f in ("test_patient26", "test_patient07")),
               f"{get['test_patient26']['score']['pred_volume_ml']:.2f}",
               "–" if variant not in moved_variants else " / ".join(
                   f"{get[f]['agreement']:.3f}" for f in order),
               " / ".join("–" if c is None else f"{c['patches']} ({c['seconds']:.0f})"
                          for c in costs)]
      lines.append("| " + " | ".join(cells) + " |")
  return lines


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  grid_phases.leave_one_out_arguments(ap, "/tmp/offset_windows")
  ap.add_argument("--sigmas", default=str(sliding_window.OFFSET_SIGMA),
                  help="importance-map widths of the offset windows, comma-separated")
  ap.add_argument("--central", action="store_true",
                  help="also a full window in every phase without the windows that only graze "
                       "the brain (predict.windows=central)")
  args = ap.parse_args(argv)
  runs, moved = grid_phases.checked_runs(ap, args)
  try:
    sigmas = [float(s) for s in args.sigmas.split(",")]
  except ValueError:
    ap.error(f"--sigmas {args.sigmas!r}: comma-separated numbers (widths in patches)")
  settings = settings_for(sigmas, args.central)
  maps = SigmaMaps(args.labelled, args.scratch, settings)
  min_mm3 = float(loo_config.get_config().predict.min_lesion_mm3)
  result = grid_phases.scores(runs, maps, args.threshold, min_mm3, args.min_lesion_peak,
                              args.move_mm, moved, settings=tuple(settings))
  what = "Offset and central windows" if args.central else "Offset windows"
  text = [results.header(f"{what} against a full window in every grid phase, Lesjak "
                         "leave-one-out (0CF, Dice and lesion F1 %)", argv=argv)]
  if args.note:
    text += [args.note, ""]
  text += [f"{len(runs)} seed(s)' fold networks ({', '.join(os.path.basename(r) for r in runs)}),"
           " every left-out exam at the 8 grid phases, phase k in flip k: `all`, a full sliding "
           "window (50 % overlap) in every phase, the leave-one-out's own maps; `offset`, phase k "
           "its share of that window's windows, the maps averaged by their windows' importance "
           f"(Gaussian of width {sliding_window.OFFSET_SIGMA:g} patch; `offset_sX`: width X); "
           "`central` (with --central), `all` without the windows that are no brain voxel's most "
           "central one (predict.windows='central'). "
           f"Seeds' maps averaged, p >= {args.threshold:g}, lesions peaking at "
           f"{args.min_lesion_peak:g} kept, scored as the leave-one-out scores. 'Mask against "
           f"itself moved': Dice against the same prediction with the model grid moved "
           f"{args.move_mm:g} mm along each axis ({np.sqrt(3) * args.move_mm:.2f} mm). Patches "
           "and seconds: one left-out exam's prediction by one network (the moved one where the "
           "leave-one-out's own map stands; seconds beside whatever else ran: compare "
           "patches).", ""]
  text += table(result, maps, runs, settings, moved, args.move_mm) + [""]
  results.write(args.out, "\n".join(text))
  print("\n".join(text[-len(VARIANTS) * len(settings) - 3:]))
  print(f"[offset_windows] -> {args.out}")


if __name__ == "__main__":
  main()
