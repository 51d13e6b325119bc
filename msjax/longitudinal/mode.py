"""`longitudinal` mode: lesion change between two visits of each patient, as BIDS derivatives.

  msjax --config=longitudinal --config.input=<patients with two visits, or BIDS> --workdir OUT
  msjax --config=longitudinal --config.baseline=DIR --config.followup=DIR --workdir OUT
        [--config.model=<finetune workdir or shipped name> [--config.preprocessed=True]]

Per patient (pairs.py finds them), with its time and an ETA: both visits segmented with the same
model (--config.model as segment resolves it: without one, the default shipped model; when msjax
ships none, change detection alone, said in the log) by segment's machinery (the bundle's
preprocessing, predict.segment_exam, predict.export_exam: each visit's segment outputs in its
ses- folder); the change between them
(run.run_patient: rigid registration in the patient's space, subtraction, each visit's lesion
probability as a second opinion on faint change (change.detect), per-lesion classes);
the outputs named by change_paths (below, beside segment's naming in msjax/infer/outputs.py). A
patient's outputs are built in OUT/work/staging and moved over its old set only when complete,
the summary JSON last: they are one run's complete set or absent, and a re-run that fails leaves
the earlier run's set whole. A re-run keeps a patient whose outputs are complete and were made
with the same settings (the model and segment's settings for the visits, the change detection's;
`settings` below), and redoes the others, saying why (--config.overwrite=True redoes all). A
failing patient is reported and the others go on. At the end: changes.csv (one row per patient
made or kept) and longitudinal_summary.json (also the failures) in OUT.
The decision grid's class map and change.json stay in OUT/work/change/sub-<patient>/.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
import types

import numpy as np
from absl import logging

from msjax import errors, files
from msjax.data import manifest as manifest_lib
from msjax.infer import outputs
from msjax.longitudinal import change, figure, pairs as pairs_lib, run as run_lib

TABLE_COLUMNS = ("lesion_id", "class", "merged", "split", "lesions_baseline", "lesions_followup",
                 "volume_baseline_ml", "volume_followup_ml", "appeared_ml", "vanished_ml",
                 "peak_abs_z", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                 "mean_probability_baseline", "mean_probability_followup")
COHORT_COLUMNS = ("patient", "baseline", "followup") + tuple(change.CLASSES.values()) + (
    "new_or_enlarging_ml", "change_ml", "seg_lesions_baseline", "seg_lesions_followup",
    "seg_volume_baseline_ml", "seg_volume_followup_ml", "seconds", "table", "overlay")
CLASS_TSV = "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in change.CLASSES.items())


def change_paths(root: str, baseline: manifest_lib.Exam, followup: manifest_lib.Exam
                 ) -> dict[str, str]:
  """Every output file of one patient's change between two visits (the `longitudinal` mode): on
  each visit's native FLAIR grid, in that visit's folder,

    sub-01/ses-1/anat/sub-01_ses-1_space-orig_desc-change_mask.nii.gz     0/1 change
                      sub-01_ses-1_space-orig_desc-change_dseg.nii.gz     change classes (+ .tsv)
                      sub-01_ses-1_space-orig_desc-changelesion_dseg.nii.gz  change-table ids

  and for the pair, in the subject's folder: the per-lesion change table, the overlay figure,
  the follow-up -> baseline transform and the summary (written last, listed first)."""
  if baseline.bids["sub"] != followup.bids["sub"]:
    raise ValueError(f"{baseline.exam_id} and {followup.exam_id} are not one subject's visits")
  sub = f"sub-{baseline.bids['sub']}"
  top = os.path.join(root, sub)
  out = {"summary": os.path.join(top, f"{sub}_desc-change_summary.json")}
  for visit, exam in (("baseline", baseline), ("followup", followup)):
    d, p = outputs.exam_folder(root, exam), exam.bids_prefix
    out[f"{visit}_mask"] = os.path.join(d, f"{p}_space-orig_desc-change_mask.nii.gz")
    out[f"{visit}_classes"] = os.path.join(d, f"{p}_space-orig_desc-change_dseg.nii.gz")
    out[f"{visit}_classes_tsv"] = os.path.join(d, f"{p}_space-orig_desc-change_dseg.tsv")
    out[f"{visit}_lesions"] = os.path.join(d, f"{p}_space-orig_desc-changelesion_dseg.nii.gz")
  out.update(table=os.path.join(top, f"{sub}_desc-change_table.csv"),
             overlay=os.path.join(top, f"{sub}_desc-change_overlay.png"),
             transform=os.path.join(top, f"{sub}_desc-followuptobaseline_xfm.tfm"))
  return out


def _model(config, workdir: str):
  """The bundle, network, options and preprocessing of --config.model resolved as segment does
  (a fine-tuning workdir or a shipped model's name; '' = the default shipped model), or None when
  no model is given and this msjax ships none."""
  from msjax import segment, shipped
  if not config.model and shipped.find(shipped.DEFAULT) is None:
    logging.warning("[longitudinal] no --config.model and this msjax ships no model (%s holds "
                    "none): change detection alone, without the network's opinion",
                    shipped.root())
    return None
  bundle = segment.load_bundle(config.model)  # a damaged or unknown bundle is refused by name
  options = segment.inference_options(config, bundle)
  prepare = segment.preprocessor(config, bundle, workdir)
  # raw visits: the network is built and compiled while the first visit is preprocessed
  network = segment.Network(bundle["path"], options, background=not config.preprocessed,
                            job="longitudinal")
  return types.SimpleNamespace(
      path=bundle["path"], options=options, network=network,
      bundle=bundle, made_with=segment.made_with(config, bundle, options),
      prepare=lambda exam: prepare(segment.known_sequences(exam, bundle)))


def _segment(model, exam, workdir: str, config=None) -> tuple:
  """One visit through segment's steps: (segmentation in the visit's space, its exported row
  with the visit's report page and QC verdict where the report is on; a failing report leaves
  the visit's mask, as in segment)."""
  from msjax import segment
  from msjax.infer import predict
  ready = model.prepare(exam)
  seg = predict.segment_exam(model.network.get(), ready, model.options)
  row = predict.export_exam(seg, ready, workdir)
  if config is not None and config.report.enabled:
    try:
      from msjax.infer import clinical
      row.update(clinical.report_exam(seg, ready, workdir, flair_path=predict.flair_of(ready),
                                      bundle=model.bundle, threshold=model.options.threshold,
                                      config=config.report,
                                      model=segment.made_with(  # the visit's own preprocessing
                                          config, model.bundle, model.options,
                                          manifest_lib.preprocessing_record(ready))))
    except Exception as e:  # noqa: BLE001 - an optional output
      row["report_error"] = f"{type(e).__name__}: {e}"
      logging.warning("[longitudinal] %s: report failed (%s); its mask is kept", exam.exam_id, e)
  return seg, row


def mask_rule(options) -> dict:
  """How each visit's probabilities become the mask the change decision reads (run_patient's
  keywords): segment's rule with its inference options (predict.PredictOptions), so a lesion
  segment's mask drops cannot seed or class a change."""
  return dict(threshold=options.threshold, min_lesion_mm3=options.min_lesion_mm3,
              min_lesion_peak=options.min_lesion_peak)


def _exam_files(exam, validate: bool = False, allow_any_geometry: bool = False) -> dict:
  """The files the change detection reads (FLAIR, T2W). `validate`: those read by the data
  layer first, so that a broken one is refused naming the file and its problem, as segment refuses
  it (without a model nothing else reads them before ITK, whose reader only says it found none)."""
  from msjax.data import exams as exams_lib
  from msjax.preprocess import run as preprocess_run
  if "FLAIR" not in exam.images:
    raise errors.InvalidInputError(f"exam {exam.exam_id} has no FLAIR")
  if validate:
    used = dataclasses.replace(exam, images={m: p for m, p in exam.images.items()
                                             if m in ("FLAIR", "T2W")},
                               raters=(), consensus=None, brain_mask=None)
    _, problems = exams_lib.read_exam_files(used, allow_any_geometry, one_grid=False)
    if problems:
      raise errors.InvalidInputError(f"exam {exam.exam_id}:\n  " + "\n  ".join(problems))
  out = {"FLAIR": exam.images["FLAIR"]}
  if "T2W" in exam.images:
    out["T2W"] = exam.images["T2W"]
    tfm = preprocess_run.transform_file(exam, "T2W")
    if tfm:
      out["T2W_transform"] = tfm
  return out


def _all_paths(root: str, pair) -> dict[str, str]:
  """Every output file of one patient under `root`: its change files (their summary is the set's
  summary) and each visit's segment outputs."""
  out = dict(change_paths(root, pair.baseline, pair.followup))
  for visit, exam in (("baseline", pair.baseline), ("followup", pair.followup)):
    out.update({f"{visit}_seg_{k}": v for k, v in outputs.paths(root, exam).items()})
  return out


def _had_outputs(workdir: str, pair) -> bool:
  return os.path.exists(change_paths(workdir, pair.baseline, pair.followup)["summary"])


def settings(config, model) -> dict:
  """What makes a patient's outputs what they are: segment's settings for its visits (the model's
  content hash, inference, preprocessing, report) and the change detection's."""
  from msjax import segment
  import msjax
  return {"msjax": msjax.code_version(),
          "segment": segment.settings(config, model.bundle, model.options) if model else None,
          "change": config.change.to_dict(), "overlay_slices": config.overlay_slices}


def _complete(workdir: str, pair) -> dict | None:
  """The patient's summary when its outputs in `workdir` are complete: the summary and every file
  it lists (the change files and each visit's mask and report)."""
  path = change_paths(workdir, pair.baseline, pair.followup)["summary"]
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  listed = list(summary.get("files", {}).values()) + [
      v[k] for v in (summary.get("segmentation") or {}).values() for k in ("mask", "report")
      if k in v]
  return summary if all(os.path.exists(os.path.join(workdir, p)) for p in listed) else None


def _kept(prior: dict | None, config, key: str, mine: dict, pair, inputs) -> bool:
  """Whether a patient's complete earlier outputs are kept as they are (made with these
  settings from the same input files: segment.why_redo), saying why they are redone otherwise;
  `inputs`: a function giving the visits' inputs_sha256."""
  if prior is None:
    return False
  if config.overwrite:
    logging.info("[longitudinal] sub-%s: redone (--config.overwrite=True)", pair.patient)
    return False
  from msjax import segment
  why = segment.why_redo(prior, key, mine, inputs)
  if why is not None:
    logging.info("[longitudinal] sub-%s: redone, %s; the old ones stay until the new ones are "
                 "complete", pair.patient, why)
  return why is None


def _table(rows: list[dict], out: dict, visits: dict) -> list[dict]:
  """The change table: run_patient's rows, centroid as x/y/z (RAS mm of the baseline), and the
  mean lesion probability of each visit's segmentation over the lesion's change voxels there."""
  import nibabel as nib
  from scipy import ndimage
  means = {}
  for visit, (seg, _) in visits.items():
    ids = np.asarray(nib.load(out[f"{visit}_lesions"]).dataobj)
    if rows and ids.shape == seg.probability.shape:
      means[visit] = ndimage.mean(seg.probability, ids, [r["lesion_id"] for r in rows])
  table = []
  for i, r in enumerate(rows):
    row = {k: v for k, v in r.items() if k != "centroid_ras_mm"}
    row.update({f"centroid_{a}_mm": v for a, v in zip("xyz", r["centroid_ras_mm"])})
    for visit in ("baseline", "followup"):
      m = means.get(visit)
      row[f"mean_probability_{visit}"] = (None if m is None or not np.isfinite(m[i])
                                          else round(float(m[i]), 4))
    table.append(row)
  return table


def _patient(pair, config, workdir: str, model, root: str, made_with: dict) -> dict:
  """One patient's outputs, written under `root` (a staging folder laid out as the dataset: the
  summary's paths are relative to it); its intermediates go to workdir/work; `made_with`: the
  settings, their hash and the inputs' hash (recorded in the summary, so that a re-run can keep
  them)."""
  out = change_paths(root, pair.baseline, pair.followup)
  t0 = time.time()
  visits = {}
  if model:  # both visits with the same model, before the change decision
    visits = {v: _segment(model, e, root, config) for v, e in (("baseline", pair.baseline),
                                                               ("followup", pair.followup))}
  seg_s = round(time.time() - t0, 1)
  options = run_lib.Options(rule=change.Rule(**config.change.rule.to_dict()), n4=config.change.n4,
                            use_t2=config.change.use_t2, brain=config.change.brain,
                            itk_threads=int(config.preprocess.itk_threads))
  work = os.path.join(workdir, "work", "change", f"sub-{pair.patient}")
  probabilities = (tuple(outputs.paths(root, e)["probseg"] for e in (pair.baseline,
                                                                      pair.followup))
                   if model else None)  # the network's opinion as change evidence
  # with a model, segment has read and validated both visits' files already
  visit_files = [_exam_files(e, validate=not model, allow_any_geometry=config.allow_any_geometry)
                 for e in (pair.baseline, pair.followup)]
  result = run_lib.run_patient(*visit_files, work,
                               options, log=logging.info, probabilities=probabilities,
                               **(mask_rule(model.options) if model else {}))
  made = result["paths"]
  for visit in ("baseline", "followup"):
    for key, name in (("mask", "change_mask"), ("classes", "change_classes"),
                      ("lesions", "change_lesions")):
      files.make_dirs(os.path.dirname(out[f"{visit}_{key}"]))
      os.replace(made[f"{visit}_{name}"], out[f"{visit}_{key}"])
    files.write_text(CLASS_TSV, out[f"{visit}_classes_tsv"])
  os.replace(made["followup_to_baseline"], out["transform"])
  rows = _table(result["rows"], out, visits)
  files.write_csv(rows, out["table"], fieldnames=TABLE_COLUMNS)
  ses = (pair.baseline.bids["ses"], pair.followup.bids["ses"])
  checks = [f"registration between the visits: FLAIR r = {result['visits_correlation']:.2f} "
            f"over the brain (one patient's visits: about 0.9; refused under "
            f"{change.SAME_PATIENT_MIN_R:g})"]
  for visit, (_, row) in visits.items():
    if row.get("qc"):
      checks.append(f"{visit} scan QC: {row['qc'].upper()}"
                    + (f" ({row['qc_reasons']})" if row.get("qc_reasons") else ""))
  figure.change_overlay(pair.baseline.images["FLAIR"], pair.followup.images["FLAIR"],
                        out["transform"], out["baseline_classes"], out["baseline_lesions"],
                        out["overlay"], title=f"sub-{pair.patient}: ses-{ses[0]} -> ses-{ses[1]}",
                        n_slices=config.overlay_slices,
                        sessions=(f"baseline ses-{ses[0]}", f"follow-up ses-{ses[1]}"),
                        table=rows, checks=checks,
                        model=model.made_with if model else "no model: change detection alone")
  segmentation = {v: {"lesions": row["lesions"], "volume_ml": row["volume_ml"],
                      "mask": os.path.relpath(row["mask"], root),
                      **({"report": os.path.relpath(row["report"], root), "qc": row["qc"],
                          "qc_reasons": row.get("qc_reasons")} if row.get("report") else {}),
                      **({"report_error": row["report_error"]} if "report_error" in row else {})}
                  for v, (_, row) in visits.items()} or None
  summary = {
      "patient": pair.patient, "patient_id": pair.baseline.patient_id,
      **{v: {"exam_id": e.exam_id, "session": e.bids["ses"], "flair": e.images["FLAIR"]}
         for v, e in (("baseline", pair.baseline), ("followup", pair.followup))},
      "counts": result["counts"], "lesions": result["lesions"],
      "visits_correlation": result["visits_correlation"],
      **{k: result[k] for k in ("new_or_enlarging_ml", "change_ml", "brighter_ml", "darker_ml",
                                "t2_used", "probabilities_used", "probability_mask_rule")},
      "model": model.path if model else None, "segmentation": segmentation,
      "rule": result["rule"], "seconds": round(time.time() - t0, 1),
      "times_s": dict(result["times_s"], segmentation=seg_s if model else None),
      "files": {k: os.path.relpath(v, root) for k, v in out.items() if k != "summary"},
      **made_with}
  files.write_json(summary, out["summary"])  # last: the patient's outputs are complete
  return summary


def cohort_row(s: dict) -> dict:
  seg = s.get("segmentation") or {}
  return {"patient": s["patient"], "baseline": s["baseline"]["session"],
          "followup": s["followup"]["session"], **s["counts"],
          "new_or_enlarging_ml": s["new_or_enlarging_ml"], "change_ml": s["change_ml"],
          **{f"seg_lesions_{v}": seg.get(v, {}).get("lesions") for v in ("baseline", "followup")},
          **{f"seg_volume_{v}_ml": seg.get(v, {}).get("volume_ml")
             for v in ("baseline", "followup")},
          "seconds": s["seconds"], "table": s["files"]["table"], "overlay": s["files"]["overlay"]}


def _status(s: dict) -> str:
  counts = ", ".join(f"{v} {k}" for k, v in s["counts"].items())
  seg = s.get("segmentation")
  return (f"{counts}; new + enlarging {s['new_or_enlarging_ml']:.2f} mL" +
          (f"; segmented {seg['baseline']['lesions']} -> {seg['followup']['lesions']} lesions"
           if seg else ""))


def run(config, workdir: str) -> dict:
  t0 = time.time()
  pairs, source = pairs_lib.find_pairs(config)
  manifest_lib.check_output_names([e for p in pairs for e in (p.baseline, p.followup) if e])
  model = _model(config, workdir)
  outputs.write_description(workdir, outputs.generated_by(
      model.path if model else "none", Description="MS lesion change between two visits" +
      (f", both visits segmented with the model {model.path}" if model else "")))
  logging.info("[longitudinal] %d patient(s) from %s; %s", len(pairs), source,
               f"both visits segmented with the model {model.path}" if model else
               "no model (--config.model, or a shipped one): change detection only, no "
               "per-visit segmentation and no lesion probabilities")
  from msjax import segment
  mine = settings(config, model)
  key = segment.settings_hash(mine)
  done, failed, resumed = [], [], []
  staging_root = os.path.join(workdir, "work", "staging")
  for i, pair in enumerate(pairs):
    t = time.time()
    # a patient's outputs are built aside and moved over its old set only when complete: a
    # re-run that fails (or is stopped) leaves the earlier run's outputs whole
    staging = os.path.join(staging_root, f"sub-{pair.patient}")
    shutil.rmtree(staging, ignore_errors=True)
    had = pair.followup is not None and _had_outputs(workdir, pair)
    prior = None if pair.problem or pair.followup is None else _complete(workdir, pair)
    # the visits' inputs_sha256, read at most once, before the patient is made
    made_from = functools.cache(functools.partial(segment.inputs_sha256, pair.baseline,
                                                  pair.followup))
    if _kept(prior, config, key, mine, pair, made_from):
      resumed.append(prior)
      logging.info("[longitudinal] %d/%d sub-%s: kept, made before with these settings (%s)",
                   i + 1, len(pairs), pair.patient, _status(prior))
      continue
    try:
      if pair.problem:
        raise errors.InvalidInputError(pair.problem)
      summary = _patient(pair, config, workdir, model, staging, {
          "settings": mine, "settings_sha256": key, "inputs_sha256": made_from()})
      outputs.replace_set(_all_paths(staging, pair), _all_paths(workdir, pair))
      done.append(summary)
      status = _status(done[-1])
    except Exception as e:  # noqa: BLE001 - one patient's failure must not stop the others
      failed.append({"patient": pair.patient, "error": f"{type(e).__name__}: {e}",
                     "earlier_outputs_kept": had})
      status = f"FAILED: {type(e).__name__}: {e}" + (" (its earlier outputs are kept)" if had
                                                      else "")
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    eta = (time.time() - t0) / (i + 1) * (len(pairs) - i - 1)
    logging.info("[longitudinal] %d/%d sub-%s: %s (%.0f s; ETA %.0f s)", i + 1, len(pairs),
                 pair.patient, status, time.time() - t, eta)
  files.remove_empty_tree(staging_root)
  rows = sorted(done + resumed, key=lambda s: s["patient"])
  csv_path = files.write_csv([cohort_row(s) for s in rows], os.path.join(workdir, "changes.csv"),
                             fieldnames=COHORT_COLUMNS)
  summary = {"input": source, "model": model.path if model else None,
             "segmented": model is not None, "patients": done, "failed": failed,
             "resumed": [s["patient"] for s in resumed], "wall_s": round(time.time() - t0, 1)}
  files.write_json(summary, os.path.join(workdir, "longitudinal_summary.json"))
  print(f"[longitudinal] {len(done)}/{len(pairs)} patient(s) in {summary['wall_s']:.0f} s"
        + (f", {len(resumed)} kept from before (made with these settings)" if resumed else "")
        + " -> "
        f"{workdir}/ (BIDS derivatives: sub-*/ses-*/anat/ change mask and class map on each "
        f"visit's FLAIR grid; sub-*/ change table, overlay PNG, summary); one row per patient in "
        f"{csv_path}" + ("" if model else "; no model: no per-visit segmentation"))
  for s in done:
    print(f"  sub-{s['patient']}: {_status(s)} ({s['seconds']:.0f} s); {s['files']['overlay']}")
  for f in failed:
    print(f"  sub-{f['patient']} FAILED: {' '.join(f['error'].split())}")
  if failed and not done and not resumed:
    raise errors.InvalidInputError(f"no patient could be compared ({len(failed)} failed; see "
                                   f"{workdir}/longitudinal_summary.json)")
  return summary
