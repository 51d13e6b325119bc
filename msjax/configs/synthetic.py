"""Writes msjax's synthetic cohort (NIfTI + cohort.json) into <workdir>/cohort."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_dict.ConfigDict()
  c.mode = "synthetic"
  c.seed = 0
  c.output = ""        # '' = <workdir>/cohort
  c.n_ms = 8
  c.n_non_ms = 4
  c.n_test = 3
  c.shape = (64, 64, 64)
  c.spacing_mm = 2.5
  if "smoke" in v:
    c.n_ms, c.n_non_ms, c.n_test, c.shape, c.spacing_mm = 4, 2, 1, (40, 40, 40), 4.0
  return config_base.finish(c, v)
