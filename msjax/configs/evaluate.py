"""Score predicted masks against the cohort's references: `--config.predictions=<predict
workdir>` `--config.cohort=PATH`. Writes summary.json and metrics.csv in the workdir.
Change maps: `--config.predictions=<longitudinal workdir> --config.change_reference=DIR` (one
folder per patient with its reference change mask; msjax/longitudinal/evaluate.py)."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_dict.ConfigDict()
  c.mode = "evaluate"
  c.predictions = ""
  c.cohort = ""
  c.change_reference = ""   # reference change masks: score a longitudinal run's change maps
  return config_base.finish(c, v)
