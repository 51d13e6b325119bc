"""The stage chain every composite job runs: pretrain, fine-tune a strategy, predict, evaluate.

The demo, the paper's experiment and leave-one-out compose these; each call writes into its own
workdir and returns what it produced. Strategy names are the paper's (VAN, 0CF, 1CF, ...).
"""
from __future__ import annotations

from msjax import config_base
from msjax.evaluate import evaluate_mode
from msjax.infer import predict as predict_lib
from msjax.train import loop, optim

# the measures composite jobs tabulate, with their column names
MEASURES = (("dice", "Dice"), ("sensitivity", "Sensitivity"), ("precision", "Precision"),
            ("lesion_f1", "Lesion F1"))


def strategy_names(text: str) -> list[str]:
  """'van,0,3CF' -> ['VAN', '0CF', '3CF'] (validated)."""
  return [optim.strategy_name(s) for s in config_base.parse_list(text)]


def freeze_value(strategy: str) -> str:
  """'VAN' -> 'van', '3CF' -> '3': the train.freeze value of a strategy name."""
  transfer, n = optim.parse_strategy(strategy)
  return str(n) if transfer else "van"


def pretrain(data, model, train, seed: int, workdir: str) -> dict:
  return loop.train(config_base.stage("pretrain", data, model, train, seed), workdir)


def finetune(data, model, train, seed: int, workdir: str, *, strategy: str,
             init_from: str = "") -> dict:
  """Fine-tunes one strategy; resumes (or returns at once) when the workdir already holds it."""
  tc = config_base.train(**dict(train.to_dict(), freeze=freeze_value(strategy),
                                init_from=init_from))
  return loop.train(config_base.stage("finetune", data, model, tc, seed), workdir)


def predict(run_dir: str, exams, out_dir: str, predict_cfg, seed: int = 0, *,
            sampler: str | None = None) -> list[dict]:
  """Segments `exams` with the network fine-tuned in run_dir; masks in each exam's own space."""
  p = predict_cfg
  predictor = predict_lib.Predictor(run_dir, batch_size=p.batch_size, mirror=p.mirror)
  return predict_lib.predict_cohort(predictor, exams, out_dir, sampler=sampler or p.sampler,
                                    overlap=p.overlap, n_random=p.n_random,
                                    threshold=p.threshold, seed=seed,
                                    min_lesion_mm3=p.min_lesion_mm3,
                                    allow_any_geometry=p.allow_any_geometry)


def evaluate(cohort, pred_dir: str, exams, out_dir: str | None = None) -> dict:
  """Scores predictions against the exams' references; writes summary.json + metrics.csv."""
  summary = evaluate_mode.evaluate_predictions(cohort, pred_dir, exams=exams)
  if out_dir:
    evaluate_mode.write_summary(summary, out_dir)
  return summary

