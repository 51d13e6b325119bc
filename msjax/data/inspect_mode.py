"""`inspect` mode: validate a cohort, print one row per exam, write inspect.json."""
import os

from msjax import files
from msjax.data import cohort as cohort_lib
from msjax.data.nifti import InvalidInputError


def run(config, workdir: str):
  if not config.cohort:
    raise InvalidInputError("inspect needs --config.cohort=PATH (a manifest or a folder of exams)")
  cohort = cohort_lib.load_cohort(config.cohort)
  if not os.path.exists(os.path.join(cohort.root, cohort_lib.MANIFEST_NAME)):
    # built from file names: save the manifest beside the outputs, never into the data folder
    path = cohort_lib.save_cohort(cohort, os.path.join(workdir, cohort_lib.MANIFEST_NAME))
    print(f"no manifest in {cohort.root}: built one from file names -> {path}")
  rows = cohort_lib.inspect_cohort(cohort, patch_size=config.patch_size,
                                   model_shape=tuple(config.model_shape) or None)
  print(cohort_lib.format_inspect_table(rows))
  out = files.write_json(rows, os.path.join(workdir, "inspect.json"))
  bad = [r["exam"] for r in rows if r["problems"]]
  print(f"{len(rows)} exams, {len(bad)} with problems; table written to {out}")
  if bad:
    raise InvalidInputError(f"{len(bad)} exam(s) have problems: {bad}")
  return rows
