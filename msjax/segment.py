"""`segment` mode: raw exams -> lesion masks with a model bundle, the way MS-imaging tools do it.

  msjax --config=segment [--config.model=<shipped name or finetune workdir>] --config.input=<exam
      folder, folder of exams, BIDS dataset or DICOM folder> --workdir OUT
      [--config.overwrite=True] [--config.shard=K/N, then --config.merge=True]

With no --config.model, the model shipped with msjax (msjax/shipped/, msjax.shipped.DEFAULT); a
bare name names a shipped model; a path, a fine-tuning workdir. An exam whose sequences are none
of the sets the model takes (bundle.json's `inputs`) is refused with one line, not fed zeros.

Per exam, with progress and ETA: the bundle's preprocessing (N4, co-registration to FLAIR, ROBEX,
MNI registration, the 128³ grid, Nyúl standardisation with the bundle's landmarks; skipped with
--config.preprocessed=True for exams already on the model grid), the network, and the outputs in
the exam's native FLAIR space as a BIDS-derivatives dataset in OUT (msjax/infer/outputs.py). An
exam that fails is reported and the others go on; segment_summary.json lists both.

An exam's outputs are one run's complete set: they are built aside (workdir/work/staging) and
moved into place only when complete, its summary JSON last, so an earlier set stays whole until
then, whatever stops the run. A re-run into a workdir keeps the exams already made with the same
model, threshold and options (a hash of them in each exam's summary) and redoes the others,
saying which and why; `--config.overwrite=True` redoes all.

`--config.shard=K/N` takes every N-th exam (a SLURM array task, a Kubernetes indexed job:
launch/slurm_segment.sh); each shard writes its own rows, and
`--config.merge=True` builds segmentations.csv from every complete exam. DICOM input is converted
by dcm2niix first (msjax/data/dicom.py) and gets a DICOM SEG over its FLAIR series beside the mask.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time

from absl import logging

import numpy as np

from msjax import config_base, console, errors, files, shipped
from msjax.data import cohort as cohort_lib
from msjax.data import manifest as manifest_lib
from msjax.infer import bundle as bundle_lib
from msjax.infer import outputs, predict


def _as_is(exam):
  return exam


def preprocessor(config, bundle: dict, workdir: str):
  """exam -> the exam on the model grid, standardised as the model's training exams were (a
  picklable function: it may run in another process). With --config.preprocessed=True: an exam
  on the model grid goes to the network as it is; one in MNI space on another grid (already
  skull-stripped, like ../shared/data/lesjak_mni) too when the model's training exams were made
  outside msjax, and through the MNI registration and Nyúl standardisation they had when msjax
  made them (preprocess_run.for_stripped_exams)."""
  made_by_msjax = bundle["preprocessing"].get("by") == "msjax"
  if config.preprocessed and not made_by_msjax:
    return _as_is
  try:
    from msjax.preprocess import run as preprocess_run
  except ImportError as e:
    if config.preprocessed:
      raise errors.InvalidInputError(
          f"this model's training exams were registered and standardised by msjax; exams not on "
          f"its grid need the same, from the preprocessing extra (pip install "
          f"'msjax[preprocess]': {e})") from e
    raise errors.InvalidInputError(
        f"raw exams need the preprocessing extra (pip install 'msjax[preprocess]': {e}); exams "
        "already on the model grid can skip it with --config.preprocessed=True") from e
  grid = model_grid(bundle)
  asked = tuple(int(n) for n in config.preprocess.get("grid", grid))
  if asked != grid and asked != tuple(config_base.preprocess().grid):
    raise errors.InvalidInputError(
        f"preprocess.grid={asked}: this model was trained on the {grid} MNI grid and is given "
        "exams on it (leave preprocess.grid out)")
  options = dataclasses.replace(
      preprocess_run.Options.from_config(preprocess_block(config, bundle),
                                         config.allow_any_geometry),
      grid=exam_grid(bundle, int(config.predict.get("phases", 1))))
  standard = bundle["preprocessing"]["nyul_landmarks"]
  out_root = os.path.join(workdir, "work", "preprocessed")
  if config.preprocessed:
    return functools.partial(_stripped_exam, out_root=out_root,
                             options=preprocess_run.for_stripped_exams(options),
                             standard=standard, on_model_grid=grid)
  return functools.partial(preprocess_run.preprocess_one, out_root=out_root, options=options,
                           standard=standard)


def model_grid(bundle: dict) -> tuple:
  """The MNI grid a raw exam is preprocessed onto: the model's own (bundle.json's model_grid),
  so that a model trained on a finer grid is not given a 128³ exam resampled up; the paper's
  128³ for a model that kept each exam's grid."""
  from msjax.data import mni
  return tuple(int(n) for n in bundle.get("model_grid") or mni.MODEL_SHAPE)


def exam_grid(bundle: dict, phases: int = 1) -> tuple:
  """The MNI grid a raw exam is written on: the model's (model_grid), or with test-time grid
  phases (predict.phases=8) the 1 mm MNI grid, from which the loader samples the model grid at
  each phase, as it samples the model grid from the 1 mm exams the shipped model was trained on
  (../shared/data/lesjak_mni). A model grid at 1 mm or finer keeps its own."""
  from msjax.data import mni
  grid = model_grid(bundle)
  if phases > 1 and all(g < m for g, m in zip(grid, mni.MNI_SHAPE)):
    return tuple(mni.MNI_SHAPE)
  return grid


def _stripped_exam(exam, out_root: str, options, standard: dict, on_model_grid: tuple):
  """An exam given as preprocessed: as it is on the model grid (`on_model_grid`, where msjax's
  preprocessing wrote the model's training exams), else registered to MNI and standardised as
  the model's training exams were, onto options.grid."""
  import nibabel as nib

  from msjax.data import mni
  from msjax.preprocess import run as preprocess_run
  header = nib.load(exam.images.get("FLAIR") or next(iter(exam.images.values())))  # no voxels read
  shape = header.shape[:3]
  if sorted(shape) == sorted(on_model_grid) and mni.is_mni_grid(shape, header.affine):
    return exam
  logging.info("[segment] %s: given preprocessed, on a %s grid: the MNI registration and Nyúl "
               "standardisation the model's training exams had (no N4, no co-registration, "
               "the brain = its non-zero voxels)", exam.exam_id, "x".join(map(str, shape)))
  return preprocess_run.preprocess_one(exam, out_root=out_root, options=options,
                                       standard=standard)


def preprocess_block(config, bundle: dict):
  """The preprocessing options raw exams get: those the model's training exams were made with
  (bundle.json's preprocessing.options, when msjax made them), except where this command (or
  its variant) sets another value, which is used and said. Bundles of exams preprocessed
  elsewhere record none: the command's options are used."""
  from msjax.preprocess import run as preprocess_run
  made = bundle["preprocessing"].get("options") or {}
  block = config.preprocess.to_dict()
  defaults = config_base.preprocess().to_dict()
  # exams that came in skull-stripped say nothing of how a raw head is to be stripped: raw exams
  # get this command's N4, co-registration and brain extraction
  stripped = preprocess_run.takes_stripped_exams(made)
  for key, trained in made.items():
    # grid: the model's own; itk_threads: this machine's, not how the training exams looked
    if key not in block or key in ("allow_any_geometry", "grid", "itk_threads"):
      continue
    if stripped and key in preprocess_run.INPUT_STATE:
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
  # the worker's preprocessing steps reach the same console, in the same form
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=console.setup,
                                              initargs=(console.is_plain(),)) as pool:
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
  k, n = _parsed_shard(shard)
  return exams[k::n]


def _parsed_shard(shard: str) -> tuple[int, int]:
  parsed = config_base.parse_shard(shard)
  if parsed is None:
    raise errors.InvalidInputError(f"--config.shard={shard!r}: expected K/N with 0 <= K < N")
  return parsed


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


_PHASES = console.Phases("[segment]")


def _segment_one(exam, ready, predictor, options, config, bundle: dict, workdir: str) -> dict:
  """One exam (`ready`: on the model grid) segmented and exported, with its clinical report and
  DICOM SEG where they apply; its row."""
  t = time.time()
  label = ", ".join(x for x in (_ensemble_label(bundle),
                                 mirroring_label(options, _members(bundle))) if x)
  with _PHASES(exam.exam_id, "network", label):
    seg = predict.segment_exam(predictor, ready, options)
  predict_s, t = time.time() - t, time.time()
  with _PHASES(exam.exam_id, "mask, probability and lesion table"):
    row = predict.export_exam(seg, ready, workdir)
  row.update(sampler=options.sampler, mirror=options.mirror, flips=options.flips,
             phases=options.phases, phase_windows=options.phase_windows,
             windows=options.windows,
             threshold=options.threshold)
  made = manifest_lib.preprocessing_record(ready)  # None: given on the model grid
  if made:  # the exam's own, which the run's settings (one for every exam) may not be
    row["brain_extraction"] = made.get("skull_strip")
  problems = []
  if config.report.enabled:  # optional: its failure leaves the mask, probability and table
    try:
      from msjax.infer import clinical
      with _PHASES(exam.exam_id, "report (locations, QC, page)"):
        row.update(clinical.report_exam(seg, ready, workdir, flair_path=predict.flair_of(ready),
                                        bundle=bundle, threshold=options.threshold,
                                        config=config.report,
                                        model=made_with(config, bundle, options, made)))
    except ImportError as e:
      problems.append(f"report skipped: it needs the preprocess extra (pip install "
                      f"'msjax[preprocess]'; {e})")
    except Exception as e:  # noqa: BLE001 - an optional output
      problems.append(f"report failed: {type(e).__name__}: {e}")
  try:
    _write_dicom_seg(exam, row, model_name(bundle))
  except Exception as e:  # noqa: BLE001 - an optional output
    problems.append(f"DICOM SEG failed: {type(e).__name__}: {e}")
    row.pop("dicom_seg", None)
  row["status"] = "; ".join(["segmented"] + problems)
  row.update(predict_s=round(predict_s, 1), outputs_s=round(time.time() - t, 1))
  return row


def mirroring_label(options, members: int = 1) -> str:
  if options.phases > 1:
    flips = ", phase k in flip k" if options.mirror else ""
    by = (f", dealt over the {members} members" if options.flips == "dealt" and members > 1
          else "")
    share = (", each its share of one sliding window's windows"
             if options.phase_windows == "offset" else "")
    return f"the model grid at its {options.phases} half-voxel phases{flips}{by}{share}"
  if not options.mirror:
    return ""
  if options.flips == "dealt" and members > 1:
    return f"8-flip mirroring dealt over the {members} members"
  return ("mirroring spread over the windows" if options.flips == "spread" else
          "8-flip mirroring")


def _members(bundle: dict) -> int:
  return max(1, len(bundle.get("members") or ()))


def _ensemble_label(bundle: dict) -> str:
  n = _members(bundle)
  return f"the mean of a {n}-member ensemble" if n > 1 else ""


def made_with(config, bundle: dict, options, made: dict | None = None) -> str:
  """The model and the settings that made a mask, as the report page prints them. `made`: the
  exam's preprocessing record (manifest.preprocessing_record), whose brain extraction and N4 fit
  are the exam's own (an exam without a T1W takes the atlas path whatever the run asked);
  without it, the run's options."""
  by_msjax = bundle["preprocessing"].get("by") == "msjax"
  if config.preprocessed:
    how = ("exam given preprocessed, MNI-registered and standardised as the training exams were"
           if by_msjax else "exam given on the model grid")
  else:
    strip = (made or {}).get("skull_strip") or config.preprocess.skull_strip
    n4 = (made["n4_mm"] if made and "n4_mm" in made
          else config.preprocess.n4_mm if config.preprocess.n4 else None)
    how = f"brain extraction {strip}, " + (f"N4 fit at {n4:g} mm" if n4 else "no N4")
  ensemble = _ensemble_label(bundle)
  return (f"{model_name(bundle)}{f' ({ensemble})' if ensemble else ''}; lesion at p >= "
          f"{options.threshold:g}"
          + (f" (each lesion peaking at >= {options.min_lesion_peak:g})"
             if options.min_lesion_peak > 0 else "") + ", "
          f"{mirroring_label(options, _members(bundle)) or 'no test-time mirroring'}, {how}")


def model_name(bundle: dict) -> str:
  """How outputs name the model: a shipped model by name, a workdir bundle by its folder."""
  return bundle.get("name") or bundle["path"]


def inference_options(config, bundle: dict) -> predict.PredictOptions:
  """The network's options for a job's predict block: the bundle's threshold and lesion peak
  (chosen on left-out patients for a shipped model) unless the command sets them."""
  threshold = (config.predict.threshold if config.predict.threshold is not None
               else bundle["threshold"])
  peak = config.predict.get("min_lesion_peak")
  peak = bundle.get("min_lesion_peak", 0.0) if peak is None else peak
  return predict.PredictOptions.from_config(config.predict, threshold=threshold, seed=config.seed,
                                            allow_any_geometry=config.allow_any_geometry,
                                            min_lesion_peak=peak)


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


def settings(config, bundle: dict, options) -> dict:
  """What makes an exam's outputs what they are: the model (its bundle's content hash or
  weights), the threshold and inference options, the preprocessing, the report's settings."""
  import msjax
  from msjax import shipped
  model = bundle.get(shipped.CONTENT_KEY) or shipped.content_hash(bundle)
  return {"msjax": msjax.code_version(), "model": model_name(bundle), "model_sha256": model,
          "predict": dataclasses.asdict(options),
          "preprocess": ("given on the model grid" if config.preprocessed
                         and bundle["preprocessing"].get("by") != "msjax"
                         else dict(preprocess_block(config, bundle).to_dict(),
                                   given_preprocessed=bool(config.preprocessed))),
          "report": config.report.to_dict()}


def inputs_sha256(*exams) -> str | None:
  """The content of the exams' input files (each sequence's name and bytes, and the brain mask
  given with one): a re-run redoes an exam whose files changed under the same names (a scan
  exported again, a sequence replaced), and keeps one converted again from the same DICOM. None
  when a file cannot be read (the exam is then redone, and that run names the problem)."""
  import hashlib
  h = hashlib.sha256()
  try:
    for exam in exams:
      named = dict(exam.images, **({"brain_mask": exam.brain_mask} if exam.brain_mask else {}))
      for role, path in sorted(named.items()):
        h.update(role.encode() + b"\0")
        with open(path, "rb") as f:
          for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
  except OSError:
    return None
  return h.hexdigest()


def settings_hash(s: dict) -> str:
  import hashlib
  import json
  return hashlib.sha256(json.dumps(s, sort_keys=True, default=str).encode()).hexdigest()


def why_redo(prior: dict, key: str, mine: dict, inputs) -> str | None:
  """Why outputs made before (their summary `prior`) are not this run's, or None when they are:
  the same settings (`key`, the hash of `mine`) from the same input files (`inputs`: their
  inputs_sha256, or a function computing it, called only when the settings match). Shared by
  segment's exams and the longitudinal mode's patients."""
  if prior.get("settings_sha256") == key:
    now = inputs() if callable(inputs) else inputs
    if now is not None and prior.get("inputs_sha256") == now:
      return None
    return "its input files changed since its outputs were made"
  theirs = prior.get("settings") or {}
  as_read = json.loads(json.dumps(mine, default=str))  # as summaries hold it (lists)
  differ = [k for k in mine if theirs.get(k) != as_read[k]] or ["settings not recorded"]
  return f"its outputs were made with other settings ({', '.join(differ)})"


def _to_do(exams, workdir: str, config, key: str, mine: dict, inputs: dict | None = None
           ) -> tuple[list, list[dict]]:
  """(exams to segment, summaries of the exams already made with these settings): a re-run into
  a workdir skips what is done and redoes what was made otherwise, saying which and why
  (--config.overwrite=True redoes all). `inputs`: each exam's inputs_sha256 by exam id, filled
  in here for the exams whose files had to be read (so that the run reads them once)."""
  inputs = {} if inputs is None else inputs

  def now(exam):
    if exam.exam_id not in inputs:
      inputs[exam.exam_id] = inputs_sha256(exam)
    return inputs[exam.exam_id]

  todo, done = [], []
  for exam in exams:
    prior = outputs.complete(workdir, exam)
    if prior is None:
      todo.append(exam)
    elif config.overwrite or not config.resume:
      logging.info("[segment] %s: redone (--config.overwrite=True)", exam.exam_id)
      todo.append(exam)
    else:
      why = why_redo(prior, key, mine, lambda e=exam: now(e))
      if why is None:
        done.append(prior)
      else:
        logging.info("[segment] %s: redone, %s; the old ones stay until the new ones are "
                     "complete", exam.exam_id, why)
        todo.append(exam)
  if done:
    logging.info("[segment] %d exam(s) already made with these settings, kept: %s", len(done),
                 ", ".join(sorted(s["exam_id"] for s in done)))
  return todo, done


class Network:
  """The Predictor of a run, built (Predictor.warm_up) in a thread of its own when `background`,
  so that it overlaps the first exam's preprocessing; get() waits for it. A build that failed in
  the background is tried again in the foreground, where its error lands in the exam's row."""

  def __init__(self, path: str, options, background: bool, job: str = "segment"):
    self._path, self._options, self._predictor, self._pending = path, options, None, None
    self._job = job
    if background:
      pool = concurrent.futures.ThreadPoolExecutor(1)
      self._pending = pool.submit(self._build)
      pool.shutdown(wait=False)
    else:
      self._predictor = predict.Predictor(path)

  def _build(self):
    t = time.time()
    predictor = predict.Predictor(self._path)
    predictor.warm_up(self._options)
    return predictor, time.time() - t

  def get(self):
    if self._predictor is None and self._pending is not None:
      pending, self._pending = self._pending, None
      try:
        self._predictor, seconds = pending.result()
        logging.info("[%s] network ready: built and compiled in %.1f s beside the "
                     "preprocessing", self._job, seconds)
      except Exception as e:  # noqa: BLE001 - tried again below, where it is the exam's error
        logging.warning("[%s] building the network beside the preprocessing failed: %s",
                        self._job, e)
    if self._predictor is None:
      self._predictor = predict.Predictor(self._path)
    return self._predictor


def _check_input(value: str, shard: str = "") -> None:
  if shard:  # before any input is read or converted
    _parsed_shard(shard)
  if not value:
    raise errors.InvalidInputError("segment needs --config.input=<exam folder, folder of exams, "
                                   "BIDS dataset or DICOM folder> (and --config.model=<shipped "
                                   "name or finetune workdir>, default: the shipped model)")
  path = os.path.abspath(os.path.expanduser(value))
  if not os.path.exists(path):
    near = os.path.dirname(path)
    hint = (f"; {near} holds: {', '.join(sorted(os.listdir(near))[:8])}"
            if os.path.isdir(near) else "")
    raise errors.InvalidInputError(f"--config.input={value}: no such file or folder{hint}")


UNUSED_SHOWN = 5  # input files not used, named in the log (segment_summary.json has them all)


def run(config, workdir: str) -> dict:
  if config.merge:
    return merge(workdir)
  _check_input(config.input, config.shard)
  t0 = time.time()
  bundle = load_bundle(config.model)
  # the workdir says at once that msjax made it, so that a workdir inside the input folder is
  # never read as input
  description = os.path.join(workdir, "dataset_description.json")
  marked = not os.path.exists(description)
  outputs.write_description(workdir, outputs.generated_by(model_name(bundle)))
  try:
    cohort = _load_input(config, workdir)
    manifest_lib.check_output_names(cohort.exams)  # all shards' names, before anything else
  except Exception:  # refused: the workdir is left as it was
    if marked:
      os.remove(description)
      files.remove_empty_tree(workdir)
    raise
  for path, why in cohort.unused[:UNUSED_SHOWN]:  # all of them in segment_summary.json
    logging.info("[segment] not used: %s (%s)", os.path.relpath(path, cohort.root), why)
  if len(cohort.unused) > UNUSED_SHOWN:
    logging.info("[segment] ... and %d more file(s) not used", len(cohort.unused) - UNUSED_SHOWN)
  exams = shard_of(list(cohort.exams), config.shard)
  options = inference_options(config, bundle)
  threshold = options.threshold
  mine = settings(config, bundle, options)
  key = settings_hash(mine)
  inputs = {}  # each exam's inputs_sha256, read once
  exams, resumed = _to_do(exams, workdir, config, key, mine, inputs)
  # raw exams: the network is built (on a machine's first run the oneDNN extension, ~15 s) and
  # compiled while the first exam is preprocessed; exams given preprocessed have nothing to hide
  # it behind
  network = Network(bundle["path"], options, background=bool(exams) and not config.preprocessed)
  logging.info("[segment] %d exam(s) from %s%s with the model %s (threshold %g)%s", len(exams),
               cohort.root, f" (shard {config.shard})" if config.shard else "",
               model_name(bundle), threshold,
               "" if config.preprocessed else "; preprocessing each exam first")
  done, failed = [], []
  t = time.time()
  staging_root = os.path.join(workdir, "work", "staging")
  current = None
  try:
    for i, (exam, ready) in enumerate(_prepared(exams, config, bundle, workdir)):
      current = exam.exam_id
      # serial: this exam's preprocessing; overlapped: the part of it the network did not hide
      waited = time.time() - t
      staging = os.path.join(staging_root, exam.bids_prefix)
      shutil.rmtree(staging, ignore_errors=True)
      had = outputs.complete(workdir, exam) is not None
      try:
        if isinstance(ready, Exception):
          raise ready
        made_from = inputs.get(exam.exam_id) or inputs_sha256(exam)  # before it is segmented
        row = _segment_one(exam, ready, network.get(), options, config, bundle, staging)
        row.update(seconds=round(time.time() - t, 1), preprocess_wait_s=round(waited, 1),
                   settings=mine, settings_sha256=key, inputs_sha256=made_from)
        summary = outputs.write_summary(staging, exam, row)
        outputs.publish(staging, workdir, exam)  # the exam's old outputs stay until here
        done.append(summary)
        status = _lesion_count(row) + ("" if row["status"] == "segmented"
                                       else f" [{row['status']}]")
      except Exception as e:  # noqa: BLE001 - one exam's failure must not stop the others
        failed.append({"exam_id": exam.exam_id, "error": f"{type(e).__name__}: {e}",
                       "earlier_outputs_kept": had})
        status = f"FAILED: {e}" + (" (its earlier outputs are kept)" if had else "")
      finally:
        shutil.rmtree(staging, ignore_errors=True)
      elapsed = time.time() - t0
      eta = elapsed / (i + 1) * (len(exams) - i - 1)
      logging.info("[segment] %d/%d %s: %s (%.0f s; ETA %.0f s)", i + 1, len(exams),
                   exam.exam_id, status, time.time() - t, eta)
      t = time.time()
      current = None
  except KeyboardInterrupt:
    # the exam in the making was removed by its `finally`; the staging root may hold another
    # shard's exam in the making (--config.shard runs share a workdir): only empty folders go
    files.remove_empty_tree(os.path.join(workdir, "work"))
    finished = sorted(r["exam_id"] for r in done)
    print(f"msjax segment: interrupted{' during ' + current if current else ''}. "
          f"{len(finished)} exam(s) finished in this run ({', '.join(finished) or 'none'}), "
          f"{len(resumed)} before; their outputs are complete in {workdir}. The same command "
          "continues with the rest.", file=sys.stderr)
    raise SystemExit(130)
  files.remove_empty_tree(os.path.join(workdir, "work"))  # the staging folders, when all moved
  rows = sorted(resumed + done, key=lambda r: r["exam_id"])
  name = (f"segmentations.shard-{config.shard.replace('/', '-of-')}.csv" if config.shard
          else "segmentations.csv")
  outputs.write_cohort_table(rows, os.path.join(workdir, name))
  summary = {"model": model_name(bundle), "input": cohort.root, "threshold": threshold,
             "shard": config.shard or None, "exams": done, "resumed": resumed, "failed": failed,
             "unused": [{"file": p, "why": why} for p, why in cohort.unused],
             "wall_s": round(time.time() - t0, 1)}
  files.write_json(summary, os.path.join(workdir, name.replace("segmentations", "segment_summary")
                                         .replace(".csv", ".json")))
  print(f"[segment] {len(done)}/{len(exams)} exam(s) segmented in {summary['wall_s']:.0f} s"
        + (f", {len(resumed)} already made with these settings (kept)" if resumed else "")
        + f" -> {workdir}/ (BIDS derivatives: sub-*/[ses-*/]anat/ lesion mask, probability, "
        f"uncertainty, per-lesion table, overlay PNG); one row per exam in {workdir}/{name}")
  for row in done:
    print(f"  {row['exam_id']}: {_lesion_count(row)}; {row['files']['overlay']}"
          + ("" if row.get("status", "segmented") == "segmented" else f" [{row['status']}]"))
  for f in failed:
    print(f"  {f['exam_id']} FAILED: {' '.join(line.strip() for line in f['error'].splitlines())}")
  if failed and not done and not resumed:
    raise errors.RunFailedError(f"no exam could be segmented ({len(failed)} failed; see "
                                   f"{workdir}/segment_summary.json)")
  return summary


def merge(workdir: str) -> dict:
  """`--config.merge=True`: the cohort table of every complete exam in workdir, from all shards."""
  summaries = outputs.find_summaries(workdir)
  if not summaries:
    raise errors.InvalidInputError(f"{workdir}: no complete exam outputs to merge "
                                   "(*_desc-lesion_summary.json)")
  path = outputs.write_cohort_table(summaries, os.path.join(workdir, "segmentations.csv"))
  print(f"[segment] merged {len(summaries)} exam(s) -> {path}")
  return {"exams": summaries, "csv": path}


def _lesion_count(row: dict) -> str:
  """'15 lesions (17 rows in the lesion table: 2 of 3 mm³ or less), 6.83 mL; QC ok'."""
  small = row["components"] - row["lesions"]
  qc = f"; QC {row['qc']}" + (f" ({row['qc_reasons']})" if row.get("qc_reasons") else "") \
      if row.get("qc") else ""
  return (f"{row['lesions']} lesions" + (f" (+{small} of 3 mm³ or less in the lesion table)"
                                          if small else "") + f", {row['volume_ml']:.2f} mL" + qc)
