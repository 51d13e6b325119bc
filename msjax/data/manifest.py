"""The cohort manifest (`cohort.json`): the exams, their files and labels, read and written.

    {"version": 1,
     "exams": [{"exam_id": "patient07", "patient_id": "patient07", "ms": true, "split": "train",
                "images": {"T1W": "patient07/T1W.nii.gz", "FLAIR": "patient07/FLAIR.nii.gz"},
                "raters": ["patient07/rater1.nii.gz"], "consensus": "patient07/consensus_gt.nii.gz",
                "brain_mask": null}]}

Paths are relative to the manifest's folder.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os

from msjax import files
from msjax.errors import InvalidInputError

# Fixed channel order of the network input (SPEC): T1W, T1Wc (= T1WKS), T2W, FLAIR, PDW.
MODALITIES = ("T1W", "T1WKS", "T2W", "FLAIR", "PDW")
MANIFEST_NAME = "cohort.json"
SPLITS = ("train", "test")

# What msjax's preprocessing writes: preprocessing.json beside the cohort.json it makes, and
# preprocess.json in each exam's folder, both with the format below. Format 2: every volume is
# written in its header's voxel order. Format 1 (before 2026-11-30) wrote the Nyúl-standardised
# images mirrored left-right against their header, brain mask, lesion masks and to_mni.tfm, so a
# cohort or a model made from it must be made again, not used.
PREPROCESSING_NAME = "preprocessing.json"
EXAM_RECORD_NAME = "preprocess.json"
PREPROCESSING_FORMAT = 2


def preprocessing_format_problem(record: dict, where: str) -> str | None:
  """Why a preprocessing record (preprocess.json / preprocessing.json) cannot be used, or None."""
  made = int(record.get("format", 1))
  if made >= PREPROCESSING_FORMAT:
    return None
  return (f"{where}: made by msjax preprocessing format {made}, whose images are mirrored "
          "left-right against their header and masks (fixed in format "
          f"{PREPROCESSING_FORMAT}); preprocess the raw exams again (configs/preprocess.py)")


_LATIN = {"Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "ß": "ss", "Ł": "L", "ł": "l", "Đ": "D",
          "đ": "d", "Þ": "Th", "þ": "th", "Œ": "OE", "œ": "oe", "ı": "i"}


def bids_label(text: str) -> str:
  """A BIDS label (ASCII letters and digits only: the BIDS validator refuses others) from any
  name: accents dropped (Patiënt -> Patient, Ærø -> AEro); letters of another script, which
  cannot be spelt in ASCII, leave `x` and 8 hex digits of the name's hash after what is left
  (患者01 -> 01x..., 対照01 -> 01x...: two patients stay apart); `exam` if the name holds no
  letter or digit at all. An ASCII name keeps its letters and digits as they are."""
  import unicodedata
  text = unicodedata.normalize("NFC", text)  # one name, however the file system stored it
  spelt = unicodedata.normalize("NFKD", "".join(_LATIN.get(ch, ch) for ch in text))
  kept = "".join(ch for ch in spelt if ch.isascii() and ch.isalnum())
  dropped = any(ch.isalnum() and not ch.isascii() and not unicodedata.combining(ch)
                for ch in spelt)
  if not dropped:
    return kept or "exam"
  import hashlib
  return kept + "x" + hashlib.sha1(text.encode()).hexdigest()[:8]


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
  # BIDS entities of the exam ({"sub": "01", "ses": "02"}) when it came from a BIDS dataset
  bids: dict | None = None

  @property
  def bids_prefix(self) -> str:
    """How the exam's outputs are named: sub-<id>[_ses-<id>]; an exam that did not come from
    BIDS is sub-<exam_id> (letters and digits only, as BIDS labels are)."""
    if self.bids:
      return f"sub-{self.bids['sub']}" + (f"_ses-{self.bids['ses']}" if self.bids.get("ses")
                                          else "")
    return "sub-" + bids_label(self.exam_id)

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
  unused: tuple[tuple[str, str], ...] = ()  # (file, why) found beside the exams but not used

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
              native={k: path(v) for k, v in d["native"].items()} if d.get("native") else None,
              bids=dict(d["bids"]) if d.get("bids") else None)


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
                  **({"native": {k: rel(v) for k, v in e.native.items()}} if e.native else {}),
                  **({"bids": e.bids} if e.bids else {})})
  out = {"version": 1, "modalities": list(MODALITIES), "exams": exams}
  if cohort.unused:
    out["unused"] = [[rel(p), why] for p, why in cohort.unused]
  return out


def save_cohort(cohort: Cohort, path: str | None = None) -> str:
  path = path or os.path.join(cohort.root, MANIFEST_NAME)
  return files.write_json(cohort_to_json(cohort, os.path.dirname(os.path.abspath(path))), path)


def read_manifest(manifest: str) -> Cohort:
  """The cohort a manifest file lists (paths relative to its folder), validated."""
  if not os.path.exists(manifest):
    raise InvalidInputError(f"{manifest}: cohort manifest does not exist")
  try:
    with open(manifest) as f:
      d = json.load(f, object_pairs_hook=_no_duplicate_keys(manifest))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InvalidInputError(f"{manifest}: not a cohort manifest (not valid JSON: {e})") from e
  root = os.path.dirname(manifest)
  exams = tuple(_exam_from_json(e, root, manifest) for e in d.get("exams", []))
  ids = collections.Counter(e.exam_id for e in exams)
  dup = [k for k, n in ids.items() if n > 1]
  if dup:
    raise InvalidInputError(f"{manifest}: exam ids listed more than once: {dup}")
  if not exams:
    raise InvalidInputError(f"{manifest}: the manifest lists no exam")
  for exam in exams:
    _check_preprocessing_format(exam)
  return Cohort(root=root, exams=exams)


def check_output_names(exams) -> None:
  """Exams whose outputs would land on the same files (ids that differ only in punctuation, such
  as pat-01 and pat_01, both sub-pat01) are refused with both names, before anything is written:
  one would silently overwrite the other."""
  by_prefix: dict[str, list[Exam]] = collections.defaultdict(list)
  for exam in exams:
    by_prefix[exam.bids_prefix].append(exam)
  clashes = {p: es for p, es in by_prefix.items() if len(es) > 1}
  if clashes:
    lines = [f"{p}: " + " and ".join(
        f"{e.exam_id} ({os.path.dirname(next(iter(e.images.values())))})" for e in es)
        for p, es in sorted(clashes.items())]
    raise InvalidInputError("exams would write the same output files (their names differ only "
                            "in characters BIDS labels cannot hold); rename one of each:\n  "
                            + "\n  ".join(lines))


def _record_path(exam: Exam) -> str | None:
  """The preprocessing record beside an exam msjax's preprocessing made (it knows its way back
  to native space), or None."""
  if exam.native is None or not exam.images:
    return None
  record = os.path.join(os.path.dirname(next(iter(exam.images.values()))), EXAM_RECORD_NAME)
  return record if os.path.exists(record) else None


def preprocessing_record(exam: Exam) -> dict | None:
  """How msjax's preprocessing made an exam (the record beside its images: the brain extraction
  it took, its N4 fit, its times), or None for an exam msjax did not make."""
  record = _record_path(exam)
  if record is None:
    return None
  with open(record) as f:
    return json.load(f)


def _check_preprocessing_format(exam: Exam) -> None:
  """An exam made by msjax's preprocessing must be of the current format: older ones are
  mirrored."""
  record = _record_path(exam)
  if record is None:
    return
  with open(record) as f:
    problem = preprocessing_format_problem(json.load(f), f"{record} (exam {exam.exam_id})")
  if problem:
    raise InvalidInputError(problem)
