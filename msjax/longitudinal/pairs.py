"""The visit pairs of a `longitudinal` input: one baseline and one follow-up exam per patient.

  --config.baseline=DIR --config.followup=DIR   one exam's folder each (one patient)
  --config.input=DIR                            a folder of patients (`<patient>/study1_*`,
                                                `study2_*` or `ses-*/` folders), a BIDS dataset
                                                (sub-*/ses-*/anat/), or a cohort manifest

Exams are found as `segment` finds them (msjax/data/scan.py: the visits of a patient are BIDS
sessions); a patient's visits are ordered by session label (numbers compared as numbers:
ses-2 before ses-10). A patient with one visit, or with more than two and no
--config.sessions=<baseline>,<follow-up> to choose, is returned with the reason it cannot be
compared (the mode reports it as failed and goes on).
"""
from __future__ import annotations

import collections
import dataclasses
import re

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
    exams = sorted(exams, key=lambda e: _natural(_session(e)))
    sessions = [_session(e) for e in exams]
    problem = None
    if chosen:
      missing = [s for s in chosen if s not in sessions]
      if len(chosen) != 2 or missing:
        problem = (f"--config.sessions={config.sessions}: expected two of its sessions "
                   f"{sessions}" + (f", {missing} not among them" if missing else ""))
      else:
        exams = [exams[sessions.index(s)] for s in chosen]
    elif len(exams) != 2:
      problem = (f"{len(exams)} visit(s) {sessions}: the change is between two; "
                 + ("choose them with --config.sessions=<baseline>,<follow-up>" if len(exams) > 2
                    else "a second visit is needed"))
    if problem:
      pairs.append(Pair(sub, exams[0], None, problem))
      continue
    pairs.append(Pair(sub, *(_labelled(e, sub, _session(e)) for e in exams)))
  return pairs, cohort.root
