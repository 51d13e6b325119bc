"""A cohort from a folder without a manifest: a BIDS dataset (one exam per subject and session), or
any folder of NIfTI files grouped by sub-folder and file-name prefix with sequences and masks
recognised by name. Symbolic links are followed; files not used are listed, not dropped silently."""
from __future__ import annotations

import collections
import json
import os
import re

from msjax.data import nifti
from msjax.data.manifest import MODALITIES, Cohort, Exam, bids_label  # noqa: F401 (scan's API)
from msjax.errors import InvalidInputError

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


def _walk(folder: str):
  """os.walk following symbolic links (a cohort folder of links to patient folders), each real
  folder once: a link back up the tree cannot loop."""
  seen = set()
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen or (real != os.path.realpath(folder) and msjax_output(dirpath)):
      dirnames[:] = []  # msjax's own outputs (a workdir inside the input) are never inputs
      continue
    seen.add(real)
    dirnames.sort()
    yield dirpath, dirnames, sorted(filenames)


def msjax_output(folder: str) -> bool:
  """A folder msjax wrote: a derivatives dataset whose dataset_description.json says msjax
  generated it (segment, longitudinal and predict write one first)."""
  path = os.path.join(folder, "dataset_description.json")
  if not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      made = json.load(f).get("GeneratedBy") or []
  except (OSError, ValueError, AttributeError):
    return False
  return any(isinstance(g, dict) and g.get("Name") == "msjax" for g in made)


def _is_nifti(name: str) -> bool:
  """`.nii` or `.nii.gz` in any case (some exports write FLAIR.NII.GZ); not hidden files."""
  return bool(_NIFTI_EXT.search(name)) and not name.startswith(".")


_NIFTI_EXT = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)

ARCHIVE = re.compile(r"\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz|7z|rar)$", re.IGNORECASE)
# files a user may give in place of NIfTI: listed with what to do instead of dropped silently (a
# folder holding only these would otherwise be "no NIfTI exam found", naming none of them)
OTHER_FORMATS = (
    (re.compile(r"\.(hdr|img)(\.gz)?$", re.IGNORECASE),
     "an Analyze 7.5 image (msjax reads NIfTI; Analyze leaves left and right to the reader): "
     "convert it to NIfTI with the tool that wrote it, and check its orientation"),
    (re.compile(r"\.mg[hz]$", re.IGNORECASE),
     "a FreeSurfer MGH image (msjax reads NIfTI): mri_convert it to .nii.gz"),
    (re.compile(r"\.(nrrd|nhdr|mha|mhd)$", re.IGNORECASE),
     "a NRRD or MetaImage file (msjax reads NIfTI): save it as .nii.gz (3D Slicer, SimpleITK)"),
    (ARCHIVE, "an archive: unpack it and give the folder"),
)


_PAIR_HEADER = re.compile(r"\.hdr(\.gz)?$", re.IGNORECASE)
_PAIR_DATA = re.compile(r"\.img(\.gz)?$", re.IGNORECASE)


def _nifti1_pair(header: str) -> bool:
  """Whether a .hdr is a NIfTI-1 pair's header (magic 'ni1' at byte 344, as SPM writes), which
  carries its orientation, rather than Analyze 7.5's."""
  heads = nifti.header_bytes(header)
  return heads is not None and heads[1][344:347] == b"ni1"


def other_format(name: str) -> str | None:
  """Why a file of another image format or an archive is not read, or None."""
  if name.startswith("."):
    return None
  return next((why for pattern, why in OTHER_FORMATS if pattern.search(name)), None)


def _stem(name: str) -> str:
  return _NIFTI_EXT.sub("", name)


# A file-name prefix that names a visit rather than a patient (`study2_FLAIR.nii.gz` in a patient's
# folder): such exams are sessions of the folder's patient.
_VISIT = re.compile(r"^(study|ses|session|visit|tp|timepoint|scan|exam|baseline|follow[-_]?up|"
                    r"m|month|y|year)[-_]?\w*$", re.IGNORECASE)


def is_bids(folder: str) -> bool:
  """A BIDS dataset: dataset_description.json, or sub-*/ folders holding anat/."""
  if os.path.exists(os.path.join(folder, "dataset_description.json")):
    return True
  return any(n.startswith("sub-") and os.path.isdir(os.path.join(folder, n, "anat")) or
             n.startswith("sub-") and any(os.path.isdir(os.path.join(folder, n, s, "anat"))
                                          for s in _listdir(os.path.join(folder, n))
                                          if s.startswith("ses-"))
             for n in _listdir(folder))


def _listdir(folder: str) -> list[str]:
  try:
    return sorted(os.listdir(folder))
  except OSError:
    return []


def build_cohort(folder: str, *, ms_default: bool = True) -> Cohort:
  """Scans `folder` (a BIDS dataset, or any folder of NIfTI files) for exams."""
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise InvalidInputError(f"{folder}: not a folder")
  if is_bids(folder):
    return build_bids_cohort(folder)
  return build_named_cohort(folder, ms_default=ms_default)


def build_named_cohort(folder: str, *, ms_default: bool = True) -> Cohort:
  """Groups NIfTI files into exams by sub-folder and file-name prefix.

  `patient07/FLAIR.nii.gz` -> exam patient07; `patient01/study2_T1W.nii.gz` -> exam
  patient01_study2 of patient patient01; `sub-3_flair.nii.gz` at the top -> exam sub-3.
  Recognised names: T1W/T1, T1WKS/T1Wc/T1CE/T1GD, T2W/T2, FLAIR, PDW/PD; `consensus*` and
  `rater<k>`/`mask<k>` lesion masks; `*brain*mask*`. Exams with a lesion mask are MS; the others
  take `ms_default`. Files whose name says nothing msjax knows are listed in `Cohort.unused`.
  """
  groups: dict[tuple[str, str], dict[str, list[str]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  unused = []
  for dirpath, _, filenames in _walk(folder):
    headers = {_PAIR_HEADER.sub("", n).lower() for n in filenames if _PAIR_HEADER.search(n)}
    for name in filenames:
      if not _is_nifti(name):
        why = other_format(name)
        if why and _PAIR_DATA.search(name) and _PAIR_DATA.sub("", name).lower() in headers:
          continue  # a header/data pair is named once, by its header
        if why and _PAIR_HEADER.search(name) and _nifti1_pair(os.path.join(dirpath, name)):
          why = ("a NIfTI-1 pair (.hdr + .img): msjax reads single-file NIfTI; join them with "
                 "nibabel, nib.save(nib.load('X.hdr'), 'X.nii.gz')")
        if why:
          unused.append((os.path.join(dirpath, name), why))
        continue
      role, prefix = _classify(_stem(name))
      if role is None:
        unused.append((os.path.join(dirpath, name), "no sequence or mask name msjax knows"))
        continue
      rel_dir = os.path.relpath(dirpath, folder)
      groups[(rel_dir, prefix)][role].append(os.path.join(dirpath, name))
  exams = []
  for (rel_dir, prefix), roles in sorted(groups.items()):
    parts = [] if rel_dir == "." else rel_dir.split(os.sep)
    # files at the top: one patient's folder (no prefix, or visit prefixes such as study1_), named
    # after the folder; otherwise the prefix names the patient (`sub-3_flair.nii.gz`)
    top = os.path.basename(folder.rstrip(os.sep))
    visit = bool(prefix) and bool(_VISIT.match(prefix))
    patient = parts[0] if parts else (top if not prefix or visit else prefix.split("_")[0])
    exam_id = "_".join(parts + ([prefix] if prefix else [])) or patient
    if not parts and visit:
      exam_id = f"{top}_{prefix}"
    # outputs go to sub-<patient>[/ses-<visit>]: the visits of one patient are sessions of one
    # subject, as in BIDS, not one subject each
    session = (parts[1:] + ([prefix] if prefix else [])) if parts else ([prefix] if visit else [])
    subject = bids_label(re.sub(r"^sub-", "", patient))
    entities = {"sub": subject, **({"ses": bids_label("".join(session))} if session else {})}
    for role, paths in roles.items():
      if len(paths) > 1:
        raise InvalidInputError(
            f"{folder}: exam {exam_id} has several files for {role}: {paths}; keep one per exam "
            "(another visit goes in a folder of its own, or takes a prefix: study2_FLAIR.nii.gz)")
    images = {m: roles[m][0] for m in MODALITIES if m in roles}
    if not images:
      unused += [(p, "a mask without images beside it") for ps in roles.values() for p in ps]
      continue
    raters = tuple(roles[k][0] for k in sorted((r for r in roles if r.startswith("rater")),
                                               key=lambda r: int(r[5:])))
    consensus = roles["consensus"][0] if "consensus" in roles else None
    exams.append(Exam(exam_id=exam_id, patient_id=patient,
                      ms=bool(raters or consensus) or ms_default, images=images, raters=raters,
                      consensus=consensus,
                      brain_mask=roles["brain_mask"][0] if "brain_mask" in roles else None,
                      bids=entities))
  if not exams:
    other = [(p, why) for p, why in unused if other_format(os.path.basename(p))]
    raise InvalidInputError(
        f"{folder}: no NIfTI exam found (expected files named like FLAIR.nii.gz, T1W.nii.gz, "
        "consensus_gt.nii.gz, or a BIDS dataset)"
        + (f"; found {len(other)} file(s) msjax does not read: "
           + "; ".join(f"{os.path.relpath(p, folder)}: {why}" for p, why in other[:3])
           + (" ..." if len(other) > 3 else "") if other else ""))
  return Cohort(root=folder, exams=tuple(exams), unused=tuple(unused))


# ---- BIDS ---------------------------------------------------------------------------------------

# BIDS suffix -> modality (T1w with a contrast-agent entity `ce-` is the contrast T1)
BIDS_SUFFIXES = {"T1w": "T1W", "T2w": "T2W", "FLAIR": "FLAIR", "PDw": "PDW", "PD": "PDW"}


def bids_entities(name: str) -> tuple[dict[str, str], str]:
  """'sub-01_ses-02_ce-gd_T1w.nii.gz' -> ({'sub': '01', 'ses': '02', 'ce': 'gd'}, 'T1w')."""
  parts = _stem(name).split("_")
  entities = {}
  for part in parts[:-1]:
    key, sep, value = part.partition("-")
    if sep:
      entities[key] = value
  return entities, parts[-1]


def _pick(candidates: list[tuple[dict, str]], what: str, unused: list) -> str:
  """One file among several for the same role in one session: the one without `run-`, else the
  highest run (a repeat after a failed one); the others are listed as unused."""
  def key(c):
    ent, _ = c
    return (0 if "run" not in ent else 1, int(ent["run"]) if ent.get("run", "").isdigit() else 0)
  ranked = sorted(candidates, key=key)
  chosen = ranked[-1] if all("run" in e for e, _ in ranked) else ranked[0]
  for c in ranked:
    if c is not chosen:
      unused.append((c[1], f"another {what} of the session is used: {chosen[1]}"))
  return chosen[1]


def _lesion_value(path: str) -> int | None:
  """The value of the lesion label in a `_dseg` image, from its `.tsv` (index, name); None when
  no row names a lesion."""
  tsv = _NIFTI_EXT.sub(".tsv", path)
  if not os.path.exists(tsv):
    return None
  with open(tsv) as f:
    rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
  header = [h.lower() for h in rows[0]] if rows else []
  if "index" in header and "name" in header:
    i, n = header.index("index"), header.index("name")
    for row in rows[1:]:
      if len(row) > max(i, n) and "lesion" in row[n].lower() and row[i].strip().isdigit():
        return int(row[i])
  return None


def build_bids_cohort(folder: str) -> Cohort:
  """One exam per (subject, session) of a BIDS dataset: `sub-*/[ses-*/]anat/*_{T1w,T2w,FLAIR,
  PDw}.nii[.gz]` (`_ce-<agent>_T1w` is the contrast T1), lesion masks from
  `derivatives/*/sub-*/[ses-*/]anat/*_label-lesion_*` or `*_dseg` (the lesion's value from the
  `.tsv` beside it, else 1). Anything else is listed in `Cohort.unused`."""
  sessions: dict[tuple[str, str], dict] = collections.defaultdict(
      lambda: {"images": collections.defaultdict(list), "masks": [], "brain": []})
  unused = []
  for dirpath, dirnames, filenames in _walk(folder):
    rel = os.path.relpath(dirpath, folder).split(os.sep)
    derivative = rel[0] == "derivatives"
    if rel[0] in ("sourcedata", "code", "stimuli") or (rel[-1] != "." and
                                                         rel[-1].startswith(".")):
      dirnames[:] = []
      continue
    for name in filenames:
      path = os.path.join(dirpath, name)
      if not _is_nifti(name):
        continue
      entities, suffix = bids_entities(name)
      if "sub" not in entities or (not derivative and rel[-1] != "anat"):
        unused.append((path, "not in a sub-*/[ses-*/]anat/ folder"))
        continue
      key = (entities["sub"], entities.get("ses", ""))
      if derivative:
        if entities.get("label", "").lower() == "lesion":
          sessions[key]["masks"].append((entities, path))
        elif suffix == "dseg":
          value = _lesion_value(path)
          sessions[key]["masks"].append((entities, path if value is None else
                                         f"{path}::{value}"))
        elif entities.get("label", "").lower() == "brain" and suffix == "mask":
          sessions[key]["brain"].append((entities, path))
        else:
          unused.append((path, "a derivative that is not a lesion or brain mask"))
        continue
      if suffix not in BIDS_SUFFIXES:
        unused.append((path, f"BIDS suffix _{suffix} is not a sequence msjax uses "
                             f"({', '.join(BIDS_SUFFIXES)})"))
        continue
      modality = "T1WKS" if suffix == "T1w" and "ce" in entities else BIDS_SUFFIXES[suffix]
      sessions[key]["images"][modality].append((entities, path))
  exams = []
  for (sub, ses), found in sorted(sessions.items()):
    exam_id = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    if not found["images"]:
      unused += [(p, "a mask of a session without images") for _, p in found["masks"]]
      continue
    images = {m: _pick(found["images"][m], m, unused) for m in MODALITIES if m in found["images"]}
    consensus = _pick(found["masks"], "lesion mask", unused) if found["masks"] else None
    brain = _pick(found["brain"], "brain mask", unused) if found["brain"] else None
    exams.append(Exam(exam_id=exam_id, patient_id=f"sub-{sub}", ms=True, images=images,
                      consensus=consensus, brain_mask=brain,
                      bids={"sub": sub, **({"ses": ses} if ses else {})}))
  if not exams:
    raise InvalidInputError(f"{folder}: a BIDS dataset without any sub-*/[ses-*/]anat/ image "
                            f"msjax uses ({', '.join(BIDS_SUFFIXES)})")
  return Cohort(root=folder, exams=tuple(exams), unused=tuple(unused))
