"""Transfer into a new fine-tuning, by parameter path, shape-checked: the encoder of a pretraining
checkpoint (a workdir, or a shipped encoder by name: msjax/shipped), or the whole network of a
segmentation model (a shipped one by name, or a fine-tuning workdir). Freezing is unchanged: the
strategy's first N convolutions stay fixed at what was transferred."""
from __future__ import annotations

import jax
import numpy as np
from absl import logging

from msjax import checkpoint, shipped
from msjax import rules as rules_lib
from msjax.models import paths

# the encoder comes from the pretraining checkpoint; the decoder (and a head) stay as initialised.
# Every family by name (msjax/models/paths.py): a parameter of no known family raises.
TRANSFER_RULES = [(paths.conv(paths.ENCODER_CONV), "transfer"),
                  (paths.norm(paths.ENCODER_NORM), "transfer"),
                  (paths.conv(paths.DECODER_CONV), "keep"),
                  (paths.norm(paths.DECODER_NORM), "keep"), (paths.conv(paths.HEAD), "keep")]
# a segmentation source: the decoder too (a model adapted to a site's own labelled exams)
WHOLE_RULES = [(rx, "transfer" if rx != paths.conv(paths.HEAD) else "keep")
               for rx, _ in TRANSFER_RULES]


def transfer_encoder(params: dict, source_params: dict, *, source: str = "checkpoint",
                     rules=None):
  """Returns params with every `encoder/...` leaf (every leaf `rules` labels "transfer")
  replaced by the source's leaf at the same path.

  Raises if a transferred path is missing in the source or has another shape. Logs what was loaded
  and what was left (decoder, and the source's regression head, which is discarded).
  """
  labels, _ = rules_lib.match(params, rules or TRANSFER_RULES, what="transfer")
  src = rules_lib.flat_paths(source_params)
  loaded, kept, problems = [], [], []

  def pick(path, label, leaf):
    p = rules_lib.path_str(path)
    if label != "transfer":
      kept.append(p)
      return leaf
    if p not in src:
      problems.append(f"{p}: missing in {source}")
      return leaf
    value = np.asarray(src[p])
    if value.shape != leaf.shape:
      problems.append(f"{p}: shape {value.shape} in {source}, {leaf.shape} in the model")
      return leaf
    loaded.append(p)
    return jax.numpy.asarray(value, dtype=leaf.dtype)

  out = jax.tree_util.tree_map_with_path(pick, labels, params)
  if problems:
    raise ValueError("encoder transfer failed:\n  " + "\n  ".join(problems))
  dropped = sorted(set(src) - set(loaded))
  logging.info("transfer from %s: loaded %d leaves; left as initialised %d leaves; not used "
               "from the source: %s", source, len(loaded), len(kept), dropped)
  return out, {"loaded": sorted(loaded), "kept": sorted(kept), "dropped": dropped}


def rules_for(task: str | None):
  """WHOLE_RULES for a segmentation source (encoder and decoder), TRANSFER_RULES for a pretraining
  one (the encoder)."""
  return WHOLE_RULES if task == "segmentation" else TRANSFER_RULES


def source_rules(path: str):
  """The rules transfer_from_checkpoint(params, path) will follow, from the source's metadata."""
  return rules_for(checkpoint.source_task(shipped.find(path) or path))


def transfer_from_checkpoint(params: dict, path: str):
  """init_from: a shipped model's name (msjax/shipped) or a workdir / checkpoint folder. A
  position (pretraining) source gives the encoder; a segmentation source the whole network."""
  folder = shipped.find(path)
  if folder:
    logging.info("init_from: the shipped model %s", shipped.describe(
        folder, shipped.read_bundle(folder)))
  source_params, meta, where = checkpoint.restore_params(folder or path)
  whole = meta.get("task") == "segmentation"
  if meta.get("task") not in (None, "position", "segmentation"):
    logging.warning("init_from %s holds a %s checkpoint, not a pretraining one", where,
                    meta.get("task"))
  if whole:
    logging.info("init_from %s is a segmentation model: the whole network is transferred "
                 "(encoder and decoder)", where)
  return transfer_encoder(params, source_params, source=where, rules=rules_for(meta.get("task")))
