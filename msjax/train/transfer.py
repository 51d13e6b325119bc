"""Encoder transfer from a pretraining checkpoint, by parameter path, shape-checked."""
from __future__ import annotations

import jax
import numpy as np
from absl import logging

from msjax import checkpoint
from msjax import rules as rules_lib
from msjax.models import paths

# the encoder comes from the pretraining checkpoint; the decoder (and a head) stay as initialised.
# Every family by name (msjax/models/paths.py): a parameter of no known family raises.
TRANSFER_RULES = [(paths.conv(paths.ENCODER_CONV), "transfer"),
                  (paths.norm(paths.ENCODER_NORM), "transfer"),
                  (paths.conv(paths.DECODER_CONV), "keep"),
                  (paths.norm(paths.DECODER_NORM), "keep"), (paths.conv(paths.HEAD), "keep")]


def transfer_encoder(params: dict, source_params: dict, *, source: str = "checkpoint"):
  """Returns params with every `encoder/...` leaf replaced by the source's leaf at the same path.

  Raises if a transferred path is missing in the source or has another shape. Logs what was loaded
  and what was left (decoder, and the source's regression head, which is discarded).
  """
  labels, _ = rules_lib.match(params, TRANSFER_RULES, what="transfer")
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
  logging.info("transfer from %s: loaded %d encoder leaves; left as initialised %d leaves "
               "(decoder); not used from the source: %s", source, len(loaded), len(kept), dropped)
  return out, {"loaded": sorted(loaded), "kept": sorted(kept), "dropped": dropped}


def transfer_from_checkpoint(params: dict, path: str):
  source_params, meta, where = checkpoint.restore_params(path)
  if meta.get("task") not in (None, "position"):
    logging.warning("init_from %s holds a %s checkpoint, not a pretraining one", where,
                    meta.get("task"))
  return transfer_encoder(params, source_params, source=where)
