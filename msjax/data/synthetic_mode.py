"""`synthetic` mode: write the built-in synthetic cohort."""
import os

from absl import logging

from msjax.data import synthetic


def run(config, workdir: str):
  folder = config.output or os.path.join(workdir, "cohort")
  spec = synthetic.SyntheticSpec(n_ms=config.n_ms, n_non_ms=config.n_non_ms, n_test=config.n_test,
                                 shape=tuple(config.shape), spacing_mm=config.spacing_mm,
                                 seed=config.seed)
  cohort = synthetic.write_synthetic_cohort(folder, spec, log=logging.info)
  print(f"wrote a synthetic cohort of {len(cohort.exams)} exams to {folder} "
        f"(manifest {os.path.join(folder, 'cohort.json')})")
  return cohort
