"""`leave_one_out` mode: the whole method on real scans, one labelled patient left out at a time.

1. preprocess: raw, unlabelled exams (`unlabelled_raw`) -> the 128³ MNI grid (skipped when an
   earlier run of this workdir finished it);
2. pretrain: position regression on every scan there is, labelled and unlabelled (no label is
   read; scans of the patients left out later are in it too, as at a hospital, where the scan to
   segment is there before anyone labels it);
3. per fold (one labelled patient P left out): fine-tune each strategy on the other labelled
   patients, predict P in its original space, score it against P's consensus; fit a FLAIR
   threshold on the same training patients, apply it to P, score it with the same code;
4. results.md / results.csv, scores.png, slices_<P>.png, leave_one_out.json (with stage times).

Every stage resumes: finished training runs are not repeated when the command is run again.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import logging

from msjax import config_base, errors, figures, files, stages
from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.data import nifti
from msjax.evaluate import baseline, metrics, outlines
from msjax.evaluate import variants as variants_lib
from msjax.infer import outputs
from msjax.infer import predict as predict_lib

MEASURES = stages.MEASURES
BASELINE = "FLAIR threshold"
KEEP = ("dice", "sensitivity", "precision", "lesion_f1", "lesion_sensitivity",
        "lesion_precision", "pred_volume_ml", "ref_volume_ml", "hd95_mm")


def _existing(path: str, what: str) -> str:
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise errors.InvalidInputError(f"{path}: the {what} folder does not exist (set "
                                       f"--config.{what}=PATH)")
  return path


def preprocess_raw(config, workdir: str) -> list[manifest_lib.Exam]:
  """Raw exams -> <workdir>/preprocessed/cohort; reused when a previous run completed it."""
  out = os.path.join(workdir, "preprocessed")
  manifest = os.path.join(out, "cohort", manifest_lib.MANIFEST_NAME)
  raw = cohort_lib.load_cohort(_existing(config.unlabelled_raw, "unlabelled_raw"))
  if os.path.exists(manifest):
    done = cohort_lib.load_cohort(manifest)
    if {e.exam_id for e in done.exams} == {e.exam_id for e in raw.exams}:
      logging.info("[leave_one_out] reusing the preprocessed exams in %s", manifest)
      return list(done.exams)
  pc = config_base.allow_any_geometry(
      config_base.preprocess(**dict(config.preprocess.to_dict(), input=raw.root)),
      config.allow_any_geometry)
  _run_preprocessing(pc, out)
  return list(cohort_lib.load_cohort(manifest).exams)


def _run_preprocessing(block, out: str) -> None:
  """preprocess mode on a block into `out`; any failed exam stops the job, named there."""
  from msjax.preprocess import run as preprocess_run
  summary = preprocess_run.run(block, out)
  if summary["failures"]:
    raise RuntimeError(f"preprocessing failed for {len(summary['failures'])} exam(s) of "
                       f"{block.input}; see {out}/preprocess_summary.json")


@dataclasses.dataclass(frozen=True)
class LabelledPreprocessing:
  """The labelled exams put through msjax's pipeline (config.preprocess_labelled): what training
  reads, and how the left-out patient's files are to be made into the same."""
  exams: dict                # exam id -> the preprocessed exam (on the 128³ grid, masks carried)
  options: object            # preprocess_run.Options they were made with
  standard: dict             # their Nyúl landmarks
  maps_registration: str     # the lesion maps onto the new grid (transplant.read_registration)

  def test_exam(self, exam, out_root: str):
    """A left-out exam (or a variant of it, from its own files) made as the training exams
    were: its own MNI registration, the training exams' Nyúl landmarks. Reused when made."""
    from msjax.preprocess import run as preprocess_run
    return preprocess_run.preprocess_one(exam, out_root=out_root, options=self.options,
                                         standard=self.standard)


PREPROCESS_LABELLED = ("", "stripped", "raw")


def preprocess_labelled(config, workdir: str) -> LabelledPreprocessing:
  """The labelled cohort -> <workdir>/preprocessed_labelled/cohort, as a user's exam becomes at
  `segment`: "stripped" (exams already bias-corrected, skull-stripped and in MNI space, like
  lesjak_mni: preprocess_run.for_stripped_exams) or "raw" (the whole pipeline). Nyúl landmarks
  are fitted on these exams (intensities only, no label). Reused when an earlier run made it
  with the same options."""
  import json

  from msjax.preprocess import native as native_lib
  from msjax.preprocess import run as preprocess_run
  if config.preprocess_labelled not in PREPROCESS_LABELLED[1:]:
    raise ValueError(f"preprocess_labelled={config.preprocess_labelled!r}: one of "
                     f"{PREPROCESS_LABELLED}")
  out = os.path.join(workdir, "preprocessed_labelled")
  block = config_base.allow_any_geometry(
      config_base.preprocess(**dict(config.preprocess.to_dict(),
                                    input=_existing(config.labelled, "labelled"))),
      config.allow_any_geometry)
  if config.preprocess_labelled == "stripped":
    block.update(preprocess_run.STRIPPED)
  options = preprocess_run.Options.from_config(block, config.allow_any_geometry)
  manifest = os.path.join(out, "cohort", manifest_lib.MANIFEST_NAME)
  made = os.path.join(out, "cohort", manifest_lib.PREPROCESSING_NAME)
  wanted = {e.exam_id for e in cohort_lib.load_cohort(block.input).exams}
  reuse = False
  if os.path.exists(manifest) and os.path.exists(made):
    with open(made) as f:
      reuse = (json.load(f)["options"] == json.loads(json.dumps(dataclasses.asdict(options)))
               and {e.exam_id for e in cohort_lib.load_cohort(manifest).exams} == wanted)
  if reuse:
    logging.info("[leave_one_out] reusing the preprocessed labelled exams in %s", manifest)
  else:
    logging.info("[leave_one_out] the labelled exams through msjax's pipeline (%s: %s)",
                 config.preprocess_labelled, options)
    _run_preprocessing(block, out)
  done = cohort_lib.load_cohort(manifest)
  with open(os.path.join(out, "nyul_landmarks.json")) as f:
    standard = json.load(f)
  # the lesion maps lie in the space the labelled exams came in: the mean of their
  # registrations carries them onto the new grid
  matrix = native_lib.mean_world_matrix([e.native["transform"] for e in done.exams])
  registration = files.write_text(
      "\n".join(" ".join(f"{v:.8f}" for v in row) for row in matrix) + "\n",
      os.path.join(out, "lesion_maps_registration.txt"))
  return LabelledPreprocessing(exams={e.exam_id: e for e in done.exams}, options=options,
                               standard=standard, maps_registration=registration)


def write_manifest(exams, path: str) -> str:
  ids = [e.exam_id for e in exams]
  dup = sorted({i for i in ids if ids.count(i) > 1})
  if dup:
    raise errors.InvalidInputError(f"exam ids appear in more than one cohort: {dup}; rename "
                                       "the exam folders so that ids are unique")
  cohort = manifest_lib.Cohort(root=os.path.dirname(path), exams=tuple(exams))
  manifest_lib.save_cohort(cohort, path)
  return path


@dataclasses.dataclass
class Results:
  """What the folds accumulate: score rows, the baseline's thresholds, slice figures,
  calibration curves and wall time per stage."""
  rows: list = dataclasses.field(default_factory=list)
  thresholds: dict = dataclasses.field(default_factory=dict)
  slice_figures: dict = dataclasses.field(default_factory=dict)
  curves: dict = dataclasses.field(default_factory=dict)
  times: dict = dataclasses.field(default_factory=dict)

  def timed(self, name: str, fn, *args, **kwargs):
    t = time.time()
    out = fn(*args, **kwargs)
    self.times[name] = time.time() - t
    return out


def run(config, workdir: str):
  t_all = time.time()
  workdir = os.path.abspath(workdir)
  res = Results()
  labelled, folds, strategies, pre_manifest, prep = plan(config, workdir, res)
  if config.pretrained:  # an encoder pretrained before (a workdir or a shipped encoder's name)
    pre_dir = config.pretrained
    logging.info("[leave_one_out] no pretraining here: the encoder of %s", pre_dir)
  else:
    pre_dir = os.path.join(workdir, "pretrain")
    res.timed("pretrain", stages.pretrain, config, _data(config, pre_manifest), pre_dir)
  for fold in folds:
    run_fold(config, workdir, fold, labelled, strategies, pre_dir, res, prep)
  res.times["total"] = time.time() - t_all
  return report(config, workdir, res, strategies, folds)


def _data(config, cohort: str, prep: LabelledPreprocessing | None = None):
  extra = {"lesion_maps_registration": prep.maps_registration} if prep else {}
  return config_base.data(**dict(config.data.to_dict(), cohort=cohort, **extra))


def plan(config, workdir: str, res: Results):
  """(labelled exams, folds, strategies, pretraining manifest, the labelled exams'
  preprocessing or None): the inputs checked, the labelled exams preprocessed when asked, the
  raw unlabelled exams preprocessed, every scan written into the pretraining cohort."""
  labelled_cohort = cohort_lib.load_cohort(_existing(config.labelled, "labelled"))
  labelled = labelled_cohort.select(labelled=True)
  patients = sorted({e.patient_id for e in labelled})
  if len(patients) < 2:
    raise errors.InvalidInputError(f"{labelled_cohort.root}: leave-one-patient-out needs "
                                   f"labelled exams of ≥ 2 patients, found {patients}")
  folds = config_base.parse_list(config.folds) or patients
  unknown = sorted(set(folds) - set(patients))
  if unknown:
    raise ValueError(f"folds {unknown} are not labelled patients of {labelled_cohort.root} "
                     f"({patients})")
  strategies = stages.strategy_names(config.strategies)
  stages.check_schedules(config)
  prep = (res.timed("preprocess labelled", preprocess_labelled, config, workdir)
          if config.preprocess_labelled else None)
  # the labelled cohort's own unlabelled exams go to pretraining too
  unlabelled: list[manifest_lib.Exam] = [prep.exams.get(e.exam_id, e) if prep else e
                                         for e in labelled_cohort.select(labelled=False)]
  if config.unlabelled_raw and not config.pretrained:  # unlabelled exams are for pretraining
    unlabelled += res.timed("preprocess", preprocess_raw, config, workdir)
  for path in config_base.parse_list(config.unlabelled):
    unlabelled += list(cohort_lib.load_cohort(_existing(path, "unlabelled")).exams)
  seen = [prep.exams[e.exam_id] for e in labelled] if prep else labelled  # what training reads
  pre_manifest = write_manifest([dataclasses.replace(e, split="train")
                                 for e in seen + unlabelled],
                                os.path.join(workdir, "cohorts", "pretrain.json"))
  if not config.pretrained:
    logging.info("[leave_one_out] pretraining on %d scans (%d labelled, %d unlabelled)",
                 len(labelled) + len(unlabelled), len(labelled), len(unlabelled))
  logging.info("[leave_one_out] folds %s; strategies %s", folds, strategies)
  return labelled, folds, strategies, pre_manifest, prep


def run_fold(config, workdir: str, fold: str, labelled, strategies, pre_dir: str,
             res: Results, prep: LabelledPreprocessing | None = None) -> None:
  """Patient `fold` left out: every strategy fine-tuned, predicted and scored, the FLAIR
  threshold fitted and scored, the slice figure of each left-out exam. With `prep`, training
  reads the preprocessed exams and the left-out exams (and each variant, made from their own
  files) are preprocessed as a user's exam is at `segment`; masks are scored in their space."""
  fold_dir = os.path.join(workdir, "folds", f"test_{fold}")
  exams = [dataclasses.replace(e, split="test" if e.patient_id == fold else "train")
           for e in labelled]
  manifest = write_manifest(exams, os.path.join(workdir, "cohorts", f"test_{fold}.json"))
  cohort = cohort_lib.load_cohort(manifest)
  test, train_exams = cohort.select(split="test"), cohort.select(split="train")
  train_manifest = manifest
  if prep:
    train_manifest = write_manifest(
        [dataclasses.replace(prep.exams[e.exam_id], split=e.split) for e in exams],
        os.path.join(workdir, "cohorts", f"test_{fold}_preprocessed.json"))
  masks = {}
  for strategy in strategies:
    run_dir = os.path.join(fold_dir, strategy)
    res.timed(f"finetune {fold} {strategy}", stages.finetune, config,
              _data(config, train_manifest, prep), run_dir, strategy=strategy,
              init_from=pre_dir)
    # one network for the exams and their variants: compiled once, not once per variant
    predictor = predict_lib.Predictor(run_dir)
    for variant in ["all"] + [v for v in variants_lib.parse(config.input_variants)
                              if v != "all"]:
      label = f"{fold} {strategy}" + ("" if variant == "all" else f" [{variant}]")
      pred_dir = res.timed(f"predict {label}", run_variant, config, cohort, test, fold,
                           strategy, variant, run_dir, res, predictor, prep, workdir)
      if variant == "all":
        masks[strategy] = pred_dir
        for exam in test:
          if exam.reference:
            res.curves[(fold, strategy, exam.exam_id)] = threshold_curve(
                outputs.paths(pred_dir, exam)["probseg"], exam.reference)
  masks[BASELINE] = res.timed(f"baseline {fold}", run_baseline, config, cohort, fold, fold_dir,
                              res)
  for exam in test:
    flair = exam.images.get("FLAIR")
    if flair and exam.reference:
      res.slice_figures[exam.exam_id] = outlines.outline_figure(
          flair, exam.reference,
          {name: outputs.paths(d, exam)["mask"] for name, d in masks.items()},
          os.path.join(workdir, f"slices_{exam.exam_id}.png"),
          title=f"{exam.exam_id} left out (trained on "
                f"{', '.join(sorted({e.patient_id for e in train_exams}))})",
          n_slices=config.figure_slices)


def run_variant(config, cohort, test, fold: str, strategy: str, variant: str, run_dir: str,
                res: Results, predictor: predict_lib.Predictor | None = None,
                prep: LabelledPreprocessing | None = None, workdir: str = "") -> str:
  """The left-out exams as a user may have them ('all', or fewer sequences, thick slices:
  msjax/evaluate/variants.py), segmented by the same network and scored as '<strategy>' or
  '<strategy> [<variant>]'; returns the predictions folder."""
  folder = run_dir if variant == "all" else os.path.join(run_dir, "variants", variant)
  exams = [variants_lib.make(e, variant, os.path.join(folder, "images")) for e in test]
  network_exams = exams
  if prep:  # each variant from its own files, as segment makes a user's exam
    network_exams = [prep.test_exam(e, os.path.join(workdir, "preprocessed_test", variant))
                     for e in exams]
  pred_dir = os.path.join(folder, "predictions")
  stages.predict(run_dir, network_exams, pred_dir, stages.predict_options(config), predictor)
  name = strategy if variant == "all" else f"{strategy} [{variant}]"
  res.rows += _score(cohort, pred_dir, exams, fold, name, folder,
                     f"p >= {config.predict.threshold:g}")
  return pred_dir


def run_baseline(config, cohort, fold: str, fold_dir: str, res: Results) -> str:
  """The FLAIR threshold fitted on the fold's training exams, applied to the left-out ones and
  scored; returns the folder of its masks."""
  test, train_exams = cohort.select(split="test"), cohort.select(split="train")
  fit = baseline.fit_threshold(train_exams, allow_any_geometry=config.allow_any_geometry)
  res.thresholds[fold] = {k: v for k, v in fit.items() if k != "curve"}
  base_dir = os.path.join(fold_dir, "flair_threshold")
  pred_dir = os.path.join(base_dir, "predictions")
  baseline.write_threshold_masks(test, fit["threshold_z"], pred_dir,
                                 allow_any_geometry=config.allow_any_geometry)
  files.write_json(fit, os.path.join(base_dir, "threshold.json"))
  res.rows += _score(cohort, pred_dir, test, fold, BASELINE, base_dir,
                     f"FLAIR z >= {fit['threshold_z']:.2f}")
  return pred_dir


def report(config, workdir: str, res: Results, strategies, folds) -> dict:
  """results.md/csv, scores.png, calibration.png and leave_one_out.json; prints the table."""
  variants = [f"{s} [{v}]" for s in strategies
              for v in variants_lib.parse(config.input_variants) if v != "all"]
  written = write_outputs(res.rows, strategies + variants + [BASELINE], folds, workdir)
  written.update({f"slices_{k}": v for k, v in res.slice_figures.items()})
  if res.curves:
    written["calibration_png"] = calibration_figure(res.curves, config.predict.threshold,
                                                    os.path.join(workdir, "calibration.png"))
  files.write_json({"rows": res.rows, "thresholds": res.thresholds, "times_s": res.times,
                    "calibration": [{"fold": f, "method": m, "exam_id": e, **c}
                                    for (f, m, e), c in res.curves.items()],
                    "outputs": written}, os.path.join(workdir, "leave_one_out.json"))
  print(open(written["table_md"]).read())
  print("[leave_one_out] wall time per stage: " + ", ".join(
      f"{k} {v:.0f} s" for k, v in res.times.items()))
  print("\n".join(f"  {k}: {v}" for k, v in written.items()))
  return {"rows": res.rows, "times_s": res.times, "outputs": written}


def _score(cohort, pred_dir, exams, fold, method, run_dir, threshold: str) -> list[dict]:
  summary = stages.evaluate(cohort, pred_dir, exams, run_dir)
  return [{"fold": fold, "method": method, "exam_id": r["exam_id"], "threshold": threshold,
           **{k: r[k] for k in KEEP}} for r in summary["exams"]]


def write_outputs(rows, methods, folds, workdir: str) -> dict:
  results_csv = files.write_csv(rows, os.path.join(workdir, "results.csv"))
  md = ["Left-out patient scores (%; mask volumes in mL)", "",
        "| left out | method | Dice | Sensitivity | Precision | Lesion F1 | predicted mL | "
        "reference mL | threshold |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for fold in folds:
    for m in methods:
      for r in (r for r in rows if r["fold"] == fold and r["method"] == m):
        md.append(f"| {fold} | {m} | " + " | ".join(_pct(r[k]) for k, _ in MEASURES)
                  + f" | {r['pred_volume_ml']:.2f} | {r['ref_volume_ml']:.2f} | "
                  f"{r['threshold']} |")
  md += ["", "| method | mean Dice | mean Sensitivity | mean Precision | mean Lesion F1 | n |",
         "| --- | --- | --- | --- | --- | --- |"]
  for m in methods:
    sel = [r for r in rows if r["method"] == m]
    mean, n = metrics.mean_over_defined(sel, [k for k, _ in MEASURES])
    md.append(f"| {m} | " + " | ".join(
        _pct(mean[k]) + ("" if n[k] == len(sel) else f" (n={n[k]})") for k, _ in MEASURES)
        + f" | {len(sel)} |")
  nets = [m for m in methods if m != BASELINE]
  md.append("")
  for fold in folds:
    base = _mean_dice(rows, fold, BASELINE)
    for m in nets:
      net = _mean_dice(rows, fold, m)
      if base is not None and net is not None:
        md.append(f"- {fold}: {m} Dice {100 * net:.1f} vs FLAIR threshold {100 * base:.1f} -> "
                  + ("beats the baseline" if net > base else "DOES NOT beat it"))
  table_md = files.write_text("\n".join(md) + "\n", os.path.join(workdir, "results.md"))
  return {"table_md": table_md, "results_csv": results_csv,
          "scores_png": scores_figure(rows, methods, folds, os.path.join(workdir, "scores.png"))}


def _pct(value) -> str:
  return "undef" if value is None else f"{100 * value:.1f}"


def _mean_dice(rows, fold, method):
  sel = [r for r in rows if r["fold"] == fold and r["method"] == method]
  return metrics.mean_over_defined(sel, ["dice"])[0]["dice"] if sel else None


CURVE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def threshold_curve(probability_path: str, reference_path: str) -> dict:
  """Dice and predicted volume of a probability map at every threshold: for looking at how
  calibrated a model is on the left-out patient; nothing is chosen from it."""
  prob = nifti.read_nifti(probability_path).data
  ref = nifti.read_nifti(reference_path, kind="mask").data > 0
  voxel_ml = nifti.read_nifti(reference_path, kind="mask").grid.voxel_ml
  dice = [metrics.voxel_metrics(prob >= t, ref)["dice"] for t in CURVE_THRESHOLDS]
  volume = [float((prob >= t).sum()) * voxel_ml for t in CURVE_THRESHOLDS]
  return {"threshold": list(CURVE_THRESHOLDS), "dice": dice, "predicted_ml": volume,
          "reference_ml": float(ref.sum()) * voxel_ml}


def calibration_figure(curves: dict, threshold: float, path: str) -> str:
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for (fold, method, exam_id), c in curves.items():
    line, = axes[0].plot(c["threshold"], [np.nan if d is None else d for d in c["dice"]], "o-",
                         ms=3, label=f"{exam_id} left out, {method}")
    axes[1].plot(c["threshold"], np.array(c["predicted_ml"]) / c["reference_ml"], "o-", ms=3,
                 color=line.get_color())
  for ax in axes:
    ax.axvline(threshold, color="gray", ls="--", lw=1)
    ax.set_xlabel("probability threshold")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("Dice on the left-out patient")
  axes[1].set_ylabel("predicted / reference volume")
  axes[1].axhline(1.0, color="gray", lw=1)
  axes[0].legend(fontsize=7)
  fig.suptitle("Calibration, post hoc: where the left-out patient's best threshold lies (the "
               f"masks use {threshold:g}, dashed; nothing here chooses it)", fontsize=10)
  return figures.save_figure(fig, path)


def scores_figure(rows, methods, folds, path: str) -> str:
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(MEASURES), figsize=(3.6 * len(MEASURES), 3.8), sharey=True)
  width = 0.8 / max(len(methods), 1)
  for ax, (key, label) in zip(axes, MEASURES):
    for i, m in enumerate(methods):
      vals = [100 * np.mean([r[key] for r in rows if r["fold"] == f and r["method"] == m
                             and r[key] is not None] or [np.nan]) for f in folds]
      xs = np.arange(len(folds)) + (i - (len(methods) - 1) / 2) * width
      bars = ax.bar(xs, vals, width, label=m)
      ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(folds)), [f"test {f}" for f in folds], fontsize=8)
    ax.set_title(f"{label} (%)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, 100)
  axes[0].legend(fontsize=8)
  fig.suptitle("Leave-one-patient-out on real scans: network strategies vs a FLAIR threshold")
  return figures.save_figure(fig, path)
