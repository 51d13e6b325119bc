"""Score predicted masks against the cohort's references: `--config.predictions=<predict
workdir>` `--config.cohort=PATH`. Writes summary.json and metrics.csv in the workdir."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_dict.ConfigDict()
  c.mode = "evaluate"
  c.predictions = ""
  c.cohort = ""
  return config_base.finish(c, v)
