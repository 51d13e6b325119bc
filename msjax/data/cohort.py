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
  if os.path.isdir(path):
    manifest = os.path.join(path, MANIFEST_NAME)
    if not os.path.exists(manifest):
      return build_cohort(path)
  else:
    manifest = path
  if not os.path.exists(manifest):
    raise InvalidInputError(f"{manifest}: cohort manifest does not exist")
  return read_manifest(manifest)
