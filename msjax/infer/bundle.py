"""The model bundle: a fine-tuning workdir holds everything needed to segment new scans.

Fine-tuning writes, beside its checkpoints,
  bundle.json     the model config and grid, the patch size, the probability threshold, the
                  preprocessing new raw exams need (settings + Nyúl landmarks learned from the
                  training exams' own intensities) and what the model was trained on;
  model_card.md   the same for people: training data, steps, validation scores, intended use.
`segment` reads it (`--config.model=<finetune workdir>`); there is no separate export step.
"""
from __future__ import annotations

import datetime
import itertools
import json
import os

import numpy as np

from msjax import errors, files
from msjax.data import acquisition, lesion_load, nifti
from msjax.data import manifest as manifest_lib
from msjax.data.manifest import MODALITIES
from msjax.preprocess import nyul

BUNDLE = "bundle.json"
CARD = "model_card.md"
NYUL_EXAMS = 12  # training exams the landmarks are learned from (a sample is enough)


def preprocessing_of(exams) -> dict | None:
  """The msjax preprocessing that made these exams (`preprocessing.json` beside their folders),
  when they share one; None when they were preprocessed outside msjax."""
  found = []
  for exam in exams:
    image = next(iter(exam.images.values()))
    path = os.path.join(os.path.dirname(os.path.dirname(image)), manifest_lib.PREPROCESSING_NAME)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      found.append(json.load(f))
  return found[0] if found and all(f["options"] == found[0]["options"] for f in found) else None


def learn_landmarks(exams) -> dict:
  """Nyúl landmarks per modality from the exams' brain intensities: what a new exam's histogram
  is mapped onto so that it looks like the training data."""
  samples: dict[str, list[np.ndarray]] = {}
  for exam in exams[:NYUL_EXAMS]:
    brain = None
    if exam.brain_mask:
      brain = nifti.read_nifti(exam.brain_mask, kind="mask").data > 0
    for m in MODALITIES:
      if m not in exam.images:
        continue
      data = nifti.read_nifti(exam.images[m]).data
      inside = brain if brain is not None and brain.shape == data.shape else data != 0
      samples.setdefault(m, []).append(data[inside])
  return nyul.fit_nyul(samples)


def input_spec(exam_sequences, sequence_dropout: float = 0.0) -> dict:
  """What a model trained on exams with these sequence sets takes (bundle.json's `inputs`).

  With sequence dropout in training (config.data.sequence_dropout > 0), every subset of the
  trained modalities that contains FLAIR; without it, only the sequence sets the training exams
  had (all trained modalities when every exam had all of them): the zeros of a missing sequence
  are inputs the network never learned."""
  sets = sorted({tuple(m for m in MODALITIES if m in s) for s in exam_sequences},
                key=lambda t: (-len(t), t))
  modalities = [m for m in MODALITIES if any(m in s for s in sets)]
  dropout = float(sequence_dropout or 0.0)
  if dropout > 0 and "FLAIR" in modalities:
    others = [m for m in modalities if m != "FLAIR"]
    subsets = [sorted(set(c) | {"FLAIR"}, key=MODALITIES.index)
               for k in range(len(others), -1, -1) for c in itertools.combinations(others, k)]
    rule = f"FLAIR with any of the other trained sequences (sequence dropout {dropout:g})"
  else:
    subsets = [list(t) for t in sets]
    rule = ("all trained sequences" if len(subsets) == 1 else
            "the sequence sets of the training exams") + " (no sequence dropout in training)"
  return {"modalities": modalities, "subsets": subsets, "sequence_dropout": dropout,
          "rule": rule}


def inputs_of(bundle: dict) -> tuple[dict, bool]:
  """(the bundle's `inputs`, declared?): a bundle written before msjax declared them takes all the
  sequences it has Nyúl landmarks for, together."""
  if "inputs" in bundle:
    return bundle["inputs"], True
  trained = [m for m in MODALITIES if m in bundle["preprocessing"]["nyul_landmarks"]]
  return {"modalities": trained, "subsets": [trained], "sequence_dropout": None,
          "rule": "all trained sequences (an older bundle that does not declare its inputs)"}, False


def sequences_for(bundle: dict, exam_id: str, sequences) -> list[str]:
  """The sequences of an exam the model is run on: its trained sequences, when they are one of
  the sets the model takes, else the largest such set the exam holds (the fallback, logged by the
  caller); InvalidInputError in one line when the exam holds none of them."""
  spec, _ = inputs_of(bundle)
  have = [m for m in MODALITIES if m in sequences and m in spec["modalities"]]
  fits = [s for s in spec["subsets"] if set(s) <= set(have)]
  if not fits:
    takes = " | ".join("+".join(s) for s in spec["subsets"][:6]) + (
        f" | ... ({len(spec['subsets'])} sets)" if len(spec["subsets"]) > 6 else "")
    raise errors.InvalidInputError(
        f"exam {exam_id} has {'+'.join(sorted(sequences, key=_order)) or 'no sequence'}; the "
        f"model takes {takes}: {spec['rule']}")
  return max(fits, key=len)


def _order(m: str) -> int:
  return MODALITIES.index(m) if m in MODALITIES else len(MODALITIES)


def write(workdir: str, config, train_exams, val_exams, summary: dict,
          threshold: float = 0.5) -> dict:
  """bundle.json and model_card.md into a fine-tuning workdir."""
  import msjax
  made_by = preprocessing_of(train_exams)
  bundle = {
      "format": 1, "msjax_version": msjax.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "task": "segmentation",
      "model": config.model.to_dict(),
      "model_grid": list(config.data.model_shape) or None,
      "patch_size": int(config.data.patch_size),
      "threshold": float(threshold),
      "preprocessing": {
          "by": "msjax" if made_by else "external",
          "format": made_by.get("format", 1) if made_by else None,
          "options": made_by["options"] if made_by else None,
          "nyul_landmarks": learn_landmarks(train_exams),
          "note": None if made_by else (
              "the training exams were preprocessed outside msjax; new raw exams go through "
              "msjax's pipeline (N4, co-registration to FLAIR, ROBEX, MNI, 128³) with Nyúl "
              "landmarks learned from the training exams, or, already on the model grid, "
              "straight to the network (segment --config.preprocessed=True)")},
      "training": {
          "cohort": config.data.cohort,
          "exams": [e.exam_id for e in train_exams],
          "patients": sorted({e.patient_id for e in train_exams}),
          "validation_exams": [e.exam_id for e in val_exams],
          "strategy": str(config.train.freeze), "init_from": config.train.init_from,
          "steps": summary["steps"], "seed": int(config.seed),
          "final": summary.get("final", {}),
          "augmentation": augmentation(config.data.to_dict())},
      "inputs": input_spec([set(e.images) for e in train_exams],
                           config.data.get("sequence_dropout", 0.0)),
  }
  from msjax import shipped
  bundle = shipped.seal(bundle)
  files.write_json(bundle, os.path.join(workdir, BUNDLE))
  files.write_text(model_card(bundle), os.path.join(workdir, CARD))
  return bundle


def _provenance(t: dict) -> str:
  files_ = t["exam_files"]
  text = (f"{len(files_)} training image/mask file(s), sha256 per file in bundle.json "
          "(training.exam_files)")
  enc = t.get("encoder_sha256")
  return text + (f"; encoder {t.get('encoder')} sha256 `{enc[:16]}...`" if enc else "")


def _share(p) -> str:
  return f"{100 * float(p):.0f} %"


def augmentation(data: dict) -> str:
  """What the training did to its exams, in words, from the data block of the recorded config
  (`bundle.json` config.data): what a model has seen decides what it can be given."""
  parts = []
  if data.get("augment"):
    parts.append("scaling, mirroring, intensity jitter")
  if data.get("intensity"):
    parts.append("nnU-Net's gamma, contrast and brightness")
  if data.get("lesion_load"):
    lo, hi = data.get("lesion_load_ml") or lesion_load.LoadSpec().added_ml
    parts.append(f"lesions of the training exams pasted in, {lo:g}-{hi:g} mL added, in "
                 f"{_share(data['lesion_load'])} of the exams drawn")
  if data.get("transplant"):
    maps = os.path.basename(str(data.get("lesion_maps", "")).rstrip("/")) or "?"
    parts.append(f"another patient's real lesions (`{maps}`) transplanted in "
                 f"{_share(data['transplant'])} of the exams drawn")
  if data.get("renormalise") and (data.get("lesion_load") or data.get("transplant")):
    parts.append("an exam given lesions z-scored again with them in")
  lo, hi = data.get("slice_mm") or acquisition.Spec().slice_mm  # a config before the key
  if data.get("thick_slices"):
    parts.append(f"a sequence re-acquired as {lo:g}-{hi:g} mm 2D slices "
                 f"({_share(data['thick_slices'])} per sequence)")
  if data.get("thick_exam"):
    gap = data.get("slice_gap", (0.0, 0.0))
    parts.append(f"every sequence acquired as one {lo:g}-{hi:g} mm 2D exam, slice gaps "
                 f"{100 * gap[0]:.0f}-{100 * gap[1]:.0f} % of the thickness, in "
                 f"{_share(data['thick_exam'])} of the patches")
  if data.get("bias_field"):
    parts.append(f"a bias field ({_share(data['bias_field'])} per sequence)")
  if data.get("noise"):
    parts.append(f"Gaussian noise ({_share(data['noise'])} per sequence)")
  if data.get("sequence_dropout"):
    parts.append(f"sequences other than FLAIR dropped ({_share(data['sequence_dropout'])} "
                 "per patch)")
  return "; ".join(parts) or "none"


def _augmentation_of(b: dict) -> str | None:
  """The training's augmentation in words: recorded at fine-tuning, else (a bundle written before
  it was) from the exported config's data block; None when neither is there."""
  data = b.get("config", {}).get("data")
  return b["training"].get("augmentation") or (augmentation(data) if data else None)


def model_card(b: dict) -> str:
  t, p = b["training"], b["preprocessing"]
  spec, _ = inputs_of(b)
  augmented = _augmentation_of(b)
  final = t.get("final") or {}
  val = final.get("val_dice")
  lines = [
      "# msjax MS lesion segmentation model", "",
      f"Created {b['created']} by msjax {b['msjax_version']}.", "",
      "## What it does",
      "Segments multiple-sclerosis white-matter lesions in brain MRI (T1W, contrast T1W, T2W, "
      "FLAIR, PDW; a missing sequence is a zero input, see Inputs) with the Isensee-2017 3D encoder-decoder "
      f"on {b['patch_size']}³ patches of " + (
          f"the {'x'.join(map(str, b['model_grid']))} model grid" if b["model_grid"]
          else "each exam's own grid") +
      f"; a voxel is lesion when its probability is ≥ {b['threshold']:g}.", "",
      "## Trained on",
      f"- {len(t['exams'])} exam(s) of {len(t['patients'])} patient(s): "
      f"{', '.join(t['patients'])} (cohort `{t['cohort']}`)",
      f"- strategy {t['strategy']}" + (f", encoder from `{t['init_from']}`" if t['init_from']
                                       else "") + f"; {t['steps']} steps, seed {t['seed']}",
      f"- network: base width {b['model']['base_width']}, compute dtype {b['model']['dtype']}"
      + (f" (trained in {t['trained_dtype']})"
         if t.get("trained_dtype", b["model"]["dtype"]) != b["model"]["dtype"] else ""),
  ] + ([f"- augmentation: {augmented}"] if augmented else []) + [
      f"- threshold {b['threshold']:g}: {t['threshold_chosen']}" if t.get("threshold_chosen")
       else f"- threshold {b['threshold']:g}: the default (predict.threshold), not chosen on "
       "left-out patients for this model"] + (
      [f"- lesion peak {b['min_lesion_peak']:g}: a predicted lesion is kept only where one of "
       f"its voxels reaches it; {t['lesion_peak_chosen']}"] if b.get("min_lesion_peak") else []
  ) + [
      f"- provenance: {_provenance(t)}" if t.get("exam_files") else "- provenance: not recorded",
      "", "## Validation",
      (f"- held-out patients {', '.join(t['validation_exams'])}: Dice {val:.3f}" if val is not None
       else "- no validation patients (every labelled patient was used for training); see the "
            "leave-one-out results this model came from, if any"),
      (f"- last training batch{' of the first member' if b.get('members') else ''} "
       f"(step {final['step']}; one batch, a noisy figure): loss {final['loss']:.4f}"
       + (f", batch Dice {final['batch_dice']:.3f}" if "batch_dice" in final else "")
       if "loss" in final else "- last training batch: not recorded"),
      "", "## Inputs",
      f"- trained sequences: {', '.join(spec['modalities'])}; it takes {spec['rule']}: "
      + "; ".join(" + ".join(x) for x in spec["subsets"]),
      "- `segment` refuses an exam outside these sets (no zeros fed for a sequence the model was "
      "never trained without)",
      "", "## Preprocessing new scans",
      f"- {'msjax preprocessing with ' + json.dumps(p['options']) if p['by'] == 'msjax' else p['note']}",
      f"- Nyúl landmarks for {', '.join(sorted(p['nyul_landmarks']))} (in bundle.json)",
      "", "## Use",
      "`msjax --config=segment --config.model=<this folder> --config.input=<exam folder, folder "
      "of exams or BIDS dataset> --workdir OUT`",
      "", "## Limits",
      "A research model trained on few patients: check every mask (the overlay PNGs) before use; "
      "not a medical device.", ""]
  return "\n".join(lines)


def read(path: str) -> dict:
  """The bundle of a fine-tuning workdir; a clear error when there is none."""
  path = os.path.abspath(os.path.expanduser(path))
  file = os.path.join(path, BUNDLE) if os.path.isdir(path) else path
  if not os.path.exists(file):
    from msjax import shipped
    known = shipped.names("segmentation")
    raise errors.InvalidInputError(
        f"{path}: not a model bundle (no {BUNDLE}); give the workdir of a finished fine-tuning "
        "(msjax --config=finetune ... --workdir DIR) or the name of a shipped model ("
        + (", ".join(known) if known else f"none in {shipped.root()} yet") + ")")
  try:
    with open(file) as f:
      bundle = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.InvalidInputError(f"{file}: not valid JSON ({e})") from e
  for key in ("model", "threshold", "preprocessing", "patch_size"):
    if key not in bundle:
      raise errors.InvalidInputError(f"{file}: a model bundle without {key!r}")
  from msjax import shipped
  shipped.check_content(bundle, file)
  made = bundle["preprocessing"]
  problem = made.get("by") == "msjax" and manifest_lib.preprocessing_format_problem(
      made, f"{file} (the preprocessing of the model's training exams)")
  if problem:
    raise errors.InvalidInputError(problem + ", then train the model again")
  bundle["path"] = os.path.dirname(file)
  _check_weights(bundle["path"], file)
  return bundle


def _check_weights(folder: str, file: str) -> None:
  """A bundle is only as good as its weights: refused up front when they are missing (or, for a
  shipped model, damaged: msjax/shipped), not after the first exam has been preprocessed."""
  from msjax import checkpoint, shipped
  if shipped.is_shipped(folder):
    shipped.verify(folder)
    return
  try:
    checkpoint.find_checkpoint_dir(folder)
  except FileNotFoundError as e:
    raise errors.InvalidInputError(f"{file}: the model bundle has no weights ({e}); copy its "
                                   "checkpoints/ folder with it, or train it again") from e
