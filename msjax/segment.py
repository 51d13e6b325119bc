"""`segment` mode: raw exams -> lesion masks with a model bundle, the way MS-imaging tools do it.

  msjax --config=segment --config.model=<finetune workdir> --config.input=<exam folder, folder of
      exams, or BIDS dataset> --workdir OUT

Per exam, with progress and ETA: the bundle's preprocessing (N4, co-registration to FLAIR, ROBEX,
MNI registration, the 128³ grid, Nyúl standardisation with the bundle's landmarks; skipped with
--config.preprocessed=True for exams already on the model grid), the network, and the outputs in
the exam's native FLAIR space as a BIDS-derivatives dataset in OUT (msjax/infer/outputs.py). An
exam that fails is reported and the others go on; segment_summary.json lists both.
"""
from __future__ import annotations

import dataclasses
import os
import time

from absl import logging

from msjax import errors, files
from msjax.data import cohort as cohort_lib
from msjax.infer import bundle as bundle_lib
from msjax.infer import outputs, predict


def _preprocessor(config, bundle: dict, workdir: str):
  """exam -> the exam on the model grid, standardised as the model's training exams were."""
  if config.preprocessed:
    return lambda exam: exam
  try:
    from msjax.preprocess import run as preprocess_run
  except ImportError as e:
    raise errors.InvalidInputError(
        f"raw exams need the preprocessing extra (pip install 'msjax[preprocess]': {e}); exams "
        "already on the model grid can skip it with --config.preprocessed=True") from e
  p = config.preprocess
  options = preprocess_run.Options(n4=p.n4, n4_iterations=tuple(p.n4_iterations),
                                   coregistration=p.coregistration, skull_strip=p.skull_strip,
                                   mni=True, qc=p.qc, allow_any_geometry=p.allow_any_geometry)
  standard = bundle["preprocessing"]["nyul_landmarks"]
  out_root = os.path.join(workdir, "work", "preprocessed")
  return lambda exam: preprocess_run.preprocess_one(exam, out_root, options, standard)


def _known_sequences(exam, bundle: dict):
  """The exam without sequences the model never saw in training (all-zero inputs there)."""
  seen = set(bundle["preprocessing"]["nyul_landmarks"])
  kept = {m: p for m, p in exam.images.items() if m in seen}
  dropped = sorted(set(exam.images) - set(kept))
  if dropped:
    logging.info("[segment] %s: %s not used (the model was trained without it)", exam.exam_id,
                 ", ".join(dropped))
  if not kept:
    raise errors.InvalidInputError(f"exam {exam.exam_id}: none of its sequences "
                                   f"{sorted(exam.images)} is one the model knows ({sorted(seen)})")
  return dataclasses.replace(exam, images=kept)


def run(config, workdir: str) -> dict:
  if not config.model or not config.input:
    raise errors.InvalidInputError("segment needs --config.model=<model bundle (a finetune "
                                   "workdir)> and --config.input=<exam folder, folder of exams "
                                   "or BIDS dataset>")
  t0 = time.time()
  bundle = bundle_lib.read(config.model)
  cohort = cohort_lib.load_cohort(config.input)
  exams = list(cohort.exams)
  threshold = config.threshold if config.threshold is not None else bundle["threshold"]
  predictor = predict.Predictor(bundle["path"], batch_size=config.predict.batch_size,
                                mirror=config.predict.mirror)
  prepare = _preprocessor(config, bundle, workdir)
  outputs.write_description(workdir, outputs.generated_by(bundle["path"]))
  logging.info("[segment] %d exam(s) from %s with the model %s (threshold %g)%s", len(exams),
               cohort.root, bundle["path"], threshold,
               "" if config.preprocessed else "; preprocessing each exam first")
  done, failed = [], []
  for i, exam in enumerate(exams):
    t = time.time()
    try:
      ready = prepare(_known_sequences(exam, bundle))
      p = config.predict
      row = predict.predict_exam(predictor, ready, workdir, sampler=p.sampler, overlap=p.overlap,
                                 n_random=p.n_random, threshold=threshold, seed=config.seed,
                                 min_lesion_mm3=p.min_lesion_mm3,
                                 allow_any_geometry=config.preprocess.allow_any_geometry)
      row["seconds"] = round(time.time() - t, 1)
      done.append(row)
      status = _lesion_count(row)
    except Exception as e:  # noqa: BLE001 - one exam's failure must not stop the others
      failed.append({"exam_id": exam.exam_id, "error": f"{type(e).__name__}: {e}"})
      status = f"FAILED: {e}"
    elapsed = time.time() - t0
    eta = elapsed / (i + 1) * (len(exams) - i - 1)
    logging.info("[segment] %d/%d %s: %s (%.0f s; ETA %.0f s)", i + 1, len(exams),
                 exam.exam_id, status, time.time() - t, eta)
  files.write_csv(done, os.path.join(workdir, "segmentations.csv"))
  summary = {"model": bundle["path"], "input": cohort.root, "threshold": threshold,
             "exams": done, "failed": failed, "wall_s": round(time.time() - t0, 1)}
  files.write_json(summary, os.path.join(workdir, "segment_summary.json"))
  print(f"[segment] {len(done)}/{len(exams)} exam(s) segmented in {summary['wall_s']:.0f} s -> "
        f"{workdir}/ (BIDS derivatives: sub-*/[ses-*/]anat/ lesion mask, probability, "
        "uncertainty, per-lesion table, overlay PNG)")
  for row in done:
    print(f"  {row['exam_id']}: {_lesion_count(row)}; {row['overlay']}")
  for f in failed:
    print(f"  {f['exam_id']} FAILED: {' '.join(line.strip() for line in f['error'].splitlines())}")
  if failed and not done:
    raise errors.InvalidInputError(f"no exam could be segmented ({len(failed)} failed; see "
                                   f"{workdir}/segment_summary.json)")
  return summary


def _lesion_count(row: dict) -> str:
  """'15 lesions (17 rows in the lesion table: 2 of 3 mm³ or less), 6.83 mL'."""
  small = row["components"] - row["lesions"]
  return (f"{row['lesions']} lesions" + (f" (+{small} of 3 mm³ or less in the lesion table)"
                                          if small else "") + f", {row['volume_ml']:.2f} mL")
