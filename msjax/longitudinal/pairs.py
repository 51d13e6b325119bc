"""The visit pairs of a `longitudinal` input: one baseline and one follow-up exam per patient.

  --config.baseline=DIR --config.followup=DIR   one exam's folder each (one patient)
  --config.input=DIR                            a folder of patients (`<patient>/study1_*`,
                                                `study2_*` or `ses-*/` folders), a BIDS dataset
                                                (sub-*/ses-*/anat/), or a cohort manifest

Exams are found as `segment` finds them (msjax/data/scan.py: the visits of a patient are BIDS
sessions). A patient's visits are put in time order by (`visit_order`): their session labels when
every label holds a number (numbers compared as numbers: ses-2 before ses-10, ses-m6 before
ses-m12; labels that are dates read as dates, 01072020 from a folder 01.07.2020 included, and
refused when day-month and month-day would order them differently); else their acquisition
dates (BIDS `sub-<label>_sessions.tsv` acq_time, or the FLAIR's JSON sidecar AcquisitionDateTime /
AcquisitionDate); else the words of the labels (baseline, screening, pre... before follow-up,
post...; numbers order the labels no such word tells apart: baseline, m6, m12). Labels without
any of these (ses-pre and ses-post sort the wrong way round alphabetically) are not guessed: the
patient is returned with the reason, as is a patient with one visit (the mode reports it as
failed and goes on). Of more than two visits, the last two are compared (the change since the
visit before the latest, as a clinic reads a new scan; --config.sessions=<baseline>,<follow-up>
chooses another pair).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import re

from absl import logging

from msjax import config_base, errors
from msjax.data import cohort as cohort_lib
from msjax.data.manifest import Exam
from msjax.data.scan import bids_label


@dataclasses.dataclass(frozen=True)
class Pair:
  patient: str                   # the BIDS subject label of the outputs
  baseline: Exam | None
  followup: Exam | None
  problem: str | None = None     # why this patient cannot be compared


def _natural(text: str):
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


_EARLIER = {"baseline", "base", "bl", "screening", "screen", "pre", "before", "prior", "initial",
            "first", "previous", "old", "older", "earlier"}
_LATER = {"followup", "follow", "fu", "post", "after", "second", "last", "final", "current",
          "new", "newer", "later", "latest"}


def _acquired(exam: Exam) -> str | None:
  """The exam's acquisition date-time (ISO text) from BIDS: the subject's sessions.tsv acq_time
  for its session, else its FLAIR's JSON sidecar; None when neither says."""
  flair = exam.images.get("FLAIR") or next(iter(exam.images.values()))
  if exam.bids and exam.bids.get("ses") and exam.bids.get("sub"):
    sub = exam.bids["sub"]
    folder = os.path.dirname(flair)
    while folder and os.path.basename(folder) != f"sub-{sub}" and folder != os.path.dirname(folder):
      folder = os.path.dirname(folder)
    table = os.path.join(folder, f"sub-{sub}_sessions.tsv")
    if os.path.basename(folder) == f"sub-{sub}" and os.path.exists(table):
      with open(table, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
          if row.get("session_id") in (f"ses-{exam.bids['ses']}", exam.bids["ses"]) and \
              (row.get("acq_time") or "").strip() not in ("", "n/a"):
            return row["acq_time"].strip()
  sidecar = re.sub(r"\.nii(\.gz)?$", ".json", flair)
  if sidecar != flair and os.path.exists(sidecar):
    try:
      with open(sidecar) as f:
        meta = json.load(f)
    except (OSError, ValueError):
      return None
    for key in ("AcquisitionDateTime", "AcquisitionDate"):
      if isinstance(meta.get(key), str) and meta[key].strip():
        return meta[key].strip()
  return None


def _word_rank(label: str) -> int:
  """0 for a label saying it is the earlier visit, 2 the later, 1 neither."""
  words = {w for w in re.split(r"[^a-z]+", label.lower()) if w}
  return 0 if words & _EARLIER else 2 if words & _LATER else 1


# an 8-digit date -> (year, month, day), by each way clinics write dates
_CONVENTIONS = {"year-month-day": lambda r: (r[:4], r[4:6], r[6:]),
                "day-month-year": lambda r: (r[4:], r[2:4], r[:2]),
                "month-day-year": lambda r: (r[4:], r[:2], r[2:4])}


def _calendar(sessions: list[str]) -> tuple[list | None, str | None]:
  """Session labels that are dates (an 8-digit run: 20190501, or 01072020 from a folder named
  01.07.2020): (their dates, None) when one way of reading them (year-month-day, day-month-year,
  month-day-year) fits every label or all the ways that fit give the same order; (None, why) when
  they order the visits differently; (None, None) when the labels are not dates."""
  import datetime
  runs = [re.findall(r"(?<!\d)(\d{8})(?!\d)", s) for s in sessions]
  if not all(len(r) == 1 for r in runs):
    return None, None
  readings = {}
  for name, parts in _CONVENTIONS.items():
    dates = []
    for (run,) in runs:
      try:
        dates.append(datetime.date(*(int(p) for p in parts(run))))
      except ValueError:
        break
    if len(dates) == len(runs) and all(1900 <= x.year <= 2100 for x in dates):
      readings[name] = dates
  if not readings:
    return None, None
  orders = {tuple(sorted(range(len(sessions)), key=lambda i: ds[i])) for ds in readings.values()}
  if len(orders) == 1 and all(len(set(ds)) == len(ds) for ds in readings.values()):
    return next(iter(readings.values())), None
  return None, (f"the visits {sessions} are dates that read in more than one order "
                f"({' or '.join(readings)}): give --config.sessions=<baseline>,<follow-up>")


def visit_order(exams: list[Exam]) -> tuple[list[Exam], str | None]:
  """(the exams in time order, None), or (as given, why their order is not known): see the
  module's docstring for the rules, in their order."""
  sessions = [_session(e) for e in exams]
  dated, ambiguous = _calendar(sessions)
  if ambiguous:
    return exams, ambiguous
  if dated:
    return [e for _, e in sorted(zip(dated, exams), key=lambda t: t[0])], None
  if all(re.search(r"\d", s) for s in sessions):
    return sorted(exams, key=lambda e: _natural(_session(e))), None
  dates = [_acquired(e) for e in exams]
  if all(dates) and len(set(dates)) == len(dates):
    return [e for _, e in sorted(zip(dates, exams), key=lambda t: t[0])], None
  # words, then numbers within a word's rank: baseline, m6, m12, ..., follow-up
  keys = [(_word_rank(s), _natural(s)) for s in sessions]
  if all(k[0] != 1 or re.search(r"\d", s) for k, s in zip(keys, sessions)) and \
      len({repr(k) for k in keys}) == len(keys):
    return [e for _, e in sorted(zip(keys, exams), key=lambda t: t[0])], None
  return exams, (f"which of the visits {sessions} came first cannot be told from their labels "
                 "(no numbers, no words such as baseline / follow-up) nor from acquisition dates "
                 "(sessions.tsv acq_time, the FLAIR's JSON sidecar): give "
                 "--config.sessions=<baseline>,<follow-up>")


def _session(exam: Exam) -> str:
  if exam.bids and exam.bids.get("ses"):
    return exam.bids["ses"]
  rest = exam.exam_id[len(exam.patient_id):] if exam.exam_id.startswith(exam.patient_id) else ""
  return bids_label(rest or exam.exam_id)


def _subject(exam: Exam) -> str:
  return exam.bids["sub"] if exam.bids else bids_label(re.sub(r"^sub-", "", exam.patient_id))


def _labelled(exam: Exam, sub: str, ses: str) -> Exam:
  return dataclasses.replace(exam, bids={"sub": sub, "ses": ses})


def _one_exam(folder: str, what: str) -> Exam:
  exams = cohort_lib.load_cohort(folder).exams
  if len(exams) != 1:
    raise errors.InvalidInputError(
        f"--config.{what}={folder}: {len(exams)} exams found "
        f"({', '.join(e.exam_id for e in exams)}); give the folder of one exam, or the patient's folder as --config.input")
  return exams[0]


def find_pairs(config) -> tuple[list[Pair], str]:
  """(the pairs in patient order, a description of the input)."""
  if config.baseline or config.followup:
    if not (config.baseline and config.followup) or config.input:
      raise errors.InvalidInputError("give --config.baseline=DIR and --config.followup=DIR "
                                     "together, or --config.input=DIR alone")
    base, follow = _one_exam(config.baseline, "baseline"), _one_exam(config.followup, "followup")
    sub = _subject(base)
    s1, s2 = _session(base), _session(follow)
    if s1 == s2 or not (base.bids and base.bids.get("ses") and follow.bids and
                        follow.bids.get("ses")):
      s1, s2 = "baseline", "followup"
    return ([Pair(sub, _labelled(base, sub, s1), _labelled(follow, sub, s2))],
            f"{config.baseline} -> {config.followup}")
  if not config.input:
    raise errors.InvalidInputError(
        "longitudinal needs --config.input=<folder of patients with two visits each, or a BIDS "
        "dataset with two sessions per subject>, or --config.baseline=DIR --config.followup=DIR")
  cohort = cohort_lib.load_cohort(config.input)
  by_patient = collections.defaultdict(list)
  for exam in cohort.exams:
    by_patient[_subject(exam)].append(exam)
  chosen = config_base.parse_list(config.sessions)
  pairs = []
  for sub, exams in sorted(by_patient.items()):
    exams, unordered = visit_order(exams)
    sessions = [_session(e) for e in exams]
    problem = None
    if chosen:
      missing = [s for s in chosen if s not in sessions]
      if len(chosen) != 2 or missing:
        problem = (f"--config.sessions={config.sessions}: expected two of its sessions "
                   f"{sessions}" + (f", {missing} not among them" if missing else ""))
      else:
        exams = [exams[sessions.index(s)] for s in chosen]
    elif len(exams) < 2:
      problem = (f"{len(exams)} visit {sessions}: the change is between two; a second visit is "
                 "needed")
    elif unordered:
      problem = unordered
    elif len(exams) > 2:  # the change since the last visit before, as a clinic reads a new scan
      logging.info("[longitudinal] sub-%s: %d visits %s: the change between the last two (%s -> "
                   "%s); --config.sessions=<baseline>,<follow-up> for another pair", sub,
                   len(exams), sessions, sessions[-2], sessions[-1])
      exams = exams[-2:]
    if problem:
      pairs.append(Pair(sub, exams[0], None, problem))
      continue
    pairs.append(Pair(sub, *(_labelled(e, sub, _session(e)) for e in exams)))
  return pairs, cohort.root
