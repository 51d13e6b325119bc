"""Writes msjax's synthetic cohort (NIfTI + cohort.json) into <workdir>/cohort."""
from ml_collections import config_dict


def get_config(variant: str = ""):
  c = config_dict.ConfigDict()
  c.mode = "synthetic"
  c.seed = 0
  c.output = ""        # '' = <workdir>/cohort
  c.n_ms = 8
  c.n_non_ms = 4
  c.n_test = 3
  c.shape = (64, 64, 64)
  c.spacing_mm = 2.5
  if variant == "smoke":
    c.n_ms, c.n_non_ms, c.n_test, c.shape, c.spacing_mm = 4, 2, 1, (40, 40, 40), 4.0
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  c.lock()
  return c
