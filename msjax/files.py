"""Atomic writes of every output kind (JSON, CSV, text here; NIfTI in msjax.data.nifti, figures in
msjax.figures, all through `atomic`): a temporary file in the same folder, renamed over the final
name when complete and removed when anything fails, so a crash never leaves a half-written file
under the final name, nor a temporary one beside it."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile


def _suffix(path: str) -> str:
  """The extension a writer may look at (nibabel: .nii.gz, matplotlib: .png)."""
  name = os.path.basename(path)
  for ext in (".nii.gz", ".tar.gz"):
    if name.endswith(ext):
      return ext
  return os.path.splitext(name)[1]


@contextlib.contextmanager
def atomic(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is gone."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_suffix(path), dir=folder)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(text: str, path: str) -> str:
  with atomic(path) as tmp:
    with open(tmp, "w", newline="") as f:
      f.write(text)
  return path


def write_json(obj, path: str) -> str:
  """NaN and infinity are refused (they are not JSON): an undefined value is written as None."""
  return write_text(json.dumps(obj, indent=1, allow_nan=False), path)


def write_csv(rows: list[dict], path: str, fieldnames=None) -> str:
  """None is written as an empty cell."""
  fieldnames = fieldnames or list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fieldnames)
  writer.writeheader()
  writer.writerows(rows)
  return write_text(buf.getvalue(), path)
