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


def check_schedules(config) -> None:
  """A composite mode's pretraining and fine-tuning schedules built once up front, so that a
  misspelt train.lr_schedule is refused before hours of preprocessing and pretraining."""
  for train_config in (config.pretrain, config.finetune):
    optim.learning_rate(train_config)


def predict_options(config, **changes) -> predict_lib.PredictOptions:
  """The PredictOptions of a composite job's config: its predict block, seed and geometry
  switch."""
  return predict_lib.PredictOptions.from_config(
      config.predict, **{"seed": config.seed, "allow_any_geometry": config.allow_any_geometry,
                         **changes})


def pretrain(config, data, workdir: str) -> dict:
  """Pretrains with a composite job's model, pretrain block and seed on `data`."""
  return loop.train(config_base.stage("pretrain", data, config.model, config.pretrain,
                                      config.seed, any_geometry=config.allow_any_geometry),
                    workdir)


def finetune(config, data, workdir: str, *, strategy: str, init_from: str = "",
             seed: int | None = None) -> dict:
  """Fine-tunes one strategy with a composite job's model, finetune and predict blocks (the last
  for validation) on `data`; resumes (or returns at once) when the workdir already holds it.
  seed: another than the job's (an ensemble's further members)."""
  tc = config_base.train(**dict(config.finetune.to_dict(), freeze=freeze_value(strategy),
                                init_from=init_from))
  seed = config.seed if seed is None else seed
  return loop.train(config_base.stage("finetune", data, config.model, tc, seed,
                                      predict_cfg=config.predict,
                                      any_geometry=config.allow_any_geometry), workdir)


def predict(run_dir: str, exams, out_dir: str, options: predict_lib.PredictOptions,
            predictor: predict_lib.Predictor | None = None) -> list[dict]:
  """Segments `exams` with the network fine-tuned in run_dir (or `predictor`, already loaded
  from it: its compiled functions are reused); masks in each exam's own space."""
  return predict_lib.predict_cohort(predictor or predict_lib.Predictor(run_dir), exams, out_dir,
                                    options)


def evaluate(cohort, pred_dir: str, exams, out_dir: str | None = None) -> dict:
  """Scores predictions against the exams' references; writes summary.json + metrics.csv."""
  summary = evaluate_mode.evaluate_predictions(cohort, pred_dir, exams=exams)
  if out_dir:
    evaluate_mode.write_summary(summary, out_dir)
  return summary

