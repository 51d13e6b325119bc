"""`demo` mode: the whole method on the built-in synthetic cohort, printing where each output went."""
import os
import time

from absl import logging

from msjax.data import cohort as cohort_lib
from msjax.data import synthetic


def run(config, workdir: str):
  t0 = time.time()
  s = config.synthetic
  cohort_dir = os.path.join(workdir, "cohort")
  spec = synthetic.SyntheticSpec(n_ms=s.n_ms, n_non_ms=s.n_non_ms, n_test=s.n_test,
                                 shape=tuple(s.shape), spacing_mm=s.spacing_mm, seed=config.seed)
  cohort = synthetic.write_synthetic_cohort(cohort_dir, spec, log=logging.info)
  rows = cohort_lib.inspect_cohort(cohort, patch_size=config.data.patch_size,
                                   model_shape=tuple(config.data.model_shape) or None)
  print(cohort_lib.format_inspect_table(rows))
  print(f"[demo] cohort: {cohort_dir}/cohort.json ({len(cohort.exams)} exams), "
        f"{time.time() - t0:.1f} s")
  return {"cohort": cohort}
