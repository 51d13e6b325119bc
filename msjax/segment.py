"""`segment` mode: raw exams -> lesion masks with a model bundle, the way MS-imaging tools do it.

  msjax --config=segment [--config.model=<shipped name or finetune workdir>] --config.input=<exam
      folder, folder of exams, BIDS dataset or DICOM folder> --workdir OUT [--config.resume=True]
      [--config.shard=K/N, then --config.merge=True]

With no --config.model, the model shipped with msjax (msjax/shipped/, msjax.shipped.DEFAULT); a
bare name names a shipped model; a path, a fine-tuning workdir. An exam whose sequences are none
of the sets the model takes (bundle.json's `inputs`) is refused with one line, not fed zeros.

Per exam, with progress and ETA: the bundle's preprocessing (N4, co-registration to FLAIR, ROBEX,
MNI registration, the 128³ grid, Nyúl standardisation with the bundle's landmarks; skipped with
--config.preprocessed=True for exams already on the model grid), the network, and the outputs in
the exam's native FLAIR space as a BIDS-derivatives dataset in OUT (msjax/infer/outputs.py). An
exam that fails is reported and the others go on; segment_summary.json lists both.

An exam's outputs are one run's complete set or nothing: they are removed before it is segmented
(and again if it fails), and its summary JSON is written last, so `--config.resume=True` skips
exactly the exams that are complete. `--config.shard=K/N` takes every N-th exam (a SLURM array
task, a Kubernetes indexed job: launch/slurm_segment.sh); each shard writes its own rows, and
`--config.merge=True` builds segmentations.csv from every complete exam. DICOM input is converted
by dcm2niix first (msjax/data/dicom.py) and gets a DICOM SEG over its FLAIR series beside the mask.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import time

from absl import logging

import numpy as np

from msjax import errors, files, shipped
from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.infer import bundle as bundle_lib
from msjax.infer import outputs, predict


def _as_is(exam):
  return exam


def preprocessor(config, bundle: dict, workdir: str):
  """exam -> the exam on the model grid, standardised as the model's training exams were (a
  picklable function: it may run in another process)."""
  if config.preprocessed:
    return _as_is
  try:
    from msjax.preprocess import run as preprocess_run
  except ImportError as e:
    raise errors.InvalidInputError(
        f"raw exams need the preprocessing extra (pip install 'msjax[preprocess]': {e}); exams "
        "already on the model grid can skip it with --config.preprocessed=True") from e
  options = preprocess_run.Options.from_config(preprocess_block(config, bundle),
                                               config.allow_any_geometry)
  standard = bundle["preprocessing"]["nyul_landmarks"]
  out_root = os.path.join(workdir, "work", "preprocessed")
  return functools.partial(preprocess_run.preprocess_one, out_root=out_root, options=options,
                           standard=standard)


def preprocess_block(config, bundle: dict):
  """The preprocessing options raw exams get: those the model's training exams were made with
  (bundle.json's preprocessing.options, when msjax made them), except where this command (or
  its variant) sets another value, which is used and said. Bundles of exams preprocessed
  elsewhere record none: the command's options are used."""
  from msjax import config_base
  made = bundle["preprocessing"].get("options") or {}
  block = config.preprocess.to_dict()
  defaults = config_base.preprocess().to_dict()
  for key, trained in made.items():
    if key not in block or key == "allow_any_geometry":
      continue
    given = block[key]
    same = (list(given) == list(trained) if isinstance(given, (list, tuple)) and
            isinstance(trained, (list, tuple)) else given == trained)
    if same:
      continue
    if given != defaults.get(key):  # set on the command line or by a variant
      logging.warning("[segment] preprocess.%s=%r here, the model's training exams were made "
                      "with %r: using %r", key, given, trained, given)
    else:
      logging.info("[segment] preprocess.%s=%r: as the model's training exams were made",
                   key, trained)
      block[key] = tuple(trained) if isinstance(trained, list) else trained
  return config_base.preprocess(**block)


def _prepared(exams: list, config, bundle: dict, workdir: str):
  """Yields (exam, the exam ready for the network, or the exception that stopped it), in order.
  With config.overlap (raw exams), the next exam is preprocessed in a second process while the
  caller runs the network on the current one, as nnU-Net overlaps its export and preprocessing
  with prediction: the registrations and N4 (SimpleITK) and the network (XLA) then share the
  cores instead of taking turns."""
  prepare = preprocessor(config, bundle, workdir)

  def known(exam):
    return known_sequences(exam, bundle)

  if config.preprocessed or not config.overlap or len(exams) < 2:
    for exam in exams:
      try:
        yield exam, prepare(known(exam))
      except Exception as e:  # noqa: BLE001 - reported by the caller, the others go on
        yield exam, e
    return
  context = multiprocessing.get_context("spawn")  # no fork of a process running XLA threads
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    def submit(exam):
      try:
        return pool.submit(prepare, known(exam))
      except Exception as e:  # noqa: BLE001 - refused before any work: the future carries it
        failed = concurrent.futures.Future()
        failed.set_exception(e)
        return failed

    pending = submit(exams[0])
    for i, exam in enumerate(exams):
      current = pending
      if i + 1 < len(exams):
        pending = submit(exams[i + 1])
      try:
        yield exam, current.result()
      except Exception as e:  # noqa: BLE001
        yield exam, e


def known_sequences(exam, bundle: dict):
  """The exam with the sequences the model is run on: one of the sets it was trained to take
  (msjax/infer/bundle.py sequences_for); refused in one line when it holds none of them."""
  use = bundle_lib.sequences_for(bundle, exam.exam_id, exam.images)
  kept = {m: p for m, p in exam.images.items() if m in use}
  dropped = sorted(set(exam.images) - set(kept))
  if dropped:
    logging.info("[segment] %s: %s not used (the model takes %s)", exam.exam_id,
                 ", ".join(dropped), "+".join(use))
  return dataclasses.replace(exam, images=kept)


def resolve_model(value: str) -> tuple[str, str | None]:
  """--config.model -> (bundle folder, the shipped model's description or None)."""
  folder = shipped.default_model() if not value else shipped.find(value)
  if folder is None:
    return value, None
  return folder, shipped.describe(folder, shipped.read_bundle(folder))


def _load_input(config, workdir: str):
  """The exams of --config.input: a DICOM tree is converted first (into workdir/work/dicom)."""
  from msjax.data import dicom
  if dicom.is_dicom_tree(config.input):
    out = os.path.join(workdir, "work", "dicom")
    logging.info("[segment] %s holds DICOM: converting its series with dcm2niix into %s",
                 config.input, out)
    dicom.convert(config.input, out, log=logging.info)
    return cohort_lib.load_cohort(out)
  return cohort_lib.load_cohort(config.input)


def shard_of(exams: list, shard: str) -> list:
  """--config.shard=K/N: the K-th of N interleaved slices of the exams sorted by id (K from 0, as
  SLURM_ARRAY_TASK_ID with --array=0-(N-1) and Kubernetes' JOB_COMPLETION_INDEX count)."""
  exams = sorted(exams, key=lambda e: e.exam_id)
  if not shard:
    return exams
  k, sep, n = shard.partition("/")
  if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n)):
    raise errors.InvalidInputError(f"--config.shard={shard!r}: expected K/N with 0 <= K < N")
  return exams[int(k)::int(n)]


def _write_dicom_seg(exam, row: dict, bundle_path: str) -> None:
  """A DICOM SEG over the source FLAIR series, for exams that came in as DICOM."""
  from msjax.data import dicom
  from msjax.infer import dicom_seg
  sources = dicom.sources_of(exam.images["FLAIR"]) if "FLAIR" in exam.images else None
  if not sources or "FLAIR" not in sources:
    return
  import nibabel as nib
  mask = nib.load(row["mask"])
  row["dicom_seg"] = dicom_seg.write_seg(np.asarray(mask.dataobj), mask.affine,
                                         sources["FLAIR"]["files"], row["dicom_seg"],
                                         model=bundle_path)


def _segment_one(exam, ready, predictor, options, config, bundle: dict, workdir: str) -> dict:
  """One exam (`ready`: on the model grid) segmented and exported, with its clinical report and
  DICOM SEG where they apply; its row."""
  t = time.time()
  seg = predict.segment_exam(predictor, ready, options)
  predict_s, t = time.time() - t, time.time()
  row = predict.export_exam(seg, ready, workdir)
  row.update(sampler=options.sampler, mirror=options.mirror, threshold=options.threshold)
  if config.report.enabled:
    from msjax.infer import clinical
    row.update(clinical.report_exam(seg, ready, workdir, flair_path=predict.flair_of(ready),
                                    bundle=bundle, threshold=options.threshold,
                                    config=config.report, model=bundle["path"]))
  _write_dicom_seg(exam, row, bundle["path"])
  row.update(predict_s=round(predict_s, 1), outputs_s=round(time.time() - t, 1))
  return row


def load_bundle(model: str) -> dict:
  """The bundle of --config.model (a shipped name, a finetune workdir, '' = the default shipped
  model), said which; older bundles that do not declare their sequence sets are warned about."""
  path, described = resolve_model(model)
  if described:
    logging.info("[segment] using the shipped model %s", described)
  bundle = bundle_lib.read(path)
  spec, declared = bundle_lib.inputs_of(bundle)
  if not declared:
    logging.warning("[segment] %s does not declare the sequence sets it takes (written before "
                    "msjax did): exams need all of %s", bundle["path"], "+".join(spec["subsets"][0]))
  return bundle


def _complete_exams(exams, workdir: str) -> list[dict]:
  """--config.resume: the summaries of the exams whose outputs are complete (skipped)."""
  resumed = [s for s in (outputs.complete(workdir, e) for e in exams) if s]
  if resumed:
    logging.info("[segment] resume: %d exam(s) already complete, skipped: %s", len(resumed),
                 ", ".join(sorted(s["exam_id"] for s in resumed)))
  return resumed


def run(config, workdir: str) -> dict:
  if config.merge:
    return merge(workdir)
  if not config.input:
    raise errors.InvalidInputError("segment needs --config.input=<exam folder, folder of exams, "
                                   "BIDS dataset or DICOM folder> (and --config.model=<shipped "
                                   "name or finetune workdir>, default: the shipped model)")
  t0 = time.time()
  bundle = load_bundle(config.model)
  cohort = _load_input(config, workdir)
  manifest_lib.check_output_names(cohort.exams)  # all shards' names, before anything is written
  exams = shard_of(list(cohort.exams), config.shard)
  resumed = _complete_exams(exams, workdir) if config.resume else []
  exams = [e for e in exams if e.exam_id not in {s["exam_id"] for s in resumed}]
  threshold = (config.predict.threshold if config.predict.threshold is not None
               else bundle["threshold"])
  options = predict.PredictOptions.from_config(config.predict, threshold=threshold,
                                               seed=config.seed,
                                               allow_any_geometry=config.allow_any_geometry)
  predictor = predict.Predictor(bundle["path"])
  outputs.write_description(workdir, outputs.generated_by(bundle["path"]))
  logging.info("[segment] %d exam(s) from %s%s with the model %s (threshold %g)%s", len(exams),
               cohort.root, f" (shard {config.shard})" if config.shard else "", bundle["path"],
               threshold, "" if config.preprocessed else "; preprocessing each exam first")
  done, failed = [], []
  t = time.time()
  for i, (exam, ready) in enumerate(_prepared(exams, config, bundle, workdir)):
    # serial: this exam's preprocessing; overlapped: the part of it the network did not hide
    waited = time.time() - t
    earlier = outputs.clear(workdir, exam)  # one run's complete outputs, or none
    try:
      if isinstance(ready, Exception):
        raise ready
      row = _segment_one(exam, ready, predictor, options, config, bundle, workdir)
      row.update(seconds=round(time.time() - t, 1), preprocess_wait_s=round(waited, 1))
      done.append(outputs.write_summary(workdir, exam, row))
      status = _lesion_count(row)
    except Exception as e:  # noqa: BLE001 - one exam's failure must not stop the others
      outputs.clear(workdir, exam)
      failed.append({"exam_id": exam.exam_id, "error": f"{type(e).__name__}: {e}",
                     "earlier_outputs_removed": len(earlier)})
      status = f"FAILED: {e}" + (f" (its {len(earlier)} earlier output files were removed)"
                                 if earlier else "")
    elapsed = time.time() - t0
    eta = elapsed / (i + 1) * (len(exams) - i - 1)
    logging.info("[segment] %d/%d %s: %s (%.0f s; ETA %.0f s)", i + 1, len(exams),
                 exam.exam_id, status, time.time() - t, eta)
    t = time.time()
  rows = sorted(resumed + done, key=lambda r: r["exam_id"])
  name = (f"segmentations.shard-{config.shard.replace('/', '-of-')}.csv" if config.shard
          else "segmentations.csv")
  files.write_csv(outputs.cohort_rows(rows), os.path.join(workdir, name),
                  fieldnames=outputs.COHORT_COLUMNS)
  summary = {"model": bundle["path"], "input": cohort.root, "threshold": threshold,
             "shard": config.shard or None, "exams": done, "resumed": resumed, "failed": failed,
             "wall_s": round(time.time() - t0, 1)}
  files.write_json(summary, os.path.join(workdir, name.replace("segmentations", "segment_summary")
                                         .replace(".csv", ".json")))
  print(f"[segment] {len(done)}/{len(exams)} exam(s) segmented in {summary['wall_s']:.0f} s"
        + (f", {len(resumed)} already complete (resumed)" if resumed else "")
        + f" -> {workdir}/ (BIDS derivatives: sub-*/[ses-*/]anat/ lesion mask, probability, "
        f"uncertainty, per-lesion table, overlay PNG); one row per exam in {workdir}/{name}")
  for row in done:
    print(f"  {row['exam_id']}: {_lesion_count(row)}; {row['files']['overlay']}")
  for f in failed:
    print(f"  {f['exam_id']} FAILED: {' '.join(line.strip() for line in f['error'].splitlines())}")
  if failed and not done and not resumed:
    raise errors.InvalidInputError(f"no exam could be segmented ({len(failed)} failed; see "
                                   f"{workdir}/segment_summary.json)")
  return summary


def merge(workdir: str) -> dict:
  """`--config.merge=True`: the cohort table of every complete exam in workdir, from all shards."""
  summaries = outputs.find_summaries(workdir)
  if not summaries:
    raise errors.InvalidInputError(f"{workdir}: no complete exam outputs to merge "
                                   "(*_desc-lesion_summary.json)")
  path = files.write_csv(outputs.cohort_rows(summaries), os.path.join(workdir, "segmentations.csv"),
                         fieldnames=outputs.COHORT_COLUMNS)
  print(f"[segment] merged {len(summaries)} exam(s) -> {path}")
  return {"exams": summaries, "csv": path}


def _lesion_count(row: dict) -> str:
  """'15 lesions (17 rows in the lesion table: 2 of 3 mm³ or less), 6.83 mL; QC ok'."""
  small = row["components"] - row["lesions"]
  qc = f"; QC {row['qc']}" + (f" ({row['qc_reasons']})" if row.get("qc_reasons") else "") \
      if row.get("qc") else ""
  return (f"{row['lesions']} lesions" + (f" (+{small} of 3 mm³ or less in the lesion table)"
                                          if small else "") + f", {row['volume_ml']:.2f} mL" + qc)
