"""Atomic writes of small outputs (JSON, CSV, text): a temporary file in the same folder, then a
rename, so a crash never leaves a half-written file under the final name. NIfTI volumes go through
msjax.data.nifti.write_nifti, figures through msjax.train.plots.save_figure, likewise."""
from __future__ import annotations

import csv
import io
import json
import os


def write_text(text: str, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def write_json(obj, path: str) -> str:
  """NaN and infinity are refused (they are not JSON): an undefined value is written as None."""
  return write_text(json.dumps(obj, indent=1, allow_nan=False), path)


def write_csv(rows: list[dict], path: str, fieldnames=None) -> str:
  fieldnames = fieldnames or list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fieldnames)
  writer.writeheader()
  writer.writerows(rows)
  return write_text(buf.getvalue(), path)
