"""Models shipped inside the package (package data of the wheel; nothing is downloaded).

One folder per model, `msjax/shipped/<name>/`:
  bundle.json    what a fine-tuning workdir's bundle holds (msjax/infer/bundle.py; the encoder's
                 is shorter), plus `config` (the training config the network is rebuilt from) and
                 `weights`: the file, its sha256 (checked at every load) and its arrays' dtype;
  weights.npz    every parameter as a float16 array keyed by its stable path
                 (`encoder/conv3/kernel`, msjax/models/paths.py), loaded into the same NNX
                 parameter tree (shape-checked) in the network's float32 parameter dtype;
  weights-1.npz… an ensemble's further members (the same network trained again at other
                 seeds), listed with their sha256 in bundle.json's `members` (format 2): the
                 prediction is the mean of the members' probabilities (nnU-Net's ensemble);
  model_card.md  training data, steps, scores, intended use and limits.

DEFAULT (segmentation, what `segment` uses with no --config.model) and ENCODER (the pretrained
position network, for `finetune --config.train.init_from=<name>`) are written by
`python -m msjax.main --config configs/release.py` in the repository (msjax/release.py,
msjax/infer/export.py). MSJAX_SHIPPED_DIR points the lookup at another folder of shipped models
(tests, a site's own models).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from msjax import errors

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "msjax-lesjak"                 # the segmentation model segment uses by default
ENCODER_SUFFIX = "-encoder"              # <name>-encoder: the pretrained position network
ENCODER = DEFAULT + ENCODER_SUFFIX
BUNDLE, WEIGHTS, CARD = "bundle.json", "weights.npz", "model_card.md"
ENV = "MSJAX_SHIPPED_DIR"


def root() -> str:
  """The folder the shipped models are looked up in: $MSJAX_SHIPPED_DIR, else the package's."""
  return os.path.abspath(os.path.expanduser(os.environ.get(ENV) or PACKAGE_DIR))


def names(task: str | None = None) -> list[str]:
  """The shipped models (of a task: "segmentation" or "position")."""
  base = root()
  if not os.path.isdir(base):
    return []
  found = []
  for name in sorted(os.listdir(base)):
    path = os.path.join(base, name, BUNDLE)
    if os.path.isfile(path):
      if task is not None:
        try:
          with open(path) as f:
            if json.load(f).get("task") != task:
              continue
        except (OSError, json.JSONDecodeError):
          continue
      found.append(name)
  return found


def find(value: str) -> str | None:
  """The folder of the shipped model `value` names (a bare name, no path separator), or None when
  `value` is a path (a workdir) or no shipped model has that name. `./name` forces a path."""
  if not value or os.sep in value or "/" in value or value in (".", ".."):
    return None
  folder = os.path.join(root(), value)
  return folder if os.path.isfile(os.path.join(folder, BUNDLE)) else None


def is_shipped(path: str) -> bool:
  """Is this folder a shipped model (a bundle.json that records a weights file)?"""
  file = os.path.join(path, BUNDLE)
  if not os.path.isfile(file):
    return False
  try:
    with open(file) as f:
      return "weights" in json.load(f)
  except (OSError, json.JSONDecodeError):
    return False


def default_model() -> str:
  """The folder of the default shipped segmentation model; a clear error when this msjax ships
  none yet."""
  folder = find(DEFAULT)
  if folder is None:
    others = names("segmentation")
    raise errors.InvalidInputError(
        f"no shipped model {DEFAULT!r} in this msjax ({root()} holds "
        + (f"only {', '.join(others)}" if others else "none yet") + "): train and export it with "
        "`python -m msjax.main --config configs/release.py --workdir runs/release` in the "
        "repository, name a shipped one with "
        "--config.model=<name>, or give --config.model=<fine-tuning workdir>")
  return folder


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


CONTENT_KEY = "content_sha256"  # bundle.json's own hash: its threshold, landmarks and config
KNOWN_FORMAT = 2                # the newest bundle format this msjax reads (2: ensembles)


def content_hash(bundle: dict) -> str:
  """sha256 of a bundle's content (canonical JSON without this hash and the loader's `path`)."""
  body = {k: v for k, v in bundle.items() if k not in (CONTENT_KEY, "path")}
  text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def seal(bundle: dict) -> dict:
  """The bundle with its content hash, as written."""
  return dict(bundle, **{CONTENT_KEY: content_hash(bundle)})


def check_content(bundle: dict, file: str) -> None:
  """Refuses a bundle of a format this msjax does not know, and one whose content no longer
  matches the hash it was written with (edited or damaged after it was made)."""
  fmt = bundle.get("format", 1)
  if not isinstance(fmt, int) or fmt > KNOWN_FORMAT:
    raise errors.InvalidInputError(
        f"{file}: a model bundle of format {fmt!r}, made by another msjax version "
        f"({bundle.get('msjax_version', 'unknown')}); this msjax reads format {KNOWN_FORMAT}: "
        "upgrade msjax or export the model again with this one")
  want = bundle.get(CONTENT_KEY)
  if want is not None and want != content_hash(bundle):
    raise errors.InvalidInputError(
        f"{file}: damaged or edited after it was made (its content no longer matches its "
        f"{CONTENT_KEY} {str(want)[:16]}...): reinstall msjax or export the model again")


def read_bundle(folder: str) -> dict:
  file = os.path.join(folder, BUNDLE)
  try:
    with open(file) as f:
      bundle = json.load(f)
  except FileNotFoundError as e:
    raise errors.InvalidInputError(f"{folder}: not a shipped model (no {BUNDLE})") from e
  except json.JSONDecodeError as e:
    raise errors.InvalidInputError(f"{file}: damaged, not valid JSON ({e}); reinstall msjax "
                                   "or export the model again") from e
  for key in ("task", "config", "weights"):
    if key not in bundle:
      raise errors.InvalidInputError(f"{file}: a shipped model's bundle without {key!r}")
  check_content(bundle, file)
  return bundle


def member_records(bundle: dict) -> list[dict]:
  """The weights record of each member of the model (one, unless it is an ensemble)."""
  return list(bundle.get("members") or [bundle["weights"]])


def verify(folder: str, bundle: dict | None = None, record: dict | None = None) -> str:
  """A weights file (`record`, default the first member's), after checking that it is there and
  that its sha256 is bundle.json's."""
  bundle = bundle or read_bundle(folder)
  w = record or bundle["weights"]
  file = os.path.join(folder, w["file"])
  if not os.path.isfile(file):
    raise errors.InvalidInputError(f"{file}: the weights of the shipped model {folder} are "
                                   "missing; reinstall msjax or export the model again")
  digest = sha256(file)
  if digest != w["sha256"]:
    raise errors.InvalidInputError(
        f"{file}: damaged weights file (sha256 {digest[:16]}..., {os.path.getsize(file)} bytes; "
        f"{BUNDLE} records {w['sha256'][:16]}..., {w.get('bytes')} bytes): reinstall msjax or "
        "export the model again")
  return file


def load_params(folder: str, member: int = 0):
  """(params in the network's own parameter tree and dtype, bundle): the hash checked, every
  leaf present with its shape, no array left over. member: which of an ensemble's networks."""
  import jax
  from ml_collections import config_dict

  from msjax import rules
  from msjax.models import isensee
  from msjax.models import model as model_lib
  from flax import nnx

  bundle = read_bundle(folder)
  records = member_records(bundle)
  if not 0 <= member < len(records):
    raise errors.InvalidInputError(f"{folder}: member {member} of a model of {len(records)}")
  file = verify(folder, bundle, records[member])
  cfg = config_dict.ConfigDict(bundle["config"])
  # the template gives the parameters' paths and shapes, float32 whatever the compute dtype: a
  # bundle's "auto" is not resolved here (its log line would contradict a user's model.dtype)
  cfg.model.dtype = "float32"
  model = model_lib.Model(isensee.constructor(bundle["task"], cfg.model))
  template = nnx.to_pure_dict(model.template)
  try:
    with np.load(file) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001 - a file that hashes right but does not read
    raise errors.InvalidInputError(f"{file}: cannot be read as the weights of a shipped model "
                                   f"({type(e).__name__}: {e})") from e
  problems, used = [], set()

  def fill(path, leaf):
    p = rules.path_str(path)
    if p not in arrays:
      problems.append(f"{p}: missing")
      return np.zeros(leaf.shape, leaf.dtype)
    value = arrays[p]
    used.add(p)
    if value.shape != tuple(leaf.shape):
      problems.append(f"{p}: shape {value.shape} in the file, {tuple(leaf.shape)} in the network")
      return np.zeros(leaf.shape, leaf.dtype)
    return value.astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(fill, template)
  problems += [f"{p}: not a parameter of the network" for p in sorted(set(arrays) - used)]
  if problems:
    raise errors.InvalidInputError(f"{file}: does not fit the network of {BUNDLE}:\n  "
                                   + "\n  ".join(problems[:10]))
  return params, bundle


def restore_params(folder: str):
  """checkpoint.restore_params' answer for a shipped model: (params, meta, where)."""
  import jax
  params, bundle = load_params(folder)
  params = jax.tree.map(jax.numpy.asarray, params)
  meta = {"task": bundle["task"], "config": bundle["config"], "shipped": bundle.get("name"),
          "members": len(member_records(bundle))}
  return params, meta, os.path.join(folder, bundle["weights"]["file"])


def restore_members(folder: str, start: int = 0) -> list:
  """The params of a shipped model's members from `start` on (one network: just its own), each
  hash-checked (start=1: the rest, when restore_params gave the first)."""
  import jax
  n = len(member_records(read_bundle(folder)))
  return [jax.tree.map(jax.numpy.asarray, load_params(folder, k)[0]) for k in range(start, n)]


def describe(folder: str, bundle: dict) -> str:
  """'msjax-lesjak (…/msjax/shipped/msjax-lesjak, trained on 2 labelled exams of 2 patients …)'."""
  t = bundle.get("training", {})
  on = (f"trained on {len(t.get('exams', []))} labelled exam(s) of "
        f"{len(t.get('patients', []))} patient(s)" if bundle.get("task") == "segmentation"
        else f"pretrained on {len(t.get('exams', []))} scan(s)")
  pre = t.get("pretraining_scans")
  if pre:
    on += f", pretraining on {pre} scan(s)"
  return f"{bundle.get('name', os.path.basename(folder))} ({folder}, {on})"
