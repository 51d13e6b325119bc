"""`demo` mode: the whole method on the built-in synthetic cohort, printing where each output went
and the final scores."""
import os
import time

from absl import logging

from msjax import config_base, files, stages
from msjax.data import inspect as inspect_lib
from msjax.data import synthetic
from msjax.evaluate import evaluate_mode, metrics


def run(config, workdir: str):
  t0 = time.time()
  times = {}
  s = config.synthetic
  cohort_dir = os.path.join(workdir, "cohort")
  spec = synthetic.SyntheticSpec(n_ms=s.n_ms, n_non_ms=s.n_non_ms, n_test=s.n_test,
                                 shape=tuple(s.shape), spacing_mm=s.spacing_mm, seed=config.seed)
  cohort = synthetic.write_synthetic_cohort(cohort_dir, spec, log=logging.info)
  print(inspect_lib.format_inspect_table(inspect_lib.inspect_cohort(
      cohort, patch_size=config.data.patch_size, model_shape=tuple(config.data.model_shape) or None)))
  times["synthetic"] = time.time() - t0

  data = config_base.data(**dict(config.data.to_dict(), cohort=cohort_dir))
  t = time.time()
  pre_dir = os.path.join(workdir, "pretrain")
  stages.pretrain(config, data, pre_dir)
  times["pretrain"] = time.time() - t

  t = time.time()
  ft_dir = os.path.join(workdir, "finetune")
  strategy = stages.strategy_names(config.finetune.freeze)[0]
  stages.finetune(config, data, ft_dir, strategy=strategy, init_from=pre_dir)
  times["finetune"] = time.time() - t

  t = time.time()
  test_exams = cohort.select(split="test")
  pred_dir = os.path.join(workdir, "predict", "predictions")
  predicted = stages.predict(ft_dir, test_exams, pred_dir, stages.predict_options(config))
  times["predict"] = time.time() - t

  t = time.time()
  eval_dir = os.path.join(workdir, "evaluate")
  summary = stages.evaluate(cohort, pred_dir, test_exams, eval_dir)
  js, csv_path = (os.path.join(eval_dir, "summary.json"), os.path.join(eval_dir, "metrics.csv"))
  times["evaluate"] = time.time() - t
  times["total"] = time.time() - t0
  files.write_json({"times_s": times, "mean": summary["mean"], "overlay": predicted[0]["overlay"]},
                   os.path.join(workdir, "demo.json"))
  m = summary["mean"]
  print("\n" + evaluate_mode.format_table(summary))
  print(f"""
[demo] done in {times['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items()
                                                   if k != 'total')})
  cohort       {cohort_dir}/cohort.json
  pretraining  {pre_dir}/ (loss_curve.png, metrics.jsonl, checkpoints/)
  fine-tuning  {ft_dir}/ ({strategy}; loss_curve.png, metrics.jsonl, best/)
  predictions  {pred_dir}/ (BIDS derivatives: sub-*/anat/ masks, probabilities, lesion tables)
  overlay      {predicted[0]['overlay']}
  evaluation   {js}, {csv_path}
  test exams ({summary['n']}): """ + "  ".join(
      f"{label} {metrics.fmt(m.get(key))}" for key, label in (
          ("dice", "Dice"), ("sensitivity", "sensitivity"), ("precision", "precision"),
          ("lesion_f1", "lesion F1"))))
  return summary
