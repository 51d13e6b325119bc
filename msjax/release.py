"""`release` mode: trains exactly what msjax ships and writes it as package data (msjax/shipped/).

1. the scans: every labelled exam of `labelled`, its unlabelled exams, the raw exams of
   `unlabelled_raw` preprocessed onto the model grid (leave_one_out.preprocess_raw) and the
   cohorts of `unlabelled`; with `labelled=''` the synthetic cohort (the :smoke variant);
2. pretraining (position regression) on every one of them, fine-tuning (`strategy`, from that
   encoder) on every labelled exam: the stages leave_one_out and the paper's experiment run, with
   the same blocks (configs/release.py takes configs/lesjak.py's);
3. export (msjax/infer/export.py) into `out` ('' = the package's msjax/shipped/): `<name>`, the
   segmentation model, and `<name>-encoder`, the pretrained position network for transfer.

Every stage resumes: a finished pretraining or fine-tuning is not repeated when run again.
"""
from __future__ import annotations

import dataclasses
import os
import time

from absl import logging

from msjax import config_base, errors, files, shipped, stages
from msjax import leave_one_out as loo
from msjax.data import cohort as cohort_lib
from msjax.data import synthetic
from msjax.infer import export as export_lib


def scans(config, workdir: str):
  """(labelled exams, every scan for pretraining)."""
  if config.labelled:
    cohort = cohort_lib.load_cohort(loo._existing(config.labelled, "labelled"))
  else:
    s = config.synthetic
    spec = synthetic.SyntheticSpec(n_ms=s.n_ms, n_non_ms=s.n_non_ms, n_test=0,
                                   shape=tuple(s.shape), spacing_mm=s.spacing_mm, seed=config.seed)
    cohort = synthetic.write_synthetic_cohort(os.path.join(workdir, "cohort"), spec,
                                              log=logging.info)
  labelled = cohort.select(labelled=True)
  if not labelled:
    raise errors.InvalidInputError(f"{cohort.root}: no labelled exam to fine-tune on")
  unlabelled = list(cohort.select(labelled=False))
  if config.unlabelled_raw:
    unlabelled += loo.preprocess_raw(config, workdir)
  for path in config_base.parse_list(config.unlabelled):
    unlabelled += list(cohort_lib.load_cohort(loo._existing(path, "unlabelled")).exams)
  return labelled, labelled + unlabelled


def run(config, workdir: str) -> dict:
  if config.out is None:
    raise errors.InvalidInputError("--config.out=FOLDER is required here (the :smoke variant "
                                   "never writes into the package)")
  t0, times = time.time(), {}
  workdir = os.path.abspath(workdir)
  labelled, everything = scans(config, workdir)
  as_train = [dataclasses.replace(e, split="train") for e in everything]
  pre_manifest = loo.write_manifest(as_train, os.path.join(workdir, "cohorts", "pretrain.json"))
  ft_manifest = loo.write_manifest([dataclasses.replace(e, split="train") for e in labelled],
                                   os.path.join(workdir, "cohorts", "finetune.json"))
  logging.info("[release] pretraining on %d scans, fine-tuning (%s) on %d labelled exams of %d "
               "patients", len(everything), config.strategy, len(labelled),
               len({e.patient_id for e in labelled}))
  pre_dir, ft_dir = os.path.join(workdir, "pretrain"), os.path.join(workdir, "finetune")
  t = time.time()
  stages.pretrain(config, _data(config, pre_manifest), pre_dir)
  times["pretrain"] = time.time() - t
  t = time.time()
  stages.finetune(config, _data(config, ft_manifest), ft_dir,
                  strategy=stages.strategy_names(config.strategy)[0], init_from=pre_dir)
  times["finetune"] = time.time() - t
  out = os.path.abspath(os.path.expanduser(config.out or shipped.PACKAGE_DIR))
  files.writable_folder(out, "shipped-models folder")
  pre_scans = len(everything)
  encoder_name = config.name + shipped.ENCODER_SUFFIX
  encoder = export_lib.export(
      pre_dir, os.path.join(out, encoder_name), encoder_name,
      training={"exams": sorted(e.exam_id for e in everything), "pretraining_scans": pre_scans})
  results = ""
  if config.card_results:  # measured figures for the card, e.g. the leave-one-out's results.md
    with open(config.card_results) as f:
      results = f.read()
  model = export_lib.export(ft_dir, os.path.join(out, config.name), config.name,
                            training={"pretraining_scans": pre_scans,
                                      "encoder": encoder_name}, figures=results)
  times["total"] = time.time() - t0
  summary = {"out": out, "models": {config.name: model["weights"],
                                    encoder_name: encoder["weights"]},
             "pretrain": pre_dir, "finetune": ft_dir, "times_s": times}
  files.write_json(summary, os.path.join(workdir, "release.json"))
  print(f"[release] done in {times['total']:.0f} s (pretraining {times['pretrain']:.0f} s, "
        f"fine-tuning {times['finetune']:.0f} s)")
  for name, w in summary["models"].items():
    print(f"  {os.path.join(out, name)}/  {w['parameters']:,} parameters, {w['file']} "
          f"{w['bytes'] / 1e6:.2f} MB, sha256 {w['sha256'][:16]}...")
  return summary


def _data(config, cohort: str):
  return config_base.data(**dict(config.data.to_dict(), cohort=cohort))
