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
import hashlib
import json
import os
import re
import time

from absl import logging

from msjax import checkpoint, config_base, errors, files, shipped, stages
from msjax import leave_one_out as loo
from msjax.data import cohort as cohort_lib
from msjax.data import synthetic
from msjax.evaluate import ensemble
from msjax.infer import export as export_lib



def scans(config, workdir: str):
  """(labelled exams as given, the labelled exams training reads, every scan for pretraining,
  the labelled exams' preprocessing or None: config.preprocess_labelled, as leave_one_out)."""
  if config.labelled:
    cohort = cohort_lib.load_cohort(loo._existing(config.labelled, "labelled"))
  else:
    s = config.synthetic
    spec = synthetic.SyntheticSpec(n_ms=s.n_ms, n_non_ms=s.n_non_ms, n_test=0,
                                   shape=tuple(s.shape), spacing_mm=s.spacing_mm, seed=config.seed)
    cohort = synthetic.write_synthetic_cohort(os.path.join(workdir, "cohort"), spec,
                                              log=logging.info)
  given = cohort.select(labelled=True)
  if not given:
    raise errors.InvalidInputError(f"{cohort.root}: no labelled exam to fine-tune on")
  prep = (loo.preprocess_labelled(config, workdir)
          if config.labelled and config.preprocess_labelled else None)
  labelled = [prep.exams[e.exam_id] for e in given] if prep else given
  unlabelled = [prep.exams.get(e.exam_id, e) if prep else e
                for e in cohort.select(labelled=False)]
  if config.unlabelled_raw and not config.pretrained:  # unlabelled scans are for pretraining
    unlabelled += loo.preprocess_raw(config, workdir)
  for path in config_base.parse_list(config.unlabelled):
    unlabelled += list(cohort_lib.load_cohort(loo._existing(path, "unlabelled")).exams)
  return given, labelled, labelled + unlabelled, prep


def fingerprint(config) -> dict:
  """What makes a release run what it is (what it trains on and how), without where it writes
  or what goes into the card: a workdir holding a run of another fingerprint is not resumed."""
  text = json.dumps(_training_settings(config.to_dict()), sort_keys=True, default=str)
  return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "config": json.loads(text)}


# not what trains: where it writes, what goes into the card, the shipped dtype; members (member
# k is the same fine-tuning at seed + k in its own folder, so a run with more members resumes one
# with fewer and trains only the new ones)
NOT_TRAINING = ("out", "card_results", "threshold_from", "name", "shipped_dtype", "card_only",
                "members")


def _training_settings(c: dict) -> dict:
  return {k: v for k, v in c.items() if k not in NOT_TRAINING}


def _same_run(config, workdir: str) -> None:
  """Refuses to resume a workdir whose run was started with other settings (its checkpoints
  would be another model's); writes this run's fingerprint when the workdir is new."""
  path = os.path.join(workdir, "release_run.json")
  mine = fingerprint(config)
  if os.path.exists(path):
    with open(path) as f:
      theirs = json.load(f)
    # compared as settings, not by hash: a run recorded before a key left the fingerprint
    # (shipped_dtype, members), or before an option was added that this run leaves off, still
    # resumes
    recorded = _training_settings(theirs.get("config", {}))
    if recorded != _without_new_options_off(mine["config"], recorded):
      diff = sorted(_differences(recorded, mine["config"]))
      what = "; ".join(diff[:6]) or "its fingerprint differs"
      raise errors.InvalidInputError(
          f"{workdir} holds a release run with other settings ({what}): its checkpoints are "
          "not this run's; give another --workdir")
    return
  if any(os.path.isdir(os.path.join(workdir, d)) for d in ("pretrain", "finetune")):
    raise errors.InvalidInputError(
        f"{workdir} holds training runs not made by a release of this msjax (no "
        "release_run.json): give another --workdir")
  files.write_json(mine, path)


def _without_new_options_off(mine: dict, recorded: dict) -> dict:
  """`mine` without the options a run recorded earlier did not have and this one leaves off
  (False, 0, '' or None: msjax's options train as before when off)."""
  out = {}
  for k, v in mine.items():
    if k not in recorded:
      if not v:
        continue
    elif isinstance(v, dict) and isinstance(recorded[k], dict):
      v = _without_new_options_off(v, recorded[k])
    out[k] = v
  return out


def _differences(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _differences(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield f"{prefix.rstrip('.')}: {a!r} there, {b!r} here"


def threshold_from(loo_workdirs: str, strategy: str, min_lesion_mm3: float = 0.0
                   ) -> tuple[float, str, tuple[float, str]]:
  """The probability threshold and the lesion peak for the shipped model, chosen on left-out
  patients of leave-one-out runs of the recipe (comma-separated workdirs, one per member seed:
  their probability maps averaged as the ensemble averages its members): the threshold by mean
  Dice, then at it the lesion peak (predict.min_lesion_peak) by mean lesion F1, each by the
  one-standard-error rule (msjax/evaluate/ensemble.py). Returns (threshold, how, (peak, how))."""
  runs = [os.path.abspath(os.path.expanduser(r)) for r in config_base.parse_list(loo_workdirs)]
  for run in runs:
    if not os.path.exists(os.path.join(run, "leave_one_out.json")):
      raise errors.InvalidInputError(
          f"{run}: no finished leave-one-out to choose the threshold from "
          "(--config.threshold_from=<leave_one_out workdir>[,<another seed's>...])")
  threshold, how = ensemble.best_threshold(runs, strategy, min_lesion_mm3=min_lesion_mm3)
  return threshold, how, ensemble.best_peak(runs, strategy, threshold,
                                            min_lesion_mm3=min_lesion_mm3)


def provenance(exams) -> dict:
  """sha256 of every image and mask file the model was trained on, by exam and role."""
  out = {}
  for e in exams:
    for role, _, path in e.all_paths():
      out[f"{e.exam_id}/{role}"] = shipped.sha256(path)
  return out


def _pretraining_record(pre_dir: str) -> dict:
  """What a pretraining workdir trained on, for its encoder's card: the exams of the cohort its
  checkpoint names (the encoder ships with its exam list, as one pretrained here does). {} with a
  warning when that cohort file is gone."""
  meta = checkpoint.run_meta(pre_dir)
  manifest = meta.get("config", {}).get("data", {}).get("cohort", "")
  try:
    if not manifest:
      raise errors.InvalidInputError("its checkpoint names no cohort")
    exams = sorted(e.exam_id for e in cohort_lib.load_cohort(manifest).exams)
  except (OSError, ValueError, errors.InvalidInputError) as e:
    logging.warning("[release] %s: its pretraining cohort %r cannot be read (%s): the encoder "
                    "ships without its exam list", pre_dir, manifest, e)
    return {}
  return {"exams": exams, "pretraining_scans": len(exams)}


def _encoder_hash(pre_dir: str) -> str:
  """The pretrained encoder's identity: a shipped encoder's weights hash, or the sha256 over
  the files of the pretraining checkpoint used."""
  folder = shipped.find(pre_dir) if not os.path.isdir(pre_dir) else pre_dir
  if folder and shipped.is_shipped(folder):
    return shipped.read_bundle(folder)["weights"]["sha256"]
  from msjax import checkpoint
  step = checkpoint.restore_params(pre_dir)[2]
  h = hashlib.sha256()
  for dirpath, _, names in sorted(os.walk(step)):
    for n in sorted(names):
      h.update(os.path.relpath(os.path.join(dirpath, n), step).encode())
      h.update(shipped.sha256(os.path.join(dirpath, n)).encode())
  return h.hexdigest()


def recard(config) -> str:
  """Writes the card of the shipped model config.name again from its own bundle (hash checked)
  and config.card_results, without training: the card's Results follow the evidence as it lands
  and the weights stay as they are. Returns the card's path."""
  folder = os.path.join(os.path.abspath(os.path.expanduser(config.out or shipped.PACKAGE_DIR)),
                        config.name)
  results = card_results(config.card_results)
  bundle = shipped.read_bundle(folder)
  shipped.verify(folder, bundle)
  path = os.path.join(folder, shipped.CARD)
  files.write_text(export_lib.card(bundle, results), path)
  print(f"[release] card of {config.name} written again from its bundle and "
        f"{config.card_results or 'no results'} (weights unchanged) -> {path}")
  return path


def run(config, workdir: str) -> dict:
  if config.out is None:
    raise errors.InvalidInputError("--config.out=FOLDER is required here (the :smoke variant "
                                   "never writes into the package)")
  if config.card_only:
    return {"card": recard(config)}
  t0, times = time.time(), {}
  workdir = os.path.abspath(workdir)
  files.make_dirs(workdir)
  _same_run(config, workdir)
  threshold, calibration, lesion_peak = (threshold_from(
      config.threshold_from, stages.strategy_names(config.strategy)[0],
      config.predict.min_lesion_mm3) if config.threshold_from else (None, "", None))
  if calibration:
    logging.info("[release] threshold %g: %s", threshold, calibration)
    logging.info("[release] lesion peak %g: %s", *lesion_peak)
  results = card_results(config.card_results)  # read now: a missing file fails before training
  stages.check_schedules(config)
  given, labelled, everything, prep = scans(config, workdir)
  as_train = [dataclasses.replace(e, split="train") for e in everything]
  pre_manifest = loo.write_manifest(as_train, os.path.join(workdir, "cohorts", "pretrain.json"))
  ft_manifest = loo.write_manifest([dataclasses.replace(e, split="train") for e in labelled],
                                   os.path.join(workdir, "cohorts", "finetune.json"))
  logging.info("[release] %s, fine-tuning (%s) on %d labelled exams of %d patients",
               f"the encoder of {config.pretrained}" if config.pretrained else
               f"pretraining on {len(everything)} scans", config.strategy, len(labelled),
               len({e.patient_id for e in labelled}))
  pre_dir, ft_dir = os.path.join(workdir, "pretrain"), os.path.join(workdir, "finetune")
  t = time.time()
  if config.pretrained:  # an encoder pretrained before: shipped with the model as it is
    pre_dir = config.pretrained
  else:
    stages.pretrain(config, loo._data(config, pre_manifest, prep), pre_dir)
  times["pretrain"] = time.time() - t
  t = time.time()
  # an ensemble: the same fine-tuning at seeds seed, seed + 1, ... (member k in finetune-k)
  seeds = [config.seed + k for k in range(config.members)]
  ft_dirs = [ft_dir] + [f"{ft_dir}-{k}" for k in range(1, config.members)]
  for k, (member_dir, seed) in enumerate(zip(ft_dirs, seeds)):
    if config.members > 1:
      logging.info("[release] ensemble member %d of %d: fine-tuning at seed %d", k + 1,
                   config.members, seed)
    stages.finetune(config, loo._data(config, ft_manifest, prep), member_dir,
                    strategy=stages.strategy_names(config.strategy)[0], init_from=pre_dir,
                    seed=seed)
  times["finetune"] = time.time() - t
  out = os.path.abspath(os.path.expanduser(config.out or shipped.PACKAGE_DIR))
  files.writable_folder(out, "shipped-models folder")
  pre_scans = len(everything)
  encoder_name = config.name + shipped.ENCODER_SUFFIX
  encoder_sha = _encoder_hash(pre_dir)
  if config.pretrained:
    found = shipped.find(config.pretrained)
    encoder_name = shipped.read_bundle(found)["name"] if found else encoder_name
    encoder = shipped.read_bundle(found) if found else export_lib.export(
        pre_dir, os.path.join(out, encoder_name), encoder_name, root=workdir,
        training=_pretraining_record(pre_dir), compute_dtype=config.shipped_dtype)
    pre_scans = encoder["training"].get("pretraining_scans", pre_scans)
  else:
    encoder = export_lib.export(
        pre_dir, os.path.join(out, encoder_name), encoder_name, root=workdir,
        training={"exams": sorted(e.exam_id for e in everything), "pretraining_scans": pre_scans},
        compute_dtype=config.shipped_dtype)
  training = {"pretraining_scans": pre_scans, "encoder": encoder_name,
              "encoder_sha256": encoder_sha, "exam_files": provenance(given)}
  if config.members > 1:
    training["member_seeds"] = seeds
  model = export_lib.export(ft_dir, os.path.join(out, config.name), config.name,
                            training=training, figures=results, threshold=threshold,
                            calibration=calibration, root=workdir,
                            compute_dtype=config.shipped_dtype, members=tuple(ft_dirs[1:]),
                            lesion_peak=lesion_peak)
  times["total"] = time.time() - t0
  summary = {"out": out, "models": {config.name: model["weights"],
                                    encoder_name: encoder["weights"]},
             "pretrain": pre_dir, "finetune": ft_dirs if config.members > 1 else ft_dir,
             "times_s": times}
  files.write_json(summary, os.path.join(workdir, "release.json"))
  print(f"[release] done in {times['total']:.0f} s (pretraining {times['pretrain']:.0f} s, "
        f"fine-tuning {times['finetune']:.0f} s)")
  for name, w in summary["models"].items():
    print(f"  {os.path.join(out, name)}/  {w['parameters']:,} parameters, {w['file']} "
          f"{w['bytes'] / 1e6:.2f} MB, sha256 {w['sha256'][:16]}...")
  return summary


def card_results(paths: str) -> str:
  """The measured figures for the card's Results: generated results files (docs/results/), their
  headings demoted below the card's own, each figure link (relative to its file; the package
  does not carry the figure) turned into a line naming the figure's path in the repository."""
  parts = []
  for path in config_base.parse_list(paths):
    if not os.path.isfile(path):
      raise errors.InvalidInputError(f"{path}: release.card_results names no such file")
    with open(path) as f:
      text = _demote_headings(f.read())
    # the repository's path, never the training machine's
    folder = os.path.dirname(os.path.abspath(path))
    folder = os.path.relpath(folder, repository_root(folder))
    parts.append(re.sub(r"!\[([^\]]*)\]\((?![a-z]+://)([^)\s]+)\)",
                        lambda m: f"Figure ({m.group(1)}): "
                                  f"{os.path.normpath(os.path.join(folder, m.group(2)))} "
                                  "(in the repository)", text))
  return "\n\n".join(parts)


def repository_root(folder: str) -> str:
  """The checkout that holds folder: the nearest folder up with a pyproject.toml or .git (msjax
  itself may be installed elsewhere, e.g. into site-packages); the working directory if none."""
  here = os.path.abspath(folder)
  while True:
    if any(os.path.exists(os.path.join(here, m)) for m in ("pyproject.toml", ".git")):
      return here
    parent = os.path.dirname(here)
    if parent == here:
      return os.getcwd()
    here = parent


def _demote_headings(text: str) -> str:
  """A results file's headings one level below the card's Results section."""
  return "\n".join("##" + line if line.startswith("#") else line for line in text.splitlines())
