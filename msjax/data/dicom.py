"""DICOM in: a folder of DICOM files (one exam, or a tree of patients and studies) -> the exam layout
msjax reads (`<patient>/study<k>_<SEQUENCE>.nii.gz` + the dcm2niix sidecar `.json`).

Series are grouped with pydicom (headers only) and each is identified as FLAIR, T1W, T1WKS (post
contrast), T2W or PDW from its DICOM fields: the series description and protocol name first (what
the technologist typed, the most direct evidence), then the acquisition itself (inversion time,
echo time, repetition time, contrast agent). A series that cannot be identified (localisers,
diffusion, derived maps, ...) is listed with its description and skipped, and so is one whose
slices are not one regular volume (a missing file's gap, mixed orientations: `geometry_problem`);
`plan` shows the mapping before anything is converted. Each kept series is converted by dcm2niix
(Chris Rorden's converter, the `dcm2niix` wheel on PyPI), which handles mosaics, enhanced multi-frame objects, gantry tilt and
orientation; msjax never reorders DICOM pixels itself. Visits of a patient (studies) are numbered
study1, study2, ... by study date and time. `dicom_sources.json` in the output records, per exam and
sequence, the series UID and its files: the DICOM SEG written back refers to the FLAIR series.
Needs the `preprocess` (or `dicom`) extra: pydicom, dcm2niix, highdicom.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile

from msjax import files
from msjax.errors import InvalidInputError

SOURCES = "dicom_sources.json"
_IMAGE_STORAGE = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"}  # MR, enhanced MR


def _is_dicom_file(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      f.seek(128)
      return f.read(4) == b"DICM"
  except OSError:
    return False


def is_dicom_tree(folder: str, probe: int = 50) -> bool:
  """Whether a folder holds DICOM files (Part-10, the 'DICM' preamble) and no NIfTI."""
  if not os.path.isdir(folder):
    return False
  seen = 0
  for dirpath, _, names in os.walk(folder, followlinks=True):
    for name in sorted(names):
      if name.lower().endswith((".nii", ".nii.gz")):
        return False
      if _is_dicom_file(os.path.join(dirpath, name)):
        return True
      seen += 1
      if seen >= probe:
        return False
  return False


@dataclasses.dataclass
class Series:
  uid: str
  patient: str
  study_uid: str
  study_when: str
  number: int
  description: str
  fields: dict
  files: list[str]
  modality: str | None = None
  why: str = ""
  # per file, in instance order: (ImagePositionPatient, ImageOrientationPatient) or None where a
  # file has no such tags (enhanced multi-frame objects carry them per frame; dcm2niix reads those)
  geometry: list = dataclasses.field(default_factory=list)


def _text(ds, key) -> str:
  value = ds.get(key, "")
  if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
    return "\\".join(str(v) for v in value)
  return str(value or "")


def _number(ds, key) -> float | None:
  try:
    value = ds.get(key, None)
    return float(value) if value not in (None, "") else None
  except (TypeError, ValueError):
    return None


def scan_series(folder: str) -> list[Series]:
  """Every MR image series under folder (headers only), files in instance order."""
  import pydicom
  found: dict[str, Series] = {}
  order: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
  for dirpath, _, names in os.walk(folder, followlinks=True):
    for name in sorted(names):
      path = os.path.join(dirpath, name)
      if not _is_dicom_file(path):
        continue
      try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
      except Exception:  # noqa: BLE001 - a damaged file is skipped, the series may still be whole
        continue
      if str(ds.get("SOPClassUID", "")) not in _IMAGE_STORAGE:
        continue
      uid = str(ds.get("SeriesInstanceUID", ""))
      if uid not in found:
        found[uid] = Series(
            uid=uid, patient=patient_key(ds),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            study_when=_text(ds, "StudyDate") + _text(ds, "StudyTime"),
            number=int(_number(ds, "SeriesNumber") or 0),
            description=_text(ds, "SeriesDescription") or _text(ds, "ProtocolName"),
            fields={"SeriesDescription": _text(ds, "SeriesDescription"),
                    "ProtocolName": _text(ds, "ProtocolName"),
                    "SequenceName": _text(ds, "SequenceName"),
                    "ScanningSequence": _text(ds, "ScanningSequence"),
                    "SequenceVariant": _text(ds, "SequenceVariant"),
                    "ImageType": _text(ds, "ImageType"),
                    "InversionTime": _number(ds, "InversionTime"),
                    "EchoTime": _number(ds, "EchoTime"),
                    "RepetitionTime": _number(ds, "RepetitionTime"),
                    "ContrastBolusAgent": _text(ds, "ContrastBolusAgent")},
            files=[])
      order[uid].append((int(_number(ds, "InstanceNumber") or 0), path, _geometry(ds)))
  for uid, items in order.items():
    items.sort(key=lambda item: (item[0], item[1]))
    found[uid].files = [p for _, p, _ in items]
    found[uid].geometry = [g for _, _, g in items]
  return sorted(found.values(), key=lambda s: (s.patient, s.study_when, s.number))


def _geometry(ds):
  try:
    position = [float(v) for v in ds.ImagePositionPatient]
    orientation = [float(v) for v in ds.ImageOrientationPatient]
  except (AttributeError, TypeError, ValueError):
    return None
  return (position, orientation) if len(position) == 3 and len(orientation) == 6 else None


# slices of one volume: orientations equal to 1e-3 (direction cosines), spacings equal to 2 % or
# 0.1 mm, whichever is larger (scanners round positions; dcm2niix itself warns past ~1 %)
ORIENTATION_TOL = 1e-3
SPACING_REL_TOL, SPACING_ABS_TOL_MM = 0.02, 0.1


def geometry_problem(series: Series) -> str | None:
  """Why a single-frame series' slices are not one regular volume (mixed orientations, a gap
  from a missing file, unequal spacing, repeated positions in unequal numbers), or None. Series
  whose files carry no per-file geometry (enhanced multi-frame) are left to dcm2niix."""
  import numpy as np
  geometry = [g for g in series.geometry if g is not None]
  if len(geometry) < 3 or len(geometry) != len(series.files):
    return None
  orientations = np.array([o for _, o in geometry])
  odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOL)
  if len(odd):
    return (f"slices of more than one orientation ({len(odd)} of {len(geometry)} files differ "
            f"from the first, e.g. {os.path.basename(series.files[odd[0]])}): a localiser or a "
            f"reformat merged into the series")
  normal = np.cross(orientations[0][:3], orientations[0][3:])
  depth = np.array([p for p, _ in geometry]) @ normal
  levels, counts = np.unique(np.round(depth, 2), return_counts=True)
  if len(levels) < 2:
    return None
  if counts.min() != counts.max():  # echoes or phases repeat every position the same number
    at = levels[np.argmin(counts)]
    return (f"slice positions repeated unequally ({counts.min()}-{counts.max()} files per "
            f"position, e.g. at {at:.2f} mm): duplicated or missing files")
  steps = np.diff(levels)
  typical = float(np.median(steps))
  tol = max(SPACING_REL_TOL * typical, SPACING_ABS_TOL_MM)
  bad = np.flatnonzero(np.abs(steps - typical) > tol)
  if len(bad):
    k = bad[0]
    what = ("a gap" if steps[k] > typical else "unequal spacing")
    return (f"{what}: {steps[k]:.2f} mm between slices at {levels[k]:.2f} and {levels[k + 1]:.2f} mm "
            f"along the slice normal where the others are {typical:.2f} mm apart "
            f"({len(bad)} such step(s); a file missing from the series?)")
  return None


def patient_key(ds) -> str:
  """Who a series belongs to: its PatientID; without one, its patient attributes (name, birth
  date, sex) when it has any; without those, its own study, so that series whose patient
  cannot be told apart are never taken for visits of one patient."""
  import hashlib
  pid = _text(ds, "PatientID")
  if pid:
    return pid
  who = [_text(ds, k) for k in ("PatientName", "PatientBirthDate", "PatientSex")]
  if any(who):
    return "noid-" + hashlib.sha256("|".join(who).encode()).hexdigest()[:8]
  study = str(ds.get("StudyInstanceUID", "")) or str(ds.get("SeriesInstanceUID", ""))
  return "unknown-" + hashlib.sha256(study.encode()).hexdigest()[:8]


_WORDS = {  # series-description words (lower case, split on non-letters), most specific first
    "FLAIR": {"flair", "darkfluid", "tirm", "dark_fluid", "spairflair"},
    "PDW": {"pd", "pdw", "proton"},
    "T2W": {"t2", "t2w", "tse2", "t2tse", "t2frfse"},
    "T1W": {"t1", "t1w", "mprage", "spgr", "fspgr", "tfe", "bravo", "flash", "t1tse", "mp2rage"},
}
_CONTRAST_WORDS = {"gd", "gad", "gado", "post", "contrast", "ce", "c", "km", "kontrast", "gadolinium"}
_NOT_ANATOMY = {"localizer", "localiser", "scout", "survey", "dwi", "diffusion", "adc", "trace",
                "fa", "swi", "perfusion", "dsc", "bold", "calibration", "asl", "mip", "phase"}


def identify(fields: dict) -> tuple[str | None, str]:
  """(sequence or None, the reason) from a series' DICOM fields."""
  text = " ".join(str(fields.get(k, "")) for k in ("SeriesDescription", "ProtocolName"))
  words = set(re.split(r"[^a-z0-9]+", text.lower())) - {""}
  joined = re.sub(r"[^a-z0-9+]+", "", text.lower())
  if words & _NOT_ANATOMY or "DERIVED" in str(fields.get("ImageType", "")).upper():
    return None, f"not an anatomical image ('{text.strip()}')"
  contrast = bool(str(fields.get("ContrastBolusAgent", "")).strip()) or bool(
      words & _CONTRAST_WORDS) or "+c" in joined or "+gd" in joined
  for modality, names in _WORDS.items():
    if words & names or any(n in joined for n in names if len(n) >= 4):
      if modality == "T1W" and contrast:
        return "T1WKS", f"description '{text.strip()}' with contrast agent"
      return modality, f"description '{text.strip()}'"
  ti, te, tr = (fields.get(k) for k in ("InversionTime", "EchoTime", "RepetitionTime"))
  if ti and ti >= 1500 and te and te >= 60:
    return "FLAIR", f"inversion recovery TI {ti:g} ms, TE {te:g} ms"
  if tr and te:
    if tr <= 1000 and te <= 30 or (ti and 600 <= ti < 1500 and te <= 10):
      kind = "T1WKS" if contrast else "T1W"
      return kind, f"TR {tr:g} ms, TE {te:g} ms" + (f", TI {ti:g} ms" if ti else "")
    if tr >= 2000 and te >= 70 and not ti:
      return "T2W", f"TR {tr:g} ms, TE {te:g} ms"
    if tr >= 2000 and te <= 30 and not ti:
      return "PDW", f"TR {tr:g} ms, TE {te:g} ms"
  return None, f"cannot tell the sequence from '{text.strip()}' (TR {tr}, TE {te}, TI {ti})"


def plan(folder: str) -> tuple[list[dict], list[Series]]:
  """The exams a DICOM tree holds: [{patient, visit, study_uid, sequences: {modality: Series}}],
  visits numbered study1.. by date per patient; and the series skipped (with `why`). Of several
  series of one sequence in a study, the last acquired (highest series number) is used."""
  exams: dict[tuple[str, str], dict] = {}
  skipped = []
  for s in scan_series(folder):
    s.modality, s.why = identify(s.fields)
    if s.modality is None:
      skipped.append(s)
      continue
    problem = geometry_problem(s)
    if problem:  # never converted with a wrong geometry: the series is left out, by name
      s.why = f"{s.modality}, but not one regular volume: {problem}"
      s.modality = None
      skipped.append(s)
      continue
    exam = exams.setdefault((s.patient, s.study_uid), {"patient": s.patient,
                                                       "study_uid": s.study_uid,
                                                       "when": s.study_when, "sequences": {}})
    earlier = exam["sequences"].get(s.modality)
    if earlier is not None:
      older = earlier if earlier.number < s.number else s
      older.why = f"another {s.modality} series of the study is used"
      skipped.append(older)
      if older is s:
        continue
    exam["sequences"][s.modality] = s
  ordered = sorted(exams.values(), key=lambda e: (e["patient"], e["when"], e["study_uid"]))
  visits: dict[str, int] = collections.Counter()
  for exam in ordered:
    visits[exam["patient"]] += 1
    exam["visit"] = f"study{visits[exam['patient']]}"
  return ordered, skipped


def _patient_folder(patient: str) -> str:
  return "".join(ch for ch in patient if ch.isalnum() or ch in "-_") or "patient"


def convert(folder: str, out_root: str, log=print) -> str:
  """Converts every identified series of `folder` into out_root (exam layout + SOURCES); returns
  out_root. Series are converted one by one by dcm2niix from a folder of links to their files."""
  folder = os.path.abspath(folder)
  exams, skipped = plan(folder)
  if not exams:
    raise InvalidInputError(f"{folder}: no MR series msjax can identify as FLAIR, T1W, T1WKS, T2W "
                            f"or PDW ({len(skipped)} series skipped: "
                            + "; ".join(f"{s.description!r}: {s.why}" for s in skipped[:5]) + ")")
  exe = find_dcm2niix()
  if exe is None:
    raise InvalidInputError("DICOM input needs dcm2niix: pip install 'msjax[preprocess]' (or [dicom])")
  for s in skipped:
    log(f"[dicom] skipped series {s.number} '{s.description}' of {s.patient}: {s.why}")
  sources: dict = {}
  for exam in exams:
    patient_dir = os.path.join(out_root, _patient_folder(exam["patient"]))
    exam_id = f"{os.path.basename(patient_dir)}_{exam['visit']}"
    for modality, s in sorted(exam["sequences"].items()):
      stem = f"{exam['visit']}_{modality}"
      _dcm2niix(exe, s, patient_dir, stem)
      log(f"[dicom] {exam_id} {modality} <- series {s.number} '{s.description}' ({s.why})")
      sources.setdefault(exam_id, {})[modality] = {
          "series_uid": s.uid, "series_number": s.number, "description": s.description,
          "study_uid": exam["study_uid"], "files": s.files, "identified_by": s.why}
  files.write_json({"source": folder, "exams": sources,
                    "skipped": [{"patient": s.patient, "series_number": s.number,
                                 "description": s.description, "why": s.why} for s in skipped]},
                   os.path.join(out_root, SOURCES))
  return out_root


def find_dcm2niix() -> str | None:
  """dcm2niix beside the running interpreter first (the `preprocess` extra installs it into the
  environment's bin/, which is not on PATH when that environment is not activated), then on
  PATH."""
  import sys
  here = os.path.join(os.path.dirname(sys.executable), "dcm2niix")
  if os.path.isfile(here) and os.access(here, os.X_OK):
    return here
  return shutil.which("dcm2niix")


def _dcm2niix(exe: str, series: Series, out_dir: str, stem: str) -> None:
  with tempfile.TemporaryDirectory(prefix="msjax-dcm-") as tmp:
    src, dst = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    os.makedirs(src)
    os.makedirs(dst)
    for k, path in enumerate(series.files):
      os.symlink(os.path.abspath(path), os.path.join(src, f"{k:05d}.dcm"))
    proc = subprocess.run([exe, "-z", "y", "-b", "y", "-ba", "n", "-f", "series", "-o", dst, src],
                          capture_output=True, text=True)
    made = sorted(n for n in os.listdir(dst) if n.endswith(".nii.gz"))
    if proc.returncode != 0 or not made:
      raise InvalidInputError(f"{os.path.dirname(series.files[0])}: dcm2niix could not convert "
                              f"series {series.number} '{series.description}': "
                              f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    # one volume per series; dcm2niix adds suffixes for extra echoes or a tilt-corrected copy
    main = "series.nii.gz" if "series.nii.gz" in made else made[0]
    os.makedirs(out_dir, exist_ok=True)
    for ext in (".nii.gz", ".json"):
      src_file = os.path.join(dst, main[:-len(".nii.gz")] + ext)
      if os.path.exists(src_file):
        with files.atomic(os.path.join(out_dir, stem + ext)) as tmp_out:
          shutil.copyfile(src_file, tmp_out)


def sources_of(exam_image: str) -> dict | None:
  """The DICOM series an exam converted by `convert` came from ({modality: {...}}), found from one
  of its images; None for exams that did not come from DICOM."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(exam_image)))
  path = os.path.join(root, SOURCES)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    table = json.load(f)["exams"]
  folder = os.path.basename(os.path.dirname(exam_image))
  visit = os.path.basename(exam_image).split("_")[0]
  return table.get(f"{folder}_{visit}")
