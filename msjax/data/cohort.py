"""The cohort: a folder with a manifest (JSON) listing exams, their files and their labels.

Manifest (`cohort.json`, paths relative to the manifest's folder):

    {"version": 1,
     "exams": [{"exam_id": "patient07", "patient_id": "patient07", "ms": true, "split": "train",
                "images": {"T1W": "patient07/T1W.nii.gz", "FLAIR": "patient07/FLAIR.nii.gz"},
                "raters": ["patient07/rater1.nii.gz"], "consensus": "patient07/consensus_gt.nii.gz",
                "brain_mask": null}]}

`build_manifest` writes one from a folder by file-name patterns; `inspect_cohort` validates every
exam and tabulates what it found.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import threading

import numpy as np

from msjax import files
from msjax.data import nifti
from msjax.data.nifti import InvalidInputError

# Fixed channel order of the network input (SPEC): T1W, T1Wc (= T1WKS), T2W, FLAIR, PDW.
MODALITIES = ("T1W", "T1WKS", "T2W", "FLAIR", "PDW")
MANIFEST_NAME = "cohort.json"
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Exam:
  exam_id: str
  patient_id: str
  ms: bool
  images: dict[str, str]           # modality -> absolute path
  raters: tuple[str, ...] = ()     # raters' lesion masks
  consensus: str | None = None     # consensus lesion mask (evaluation reference)
  brain_mask: str | None = None
  split: str = "train"
  # set by the preprocessing: {"reference": raw FLAIR, "transform": ITK transform MNI -> native}
  native: dict | None = None

  @property
  def labelled(self) -> bool:
    return bool(self.raters) or self.consensus is not None

  @property
  def reference(self) -> str | None:
    """The mask that evaluation compares against: the consensus, else the only rater."""
    if self.consensus is not None:
      return self.consensus
    return self.raters[0] if len(self.raters) == 1 else None

  @property
  def training_masks(self) -> tuple[str, ...]:
    """Masks a segmentation batch draws its target from (one rater per batch, SPEC)."""
    return self.raters if self.raters else ((self.consensus,) if self.consensus else ())

  def all_paths(self) -> list[tuple[str, str, str]]:
    """(role, kind, path) for every file of the exam."""
    out = [(m, "image", p) for m, p in self.images.items()]
    out += [(f"rater{i + 1}", "mask", p) for i, p in enumerate(self.raters)]
    if self.consensus:
      out.append(("consensus", "mask", self.consensus))
    if self.brain_mask:
      out.append(("brain_mask", "mask", self.brain_mask))
    return out


@dataclasses.dataclass(frozen=True)
class Cohort:
  root: str
  exams: tuple[Exam, ...]

  def select(self, *, split=None, labelled=None, ms=None, patients=None) -> list[Exam]:
    out = []
    for e in self.exams:
      if split is not None and e.split != split:
        continue
      if labelled is not None and e.labelled != labelled:
        continue
      if ms is not None and e.ms != ms:
        continue
      if patients is not None and e.patient_id not in patients:
        continue
      out.append(e)
    return out

  def by_id(self, exam_id: str) -> Exam:
    for e in self.exams:
      if e.exam_id == exam_id:
        return e
    raise KeyError(f"exam {exam_id!r} is not in the cohort at {self.root}")


# ---- manifest I/O --------------------------------------------------------------------------------

def _no_duplicate_keys(where):
  def hook(pairs):
    seen = {}
    for k, v in pairs:
      if k in seen:
        raise InvalidInputError(f"{where}: key {k!r} appears twice in one object "
                                "(duplicate modality or field)")
      seen[k] = v
    return seen
  return hook


def _exam_from_json(d: dict, root: str, where: str) -> Exam:
  def path(p):
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p))
  try:
    exam_id = str(d["exam_id"])
  except KeyError:
    raise InvalidInputError(f"{where}: an exam has no 'exam_id'") from None
  images = d.get("images") or {}
  unknown = [k for k in images if k not in MODALITIES]
  if unknown:
    raise InvalidInputError(f"{where}: exam {exam_id}: unknown modality key(s) {unknown}; "
                            f"expected keys among {list(MODALITIES)}")
  if not images:
    raise InvalidInputError(f"{where}: exam {exam_id} lists no image")
  split = d.get("split", "train")
  if split not in SPLITS:
    raise InvalidInputError(f"{where}: exam {exam_id}: split {split!r} is not one of {SPLITS}")
  return Exam(exam_id=exam_id, patient_id=str(d.get("patient_id", exam_id)),
              ms=bool(d.get("ms", True)), split=split,
              images={m: path(images[m]) for m in MODALITIES if m in images},
              raters=tuple(path(p) for p in d.get("raters", [])),
              consensus=path(d["consensus"]) if d.get("consensus") else None,
              brain_mask=path(d["brain_mask"]) if d.get("brain_mask") else None,
              native={k: path(v) for k, v in d["native"].items()} if d.get("native") else None)


def load_cohort(path: str) -> Cohort:
  """Loads a cohort from its manifest file or folder (a folder without a manifest is scanned)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    manifest = os.path.join(path, MANIFEST_NAME)
    if not os.path.exists(manifest):
      return build_cohort(path)
  else:
    manifest = path
  if not os.path.exists(manifest):
    raise InvalidInputError(f"{manifest}: cohort manifest does not exist")
  try:
    with open(manifest) as f:
      d = json.load(f, object_pairs_hook=_no_duplicate_keys(manifest))
  except json.JSONDecodeError as e:
    raise InvalidInputError(f"{manifest}: not valid JSON ({e})") from e
  root = os.path.dirname(manifest)
  exams = tuple(_exam_from_json(e, root, manifest) for e in d.get("exams", []))
  ids = collections.Counter(e.exam_id for e in exams)
  dup = [k for k, n in ids.items() if n > 1]
  if dup:
    raise InvalidInputError(f"{manifest}: exam ids listed more than once: {dup}")
  if not exams:
    raise InvalidInputError(f"{manifest}: the manifest lists no exam")
  return Cohort(root=root, exams=exams)


def cohort_to_json(cohort: Cohort, base: str | None = None) -> dict:
  """Paths are written relative to `base` (the manifest's folder; default the cohort root)."""
  base = base or cohort.root

  def rel(p):
    return os.path.relpath(p, base) if p else None
  exams = []
  for e in cohort.exams:
    exams.append({"exam_id": e.exam_id, "patient_id": e.patient_id, "ms": e.ms, "split": e.split,
                  "images": {m: rel(p) for m, p in e.images.items()},
                  "raters": [rel(p) for p in e.raters], "consensus": rel(e.consensus),
                  "brain_mask": rel(e.brain_mask),
                  **({"native": {k: rel(v) for k, v in e.native.items()}} if e.native else {})})
  return {"version": 1, "modalities": list(MODALITIES), "exams": exams}


def save_cohort(cohort: Cohort, path: str | None = None) -> str:
  path = path or os.path.join(cohort.root, MANIFEST_NAME)
  return files.write_json(cohort_to_json(cohort, os.path.dirname(os.path.abspath(path))), path)


# ---- building a manifest from file names -------------------------------------------------------

_MODALITY_TOKENS = {
    "T1WKS": {"t1wks", "t1wc", "t1c", "t1ce", "t1gd", "t1post", "t1contrast"},
    "T1W": {"t1w", "t1", "mprage"},
    "T2W": {"t2w", "t2"},
    "FLAIR": {"flair", "t2flair"},
    "PDW": {"pdw", "pd"},
}
_RATER = re.compile(r"^(rater|mask|seg|manual|les|lesion)[-_]?(\d+)$")


def _classify(stem: str):
  """Returns (role, prefix) for a file-name stem, or (None, None) when nothing matches. The prefix
  is the original text before the matched word (`study1` in `study1_T1W`)."""
  parts = re.split(r"([_\-. ]+)", stem)
  tokens = [t.lower() for t in parts[0::2]]

  def prefix(i):
    return "".join(parts[:2 * i]).rstrip("_-. ")

  low = stem.lower()
  if "brain" in low and ("mask" in low or "seg" in low):
    return "brain_mask", prefix(next(i for i, t in enumerate(tokens) if "brain" in t))
  for i, t in enumerate(tokens):
    if t.startswith("consensus"):
      return "consensus", prefix(i)
    m = _RATER.match(t)
    if m:
      return f"rater{int(m.group(2))}", prefix(i)
    if i + 1 < len(tokens) and t in ("rater", "mask", "seg") and tokens[i + 1].isdigit():
      return f"rater{int(tokens[i + 1])}", prefix(i)
  for i, t in enumerate(tokens):
    for modality, names in _MODALITY_TOKENS.items():
      if t in names:
        return modality, prefix(i)
  return None, None


def build_cohort(folder: str, *, ms_default: bool = True) -> Cohort:
  """Scans `folder` for NIfTI files and groups them into exams by sub-folder and file-name prefix.

  `patient07/FLAIR.nii.gz` -> exam patient07; `patient01/study2_T1W.nii.gz` -> exam
  patient01_study2 of patient patient01; `sub-3_flair.nii.gz` at the top -> exam sub-3.
  Recognised names: T1W/T1, T1WKS/T1Wc/T1CE/T1GD, T2W/T2, FLAIR, PDW/PD; `consensus*` and
  `rater<k>`/`mask<k>` lesion masks; `*brain*mask*`. Exams with a lesion mask are MS; the others
  take `ms_default`.
  """
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise InvalidInputError(f"{folder}: not a folder")
  groups: dict[tuple[str, str], dict[str, list[str]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for name in sorted(filenames):
      if not (name.endswith(".nii") or name.endswith(".nii.gz")) or name.startswith("."):
        continue
      stem = re.sub(r"\.nii(\.gz)?$", "", name)
      role, prefix = _classify(stem)
      if role is None:
        continue
      rel_dir = os.path.relpath(dirpath, folder)
      groups[(rel_dir, prefix)][role].append(os.path.join(dirpath, name))
  exams = []
  for (rel_dir, prefix), roles in sorted(groups.items()):
    parts = [] if rel_dir == "." else rel_dir.split(os.sep)
    # files at the top without a prefix: the folder holds one exam, named after the folder
    top = os.path.basename(folder.rstrip(os.sep))
    patient = parts[0] if parts else (prefix.split("_")[0] if prefix else top)
    exam_id = "_".join(parts + ([prefix] if prefix else [])) or patient
    for role, paths in roles.items():
      if len(paths) > 1:
        raise InvalidInputError(f"{folder}: exam {exam_id} has several files for {role}: {paths}")
    images = {m: roles[m][0] for m in MODALITIES if m in roles}
    if not images:
      continue
    raters = tuple(roles[k][0] for k in sorted((r for r in roles if r.startswith("rater")),
                                               key=lambda r: int(r[5:])))
    consensus = roles["consensus"][0] if "consensus" in roles else None
    exams.append(Exam(exam_id=exam_id, patient_id=patient,
                      ms=bool(raters or consensus) or ms_default, images=images, raters=raters,
                      consensus=consensus,
                      brain_mask=roles["brain_mask"][0] if "brain_mask" in roles else None))
  if not exams:
    raise InvalidInputError(f"{folder}: no NIfTI exam found (expected files named like "
                            "FLAIR.nii.gz, T1W.nii.gz, consensus_gt.nii.gz)")
  return Cohort(root=folder, exams=tuple(exams))


# ---- loading an exam into model input ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExamArrays:
  """One exam ready for sampling: canonical RAS arrays on the model grid."""
  exam: Exam
  images: np.ndarray          # (X, Y, Z, 5) float32, z-scored in the brain, 0 outside / missing
  present: np.ndarray         # (5,) bool: which modalities the exam has
  brain: np.ndarray           # (X, Y, Z) uint8
  masks: tuple[np.ndarray, ...]  # training targets (raters, else consensus), uint8
  reference: np.ndarray | None   # evaluation reference, uint8
  grid: nifti.Grid            # model grid (canonical orientation)
  native_grid: nifti.Grid     # the exam's own grid, for writing predictions back

  @property
  def shape(self):
    return self.images.shape[:3]


def read_exam_files(exam: Exam) -> tuple[dict[str, nifti.Volume], list[str]]:
  """Reads every file of an exam; returns the volumes and a list of problems (never raises)."""
  volumes, problems = {}, []
  for role, kind, path in exam.all_paths():
    try:
      volumes[role] = nifti.read_nifti(path, kind=kind)
    except InvalidInputError as e:
      problems.append(str(e))
  ref_role = next((m for m in ("FLAIR",) + MODALITIES if m in volumes), None)
  if ref_role is not None:
    ref = volumes[ref_role]
    for role, v in volumes.items():
      if role != ref_role and not v.grid.same_as(ref.grid):
        problems.append(
            f"{v.path}: {role} is not on the grid of {ref_role} ({ref.path}): shape "
            f"{v.grid.shape} vs {ref.grid.shape}, affines differ by "
            f"{np.abs(v.grid.affine - ref.grid.affine).max():.3g} mm; co-register and resample "
            "them first (configs/preprocess.py)")
  return volumes, problems


def _zscore_in_brain(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
  values = image[brain > 0]
  mean, std = float(values.mean()), float(values.std())
  out = (image - mean) / max(std, 1e-6)
  return np.where(brain > 0, out, 0.0).astype(np.float32)


def load_exam(exam: Exam, *, model_shape=None, patch_size: int = 32) -> ExamArrays:
  """Reads, validates, reorients, resamples onto the model grid and normalises one exam.

  Raises InvalidInputError listing every problem found in the exam's files.
  """
  volumes, problems = read_exam_files(exam)
  if problems:
    raise InvalidInputError(f"exam {exam.exam_id}:\n  " + "\n  ".join(problems))
  native = volumes[next(m for m in ("FLAIR",) + MODALITIES if m in volumes)].grid
  shape = tuple(model_shape) if model_shape else native.shape
  if min(shape) < patch_size:
    raise InvalidInputError(f"{volumes[next(iter(exam.images))].path}: volume {shape} is smaller "
                            f"than one {patch_size}³ patch")
  grid = nifti.resampled_grid(native, shape) if shape != native.shape else native
  if "brain_mask" in volumes:
    brain = volumes["brain_mask"].data
  else:  # skull-stripped inputs have an exactly-zero background
    brain = np.zeros(native.shape, dtype=bool)
    for m in exam.images:
      brain |= volumes[m].data != 0
    brain = brain.astype(np.uint8)
  brain = nifti.resample_mask(brain, shape)
  if brain.sum() == 0:
    raise InvalidInputError(f"exam {exam.exam_id}: the brain mask is empty")
  images = np.zeros(shape + (len(MODALITIES),), np.float32)
  present = np.zeros(len(MODALITIES), bool)
  for c, m in enumerate(MODALITIES):
    if m in volumes:
      images[..., c] = _zscore_in_brain(nifti.resample_box(volumes[m].data, shape), brain)
      present[c] = True
  masks = tuple(nifti.resample_mask(volumes[r].data, shape) for r in
                [f"rater{i + 1}" for i in range(len(exam.raters))] or
                (["consensus"] if exam.consensus else []))
  reference = None
  if exam.consensus:
    reference = nifti.resample_mask(volumes["consensus"].data, shape)
  elif len(exam.raters) == 1:
    reference = masks[0]
  return ExamArrays(exam=exam, images=images, present=present, brain=brain, masks=masks,
                    reference=reference, grid=grid, native_grid=native)


class ExamCache:
  """A bounded LRU of loaded exams, shared by sampler threads: the cohort never sits in memory
  whole, and an exam is read from disk once while it stays in use."""

  def __init__(self, maxsize: int = 4, **load_kwargs):
    self.maxsize = max(1, int(maxsize))
    self.load_kwargs = load_kwargs
    self._items: collections.OrderedDict[str, object] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.loads = 0

  def get(self, exam: Exam, derive=None):
    with self._lock:
      if exam.exam_id in self._items:
        self._items.move_to_end(exam.exam_id)
        return self._items[exam.exam_id]
      arrays = load_exam(exam, **self.load_kwargs)
      item = derive(arrays) if derive else arrays
      self.loads += 1
      self._items[exam.exam_id] = item
      while len(self._items) > self.maxsize:
        self._items.popitem(last=False)
      return item


# ---- inspect -------------------------------------------------------------------------------------

def inspect_cohort(cohort: Cohort, *, patch_size: int = 32, model_shape=None) -> list[dict]:
  """Validates every exam and returns one row per exam (the `inspect` mode prints them)."""
  rows = []
  for exam in cohort.exams:
    volumes, problems = read_exam_files(exam)
    first = next((volumes[m] for m in ("FLAIR",) + MODALITIES if m in volumes), None)
    row = {"exam": exam.exam_id, "patient": exam.patient_id, "ms": exam.ms, "split": exam.split,
           "modalities": " ".join(m if m in exam.images else "-" for m in MODALITIES),
           "shape": "x".join(map(str, first.grid.source_shape)) if first else "?",
           "spacing_mm": "x".join(f"{s:.3g}" for s in first.grid.spacing) if first else "?",
           "orientation": "".join(first.grid.source_axcodes) if first else "?",
           "raters": len(exam.raters), "lesion_ml": None, "lesions_empty": False}
    ref_role = "consensus" if "consensus" in volumes else ("rater1" if "rater1" in volumes else None)
    if ref_role:
      vol = volumes[ref_role]
      row["lesion_ml"] = round(float(vol.data.sum()) * vol.grid.voxel_ml, 3)
      row["lesions_empty"] = bool(vol.data.sum() == 0)
    shape = tuple(model_shape) if model_shape else (first.grid.shape if first else None)
    if shape and min(shape) < patch_size:
      problems.append(f"{first.path}: volume {shape} is smaller than one {patch_size}³ patch")
    row["problems"] = problems
    rows.append(row)
  return rows


def format_inspect_table(rows: list[dict]) -> str:
  header = ["exam", "patient", "ms", "split", "modalities", "shape", "spacing_mm", "orientation",
            "raters", "lesion_ml", "problems"]
  table = [header]
  for r in rows:
    table.append([str(r["exam"]), str(r["patient"]), "yes" if r["ms"] else "no", r["split"],
                  r["modalities"], r["shape"], r["spacing_mm"], r["orientation"], str(r["raters"]),
                  "-" if r["lesion_ml"] is None else
                  (f"{r['lesion_ml']:.2f}" + (" (empty)" if r["lesions_empty"] else "")),
                  "ok" if not r["problems"] else f"{len(r['problems'])} problem(s)"])
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
  for r in rows:
    for p in r["problems"]:
      lines.append(f"  ! {r['exam']}: {p}")
  return "\n".join(lines)
