"""Checkpoint averaging (train.average_last, stochastic weight averaging) on the Lesjak
leave-one-out: each fold network's last step against the mean of the params of its last K
checkpoints, the same training run (paired: one trajectory, no seed between the arms).

The leave-one-out must have kept its checkpoints (`--config.finetune.keep_checkpoints=30`, every
100 steps). Each left-out exam is predicted again by each averaged network (8 grid phases, the
leave-one-out's own predict settings); `last` is the leave-one-out's own maps.

  python studies/weight_average.py --runs runs/loo_swa_s0 --average 2,6,12 \\
      --out docs/results/weight_average.md
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax import checkpoint  # noqa: E402
from msjax.configs import leave_one_out as loo_config  # noqa: E402
from msjax.infer import predict  # noqa: E402
from studies import grid_phases, results, seed_ensemble  # noqa: E402

FOLDS, VARIANTS, STRATEGY = seed_ensemble.FOLDS, seed_ensemble.VARIANTS, seed_ensemble.STRATEGY


def averaged_params(fold_dir: str, k: int):
  """The mean of the params of the last k checkpoints in fold_dir/checkpoints, and their steps."""
  directory = os.path.abspath(os.path.join(fold_dir, checkpoint.CHECKPOINTS))
  with ocp.CheckpointManager(directory, item_names=("params",),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    steps = sorted(m.all_steps())[-k:]
    if len(steps) < k:
      raise SystemExit(f"{directory}: {len(steps)} checkpoints kept, {k} asked (run the "
                       "leave-one-out with --config.finetune.keep_checkpoints=30)")
    return checkpoint.average(m, steps, checkpoint.abstract_params(m, steps[-1])), steps


class AveragedMaps(grid_phases.Maps):
  """grid_phases.Maps whose setting `avgK` predicts with the fold network's last K checkpoints
  averaged (`last`: the leave-one-out's own maps)."""

  def __init__(self, labelled, scratch):
    options = predict.PredictOptions.from_config(loo_config.get_config().predict)
    super().__init__(labelled, scratch, options=lambda s: options, recorded_setting="last")
    self.networks, self.steps = {}, {}

  def __call__(self, run, fold, variant, setting, move_mm):
    if setting != "last":
      key = (run, fold, setting)
      if key not in self.networks:
        fold_dir = os.path.join(run, "folds", fold, STRATEGY)
        network = predict.Predictor(fold_dir)
        params, self.steps[key] = averaged_params(fold_dir, int(setting.removeprefix("avg")))
        network.params = jax.tree.map(jax.numpy.asarray, params)
        self.networks[key] = network
      self._predictors[(run, fold)] = self.networks[key]
    return super().__call__(run, fold, variant, setting, move_mm)


def table(result: dict, settings) -> list[str]:
  head = ["input", "weights", "mean Dice", "Dice 07 / 26", "lesion F1 26", "lesions found 26 / 07",
          "mL 07 / 26"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  pct = seed_ensemble._pct
  order = ("test_patient07", "test_patient26")
  for variant in VARIANTS:
    for name in settings:
      get = {f: result[(f, variant, name)]["score"] for f in FOLDS}
      lines.append("| " + " | ".join([
          variant, name, f"{100 * np.mean([get[f]['dice'] for f in FOLDS]):.1f}",
          " / ".join(f"{100 * get[f]['dice']:.1f}" for f in order),
          pct(get["test_patient26"]["lesion_f1"]),
          " / ".join(pct(get[f]["lesion_sensitivity"]) for f in order[::-1]),
          " / ".join(f"{get[f]['pred_volume_ml']:.2f}" for f in order)]) + " |")
  return lines


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  grid_phases.leave_one_out_arguments(ap, "/tmp/weight_average")
  ap.add_argument("--average", default="2,6,12",
                  help="K: the last K checkpoints averaged, comma-separated")
  args = ap.parse_args(argv)
  runs, _ = grid_phases.checked_runs(ap, args)
  settings = ["last"] + [f"avg{int(k)}" for k in args.average.split(",")]
  maps = AveragedMaps(args.labelled, args.scratch)
  min_mm3 = float(loo_config.get_config().predict.min_lesion_mm3)
  result = grid_phases.scores(runs, maps, args.threshold, min_mm3, args.min_lesion_peak, 0.0,
                              (), settings=tuple(settings))
  text = [results.header("Checkpoint averaging against the last step, Lesjak leave-one-out "
                         "(0CF, Dice and lesion F1 %)", argv=argv)]
  if args.note:
    text += [args.note, ""]
  steps = sorted({(k[2], f"{v[0]}-{v[-1]}") for k, v in maps.steps.items()})
  text += [f"{len(runs)} seed(s)' fold networks ({', '.join(os.path.basename(r) for r in runs)}),"
           " every left-out exam at the 8 grid phases (the leave-one-out's predict settings): "
           "`last`, each fold network's last step (the leave-one-out's own maps); `avgK`, the "
           "mean of the params of its last K checkpoints, 100 steps apart (steps "
           + ", ".join(f"{s}: {r}" for s, r in steps) + "). Seeds' maps averaged, "
           f"p >= {args.threshold:g}, lesions peaking at {args.min_lesion_peak:g} kept, scored as "
           "the leave-one-out scores (reference: patient07 1.30 mL, patient26 8.23 mL).", ""]
  text += table(result, settings) + [""]
  results.write(args.out, "\n".join(text))
  print("\n".join(text[-len(VARIANTS) * len(settings) - 3:]))
  print(f"[weight_average] -> {args.out}")


if __name__ == "__main__":
  main()
