"""A cohort from a path: its manifest (a `cohort.json` file, or a folder holding one), or a folder
scanned by file names."""
from __future__ import annotations

import os

from msjax.data.manifest import MANIFEST_NAME, Cohort, read_manifest
from msjax.data.scan import build_cohort
from msjax.errors import InvalidInputError


def load_cohort(path: str) -> Cohort:
  """Loads a cohort from its manifest file or folder (a folder without a manifest is scanned)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(path) and not path.lower().endswith(".json"):
    from msjax.data.scan import ARCHIVE
    if ARCHIVE.search(path):
      raise InvalidInputError(f"{path}: an archive: unpack it and give the folder (msjax reads "
                              "exams from folders)")
    kind = "a NIfTI image" if path.lower().endswith((".nii", ".nii.gz")) else "a file"
    raise InvalidInputError(
        f"{path}: {kind}, where a folder is expected: give the folder that holds the exam "
        f"({os.path.dirname(path)}), a folder of exams, a BIDS dataset or a cohort.json")
  if os.path.isdir(path):
    from msjax.data.scan import msjax_output
    if msjax_output(path):
      raise InvalidInputError(f"{path}: a folder of msjax's own outputs (its "
                              "dataset_description.json says msjax made it), not input exams")
    manifest = os.path.join(path, MANIFEST_NAME)
    if not os.path.exists(manifest):
      return build_cohort(path)
  else:
    manifest = path
  if not os.path.exists(manifest):
    raise InvalidInputError(f"{manifest}: cohort manifest does not exist")
  return read_manifest(manifest)
