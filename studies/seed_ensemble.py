"""Does averaging independently trained models (nnU-Net's ensemble, seeds instead of folds) lift
the Lesjak leave-one-out and narrow the seed-to-seed spread? Reads leave-one-out workdirs of one
recipe at several seeds (their saved probability maps: nothing is trained or predicted again),
averages each left-out exam's maps over the seeds, thresholds it as the leave-one-out did and
scores it with the same evaluator, beside each seed scored again from its own map (which must
give back the figures the leave-one-out recorded: the check that this script scores as it did).

  python studies/seed_ensemble.py --group 'pretraining ×4=runs/loo_pre2400_s0,runs/loo_pre2400_s1,\
runs/loo_pre2400_s2' --out docs/results/seed_ensemble.md
"""
from __future__ import annotations

import argparse
import os
import sys

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax.evaluate import ensemble, metrics  # noqa: E402
from msjax.infer import predict  # noqa: E402
from msjax.models import model as model_lib  # noqa: E402
from studies import results  # noqa: E402

FOLDS = ("test_patient07", "test_patient26")
VARIANTS = ("all", "FLAIR+T1W", "FLAIR+T2W", "FLAIR", "slab5mm")
STRATEGY = "0CF"
SWEEP = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)  # thresholds the ensemble's mean Dice is read at


def recorded(run: str, fold: str, variant: str) -> dict:
  return ensemble.recorded(run, fold, STRATEGY, variant)


def score(probability: np.ndarray, reference: np.ndarray, spacing, threshold: float,
          min_lesion_mm3: float, min_lesion_peak: float = 0.0) -> dict:
  """The leave-one-out's mask scored as `evaluate` scores a mask file; arrays in the files'
  voxel order."""
  return metrics.evaluate_masks(ensemble.mask_at(probability, spacing, threshold,
                                                 min_lesion_mm3, min_lesion_peak),
                                reference, spacing)


def _file_array(path: str) -> np.ndarray:
  return np.asarray(nib.load(path).dataobj, np.float32)


MODES = {"saved": "the leave-one-out's own maps, as its predict settings made them (8-flip "
                  "mirroring until 2026-12-06, the 8 grid phases since: 8 passes per member)",
         "none": "predicted again by each fold's network without test-time mirroring (1 pass "
                 "per member)",
         "spread": "predicted again by each fold's network with the 8 flips spread over the "
                   "overlapping windows (each window once, in one flip: 1 pass per member)",
         "dealt": "predicted again with the 8 flips of every window dealt out over the members "
                  "(predict.flips='dealt': seed k's network sees its k-th share, 8 passes in "
                  "all)",
         "phases": "predicted again by each fold's network at the 8 half-voxel phases of the "
                   "model grid, phase k in flip k (predict.phases=8: 8 passes per member, as "
                   "`saved`)",
         "shipped": "predicted again as `segment` predicts with an ensemble: the 8 grid phases "
                    "dealt out over the seeds (phase k in flip k by seed k mod n, 8 passes in "
                    "all; each seed's columns from its own phases, the ensemble the mean of the "
                    "8)"}


class Repredict:
  """Each seed's map made again by its fold's network with other test-time settings (the
  leave-one-out saved only its 8-flip maps): the left-out exam as the leave-one-out gave it.
  Maps are kept in `folder` (float16), so that the results file is written again in minutes."""

  def __init__(self, mode: str, runs: list[str], threshold: float, labelled: str, folder: str):
    from msjax.configs import leave_one_out as loo_config
    from msjax.data import cohort as cohort_lib
    self.options = predict.PredictOptions.from_config(
        loo_config.get_config().predict, mirror=mode in ("spread", "dealt", "phases", "shipped"),
        flips="all" if mode in ("dealt", "phases", "shipped") else "spread", threshold=threshold,
        phases=8 if mode in ("phases", "shipped") else 1)
    self.mode, self.folder, self._predictors = mode, folder, {}
    self.runs = runs  # the group's runs, in order: seed k's share of the flips when dealt
    self.exams = {e.exam_id: e for e in cohort_lib.load_cohort(labelled).exams}

  def phase_share(self, run: str) -> list[int]:
    """The grid phases seed `run` predicts in mode 'shipped' (phase_member's k mod n)."""
    return [k for k in range(8) if k % len(self.runs) == self.runs.index(run)]

  def weight(self, run: str) -> float:
    """The seed's weight in the ensemble's mean: its share of the 8 phases in mode 'shipped'
    (3 seeds: 3 / 3 / 2), else 1."""
    return len(self.phase_share(run)) if self.mode == "shipped" else 1.0

  def __call__(self, run: str, fold: str, variant: str) -> np.ndarray:
    from msjax.evaluate import variants as variants_lib
    mode = (f"{self.mode}{self.runs.index(run)}of{len(self.runs)}"
            if self.mode in ("dealt", "shipped") else self.mode)
    key = "_".join([os.path.abspath(run).strip("/").replace("/", "-"), fold, variant, mode])
    kept = os.path.join(self.folder, "maps", key + ".npy")
    if os.path.exists(kept):
      return np.load(kept).astype(np.float32)
    if (run, fold) not in self._predictors:
      where = os.path.join(run, "folds", fold, STRATEGY)
      self._predictors[(run, fold)] = (
          FlipShare(where, model_lib.dealt_flips(len(self.runs))[self.runs.index(run)])
          if self.mode == "dealt" else predict.Predictor(where))
    exam = variants_lib.make(self.exams[fold.removeprefix("test_")], variant,
                             os.path.join(self.folder, "variants", variant))
    probability = predict.segment_exam(  # mode 'shipped': this seed's share of the phases
        self._predictors[(run, fold)], exam, self.options,
        only=self.phase_share(run) if self.mode == "shipped" else None).probability
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    np.save(kept + ".tmp.npy", probability.astype(np.float16))
    os.replace(kept + ".tmp.npy", kept)
    return probability  # in the exam file's voxel order, as the saved maps


class FlipShare(predict.Predictor):
  """A fold's network that mirrors each patch in its share of the 8 flips only (seed k of an
  ensemble whose flips are dealt: model.dealt_flips)."""

  def __init__(self, where: str, share: tuple):
    super().__init__(where)
    self.share = share

  def predict_batch(self, x, mirror: bool = False, dealt: bool = False):
    if "share" not in self._predict:
      self._predict["share"] = model_lib.make_predict(self.model, "segmentation", mirror=True,
                                                      flips=self.share)
    return self._predict["share"](self.params, x)


def group_scores(runs: list[str], threshold: float, min_lesion_mm3: float,
                 repredict: Repredict | None = None, min_lesion_peak: float = 0.0,
                 ensemble_threshold: float | None = None) -> dict:
  """{(fold, variant): {"seeds": [row per run], "ensemble": row, "recorded": [dice per run]}}.
  The seeds are scored at the leave-one-out's `threshold` (so that the rescoring check holds),
  the ensemble at `ensemble_threshold` (None: the same)."""
  if ensemble_threshold is None:
    ensemble_threshold = threshold
  out = {}
  for fold in FOLDS:
    for variant in VARIANTS:
      rows = [recorded(r, fold, variant) for r in runs]
      ref = nib.load(rows[0]["reference"])
      reference, spacing = np.asarray(ref.dataobj) > 0, ref.header.get_zooms()[:3]
      maps = [repredict(run, fold, variant) if repredict else
              _file_array(ensemble.probability_path(row["prediction"]))
              for run, row in zip(runs, rows)]
      mean = np.average(maps, axis=0,
                        weights=[repredict.weight(r) if repredict else 1.0 for r in runs])
      out[(fold, variant)] = {
          "seeds": [score(m, reference, spacing, threshold, min_lesion_mm3) for m in maps],
          "ensemble": score(mean, reference, spacing, ensemble_threshold, min_lesion_mm3,
                            min_lesion_peak),
          "recorded": [float(r["dice"]) for r in rows],
          # Dice alone: the full scores' surface distances made the sweep most of the run time
          "sweep": dict(zip(SWEEP, ensemble.dice_by_threshold(mean, reference, spacing, SWEEP,
                                                               min_lesion_mm3,
                                                               min_lesion_peak)))}
      print(f"[seed_ensemble] {fold} {variant}: Dice " + " / ".join(
          f"{100 * x['dice']:.1f}" for x in out[(fold, variant)]["seeds"])
            + f", ensemble {100 * out[(fold, variant)]['ensemble']['dice']:.1f}", flush=True)
  return out


def _pct(value) -> str:
  """A share in percent, or '–' where it is undefined (no lesion to find, or none predicted)."""
  return "–" if value is None else f"{100 * value:.1f}"


def table(name: str, runs: list[str], scores: dict) -> list[str]:
  lines = [f"### {name}: {len(runs)} seeds ({', '.join(os.path.basename(r) for r in runs)})", "",
           "| input | mean Dice, each seed | seeds' mean ± sd | ensemble | lesion F1 26, each "
           "seed | ensemble | lesions found 26 / 07, ensemble | mL 26, each seed | ensemble | "
           "reference mL 26 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for variant in VARIANTS:
    per_fold = [scores[(f, variant)] for f in FOLDS]
    seed_dice = np.mean([[s["dice"] for s in p["seeds"]] for p in per_fold], axis=0) * 100
    ens_dice = np.mean([p["ensemble"]["dice"] for p in per_fold]) * 100
    p26 = scores[("test_patient26", variant)]
    f1 = [_pct(s["lesion_f1"]) for s in p26["seeds"]]
    found = " / ".join(_pct(scores[(f, variant)]["ensemble"]["lesion_sensitivity"])
                       for f in ("test_patient26", "test_patient07"))
    ml = [s["pred_volume_ml"] for s in p26["seeds"]]
    lines.append(
        f"| {variant} | {' / '.join(f'{d:.1f}' for d in seed_dice)} | {seed_dice.mean():.1f} ± "
        f"{seed_dice.std(ddof=1):.1f} | **{ens_dice:.1f}** | {' / '.join(f1)}"
        f" | **{_pct(p26['ensemble']['lesion_f1'])}** | {found} | "
        f"{' / '.join(f'{v:.2f}' for v in ml)} | {p26['ensemble']['pred_volume_ml']:.2f} | "
        f"{p26['seeds'][0]['ref_volume_ml']:.2f} |")
  return lines + [""]


def sweep_table(scores: dict) -> list[str]:
  """The ensemble's Dice, mean over both patients and every input, at each threshold."""
  means = {t: 100 * np.mean([s["sweep"][t] for s in scores.values()]) for t in SWEEP}
  best = max(means, key=means.get)
  return ["Ensemble, mean Dice over both patients and the five inputs, by threshold: "
          + ", ".join(f"{t:g}: {'**' if t == best else ''}{v:.1f}{'**' if t == best else ''}"
                      for t, v in means.items()) + ".", ""]


def check_rescoring(name: str, scores: dict) -> float:
  """Largest |Dice rescored here - Dice the leave-one-out recorded| over seeds, folds, inputs."""
  worst = 0.0
  for (fold, variant), s in scores.items():
    for got, want in zip([x["dice"] for x in s["seeds"]], s["recorded"]):
      worst = max(worst, abs(got - want))
  if worst > 1e-6:
    raise SystemExit(f"{name}: a seed rescored from its probability map differs from the "
                     f"leave-one-out's own Dice by {worst:.2g}: this script does not score as "
                     "it did")
  return worst


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--group", action="append", required=True,
                  help="'name[@mode]=run1,run2,...': leave-one-out workdirs of one recipe, one "
                       f"per seed; mode (test-time mirroring): {', '.join(MODES)} (default saved)")
  ap.add_argument("--threshold", type=float, default=0.5, help="the leave-one-out's threshold")
  ap.add_argument("--ensemble-threshold", type=float, default=None,
                  help="the ensembles' masks at this threshold instead (e.g. the one the sweep "
                       "picks); the seeds' own columns stay at --threshold")
  ap.add_argument("--min-lesion-mm3", type=float, default=0.0)
  ap.add_argument("--min-lesion-peak", type=float, default=0.0,
                  help="the ensembles' masks keep only lesions peaking at this (the seeds' own "
                       "columns stay as their leave-one-out scored them)")
  ap.add_argument("--labelled", default="../shared/data/lesjak_mni")
  ap.add_argument("--scratch", default="/tmp/seed_ensemble")
  ap.add_argument("--note", default="")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  for flag, value in (("--threshold", args.threshold),
                      ("--ensemble-threshold", args.ensemble_threshold)):
    if value is not None and not 0.0 < value <= 1.0:
      ap.error(f"{flag} {value:g}: a probability threshold must lie in (0, 1]")
  text = [results.header("Ensembles of seeds on the Lesjak leave-one-out (0CF, Dice and lesion "
                         "F1 %)", argv=argv)]
  if args.note:
    text += [args.note, ""]
  ens_threshold = args.threshold if args.ensemble_threshold is None else args.ensemble_threshold
  text += [f"Each left-out exam's probability maps averaged over the seeds, then p >= "
           f"{ens_threshold:g}"
           + (f" (each seed's own columns at its leave-one-out's {args.threshold:g})"
              if ens_threshold != args.threshold else "")
           + " and scored as the leave-one-out scores (mean Dice: the mean of "
           "patient07's and patient26's). The maps: "
           + "; ".join(f"`{k}`, {v}" for k, v in MODES.items())
           + ". With `saved`, each seed rescored from its own map gives back the leave-one-out's "
           "recorded Dice (checked). 'Lesions found': the share of the reference's lesions the "
           "ensemble's mask detects (lesion sensitivity, %, the MSSEG-2016 criterion of "
           "msjax/evaluate/metrics.py), patient26 then patient07."
           + (f" The ensembles' masks (ensemble columns and the threshold sweep) keep only "
              f"lesions whose highest probability reaches {args.min_lesion_peak:g} "
              "(predict.min_lesion_peak); each seed's columns are its leave-one-out's own."
              if args.min_lesion_peak else ""), ""]
  for spec in args.group:
    name, _, runs = spec.partition("=")
    name, _, mode = name.partition("@")
    mode = mode or "saved"
    runs = [r.strip() for r in runs.split(",") if r.strip()]
    repredict = (None if mode == "saved" else
                 Repredict(mode, runs, args.threshold, args.labelled, args.scratch))
    scores = group_scores(runs, args.threshold, args.min_lesion_mm3, repredict,
                          args.min_lesion_peak, ens_threshold)
    if repredict is None:
      check_rescoring(name, scores)
    lines = table(f"{name}, test-time mirroring `{mode}`", runs, scores) + sweep_table(scores)
    text += lines
    print("\n".join(lines), flush=True)
  results.write(args.out, "\n".join(text))
  print(f"[seed_ensemble] -> {args.out}")


if __name__ == "__main__":
  main()
