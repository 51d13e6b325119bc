"""A trained workdir -> a shipped-model folder (msjax/shipped/__init__.py for the layout).

`export(workdir, folder, name)`: the workdir's network (its best/ checkpoint when the run
validated, else its latest: checkpoint.find_checkpoint_dir) as float16 arrays keyed by parameter
path, their sha256 and the bundle in bundle.json, and a model card. Every file is written
atomically (msjax/files.py); bundle.json last, so a folder is a model only once complete.
"""
from __future__ import annotations

import datetime
import os

import numpy as np

from msjax import checkpoint, errors, files, rules, shipped
from msjax.infer import bundle as bundle_lib
from msjax.ops import hardware

F16_MAX = float(np.finfo(np.float16).max)


def export(workdir: str, folder: str, name: str, *, training: dict | None = None,
           figures: str = "", threshold: float | None = None, calibration: str = "",
           root: str = "", compute_dtype: str = "", members: tuple[str, ...] = (),
           lesion_peak: tuple[float, str] | None = None) -> dict:
  """Writes the shipped model `name` into `folder` from a pretraining or fine-tuning workdir;
  returns its bundle. training: entries added to the bundle's training record (e.g. the number of
  pretraining scans); figures: markdown put in the card's Results section; threshold: the
  probability threshold chosen for the shipped model (calibration: how, for the card); root: the
  folder the training ran in, whose paths the bundle and card name relative to it (no path of
  the machine that trained the model is shipped); compute_dtype: the model.dtype the shipped
  model runs in ('auto': bfloat16 where the user's machine has it), whatever it was trained in
  (kept in training.trained_dtype); '' keeps the training's. members: further fine-tuning
  workdirs of the same network (other seeds), shipped with it as one ensemble (bundle format 2,
  weights-1.npz, ...: segment averages their probabilities). lesion_peak: (the lesion peak
  chosen for the shipped model, predict.min_lesion_peak; how, for the card)."""
  if compute_dtype and compute_dtype not in hardware.DTYPES + ("auto",):
    raise errors.InvalidInputError(f"compute dtype {compute_dtype!r} for {name}: not one of "
                                   f"{', '.join(hardware.DTYPES + ('auto',))}")
  params, meta, where = checkpoint.restore_params(workdir)
  task = meta.get("task")
  if task not in ("segmentation", "position"):
    raise errors.InvalidInputError(f"{where}: a {task} checkpoint cannot be shipped")
  if members and task != "segmentation":
    raise errors.InvalidInputError(f"{where}: only a segmentation network ships as an ensemble")
  # the whole model is written into a temporary folder that then takes `folder`'s place: a
  # refused member or a crash leaves the model there before intact, and no weights file of a
  # larger ensemble exported there before stays beside the new bundle
  with files.atomic_folder(folder) as tmp:
    records, sources = _write_members(params, meta, where, members, tmp)
    bundle = _bundle(workdir, name, meta, members, sources, records, training=training,
                     threshold=threshold, calibration=calibration, root=root,
                     compute_dtype=compute_dtype, lesion_peak=lesion_peak)
    files.write_text(card(bundle, figures), os.path.join(tmp, shipped.CARD))
    files.write_json(bundle, os.path.join(tmp, shipped.BUNDLE))
  return bundle


def _write_members(params, meta: dict, where: str, members: tuple[str, ...], folder: str):
  """Writes the network and each further member's weights (weights-k.npz) into `folder`;
  their records and checkpoint folders. A member of another network is refused by name."""
  records = [_write_weights(params, where, folder, shipped.WEIGHTS)]
  sources = [where]
  for k, other in enumerate(members, start=1):
    more, their_meta, their_where = checkpoint.restore_params(other)
    if their_meta.get("task") != meta.get("task") or (
        _architecture(their_meta) != _architecture(meta)):
      raise errors.InvalidInputError(
          f"{their_where}: not the same network as {where} (task, model block), cannot join "
          "its ensemble")
    records.append(_write_weights(more, their_where, folder, f"weights-{k}.npz"))
    sources.append(their_where)
  return records, sources


def _bundle(workdir: str, name: str, meta: dict, members: tuple[str, ...], sources: list[str],
            records: list[dict], *, training, threshold, calibration, root, compute_dtype,
            lesion_peak=None) -> dict:
  """The sealed bundle.json of the exported model (its weights already written: records)."""
  task, where = meta.get("task"), sources[0]
  if task == "segmentation":
    bundle = {k: v for k, v in bundle_lib.read(workdir).items()
              if k not in ("path", shipped.CONTENT_KEY)}
    bundle["inputs"] = bundle_lib.inputs_of(bundle)[0]
  else:
    bundle = _encoder_bundle(meta)
  bundle["training"].update(training or {})
  if threshold is not None:
    bundle["threshold"] = float(threshold)
    bundle["training"]["threshold_chosen"] = calibration
  if lesion_peak is not None:
    bundle["min_lesion_peak"] = float(lesion_peak[0])
    bundle["training"]["lesion_peak_chosen"] = lesion_peak[1]
  root = os.path.abspath(root or os.path.dirname(os.path.abspath(workdir)))
  bundle.update(
      name=name, task=task, config=meta["config"],
      exported={"from": os.path.abspath(workdir), "checkpoint": where,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
  if members:
    bundle["exported"]["members"] = [{"from": os.path.abspath(w), "checkpoint": c}
                                     for w, c in zip((workdir,) + tuple(members), sources)]
  if compute_dtype:
    trained_in = bundle["config"]["model"]["dtype"]
    bundle["config"] = {**bundle["config"],
                        "model": {**bundle["config"]["model"], "dtype": compute_dtype}}
    bundle["model"] = {**bundle["model"], "dtype": compute_dtype}
    bundle["training"]["trained_dtype"] = trained_in
  bundle = portable(bundle, root)
  bundle["weights"] = records[0]
  if members:
    bundle.update(format=2, members=records)  # an older msjax refuses it, not half-reads it
  return shipped.seal(bundle)


def _write_weights(params, where: str, folder: str, file: str) -> dict:
  """One network's parameters as float16 arrays keyed by path, written atomically; its record."""
  flat = {p: np.asarray(v, np.float32) for p, v in rules.flat_paths(params).items()}
  too_big = [p for p, v in flat.items() if np.abs(v).max(initial=0) > F16_MAX]
  if too_big:
    raise ValueError(f"{where}: parameters beyond float16's range, cannot ship as float16: "
                     f"{too_big[:5]}")
  path = os.path.join(folder, file)
  with files.atomic(path) as tmp:
    np.savez_compressed(tmp, **{p: v.astype(np.float16) for p, v in sorted(flat.items())})
  return {"file": file, "sha256": shipped.sha256(path), "dtype": "float16", "arrays": len(flat),
          "parameters": int(sum(v.size for v in flat.values())), "bytes": os.path.getsize(path)}


def _architecture(meta: dict) -> dict:
  """What must match for two networks to be averaged: the model block without its dtype."""
  model = dict(meta.get("config", {}).get("model", {}))
  model.pop("dtype", None)
  return {"model": model, "patch": meta.get("config", {}).get("data", {}).get("patch_size")}


def portable(value, root: str):
  """`value` with every absolute path of this machine made relative to `root` (the training
  folder, written `<training>/...`) or, outside it, cut to its last two parts: a shipped bundle
  and card name what trained the model, not where it lay."""
  if isinstance(value, dict):
    return {k: portable(v, root) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(portable(v, root) for v in value)
  if isinstance(value, str) and os.path.isabs(value):
    path = os.path.normpath(value)
    if path == root or path.startswith(root + os.sep):
      return "<training>/" + os.path.relpath(path, root) if path != root else "<training>"
    return os.path.join("...", *path.split(os.sep)[-2:])
  return value


def _encoder_bundle(meta: dict) -> dict:
  import msjax
  cfg = meta["config"]
  return {"format": 1, "msjax_version": msjax.__version__,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "model": cfg["model"], "model_grid": list(cfg["data"]["model_shape"]) or None,
          "patch_size": int(cfg["data"]["patch_size"]),
          "training": {"cohort": cfg["data"]["cohort"], "steps": meta.get("step"),
                       "seed": cfg.get("seed")}}


def card(b: dict, figures: str = "") -> str:
  """The model card of a shipped model: the fine-tuning card (msjax/infer/bundle.py) or the
  encoder's, with the shipped name, file, hash and use."""
  w = b["weights"]
  size = f"{w['bytes'] / 1e6:.1f} MB"
  head = [f"Shipped as `{b['name']}` (msjax/shipped/{b['name']}/): {w['parameters']:,} parameters "
          f"as float16 in `{w['file']}` ({size}, sha256 `{w['sha256']}`, checked at every load).",
          ""]
  members = shipped.member_records(b)
  if len(members) > 1:
    seeds = b.get("training", {}).get("member_seeds")
    head = [f"Shipped as `{b['name']}` (msjax/shipped/{b['name']}/): an ensemble of "
            f"{len(members)} networks of {w['parameters']:,} parameters each, the same recipe "
            + (f"at seeds {', '.join(map(str, seeds))}" if seeds else "at other seeds")
            + "; `segment` averages their probabilities (nnU-Net's ensemble). As float16, "
            "sha256 checked at every load: "
            + "; ".join(f"`{m['file']}` ({m['bytes'] / 1e6:.1f} MB, `{m['sha256'][:16]}…`)"
                        for m in members) + ".", ""]
  results = ["## Results", figures or "<!-- LEAD: measured figures go here (leave-one-out Dice per "
             "input: all sequences, FLAIR + T1W, FLAIR + T2W, FLAIR only, 4 mm thick slices; the "
             "longitudinal change regions found) -->", ""]
  if b["task"] == "segmentation":
    text = bundle_lib.model_card(b)
    text = text.replace("`msjax --config=segment --config.model=<this folder>",
                        f"`msjax --config=segment --config.model={b['name']}")
    title, rest = text.split("\n", 1)
    return "\n".join([title, ""] + head) + rest.rstrip("\n") + "\n\n" + "\n".join(results)
  t = b["training"]
  lines = [
      "# msjax pretrained encoder (position task)", ""] + head + [
      "## What it is",
      "The Isensee-2017 3D encoder (with its position-regression head) pretrained, "
      "self-supervised, to predict where a patch lies in its volume (Fenneteau et al., RFIAP "
      f"2020), on {b['patch_size']}³ patches" + (
          f" of the {'x'.join(map(str, b['model_grid']))} model grid" if b["model_grid"] else "")
      + f"; base width {b['model']['base_width']}.", "",
      "## Trained on",
      f"- {t.get('pretraining_scans', '?')} scan(s), labelled or not, from `{t['cohort']}`; "
      f"{t['steps']} steps, seed {t['seed']}", "",
      "## Use",
      "Transfer to your own labelled exams, the paper's way: "
      f"`msjax --config=finetune --config.data.cohort=COHORT --config.train.init_from={b['name']} "
      "--config.train.freeze=0 --workdir runs/mine` (freeze=N: the first N convolutions stay "
      "fixed).", "",
      "## Limits",
      "A research model pretrained on few scans; not a medical device.", ""]
  return "\n".join(lines)


def exported_files(folder: str) -> dict:
  """{file name: bytes} of a shipped-model folder (for the release summary)."""
  return {n: os.path.getsize(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
          if not n.startswith(".")}
