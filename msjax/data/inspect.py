"""`inspect` mode: validate every exam of a cohort and print one row per exam (sequences, grid,
orientation, lesion load, problems); writes inspect.json."""
from __future__ import annotations

import os

from msjax import files
from msjax.data import cohort as cohort_lib
from msjax.data.exams import read_exam_files
from msjax.data.manifest import MANIFEST_NAME, MODALITIES, Cohort, save_cohort
from msjax.errors import InvalidInputError


def inspect_cohort(cohort: Cohort, *, patch_size: int = 32, model_shape=None,
                   allow_any_geometry: bool = False) -> list[dict]:
  """Validates every exam and returns one row per exam (the `inspect` mode prints them)."""
  rows = []
  for exam in cohort.exams:
    volumes, problems = read_exam_files(exam, allow_any_geometry)
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


def run(config, workdir: str):
  if not config.cohort:
    raise InvalidInputError("inspect needs --config.cohort=PATH (a manifest or a folder of exams)")
  cohort = cohort_lib.load_cohort(config.cohort)
  if not os.path.exists(os.path.join(cohort.root, MANIFEST_NAME)):
    # built from file names: save the manifest beside the outputs, never into the data folder
    path = save_cohort(cohort, os.path.join(workdir, MANIFEST_NAME))
    print(f"no manifest in {cohort.root}: built one from file names -> {path}")
  rows = inspect_cohort(cohort, patch_size=config.patch_size,
                        model_shape=tuple(config.model_shape) or None,
                        allow_any_geometry=config.allow_any_geometry)
  print(format_inspect_table(rows))
  if cohort.unused:
    print(f"{len(cohort.unused)} file(s) found but not used:")
    for path, why in cohort.unused:
      print(f"  - {os.path.relpath(path, cohort.root)}: {why}")
  out = files.write_json({"exams": rows, "unused": [{"file": p, "why": w} for p, w in cohort.unused]},
                         os.path.join(workdir, "inspect.json"))
  bad = [r["exam"] for r in rows if r["problems"]]
  print(f"{len(rows)} exams, {len(bad)} with problems; table written to {out}")
  if bad:
    raise InvalidInputError(f"{len(bad)} exam(s) have problems: {bad}")
  return rows
