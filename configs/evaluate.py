"""Score predicted masks against the cohort's references: `--config.predictions=<predict
workdir>` `--config.cohort=PATH`. Writes summary.json and metrics.csv in the workdir."""
from ml_collections import config_dict


def get_config(variant: str = ""):
  c = config_dict.ConfigDict()
  c.mode = "evaluate"
  c.predictions = ""
  c.cohort = ""
  if variant not in ("", "smoke"):
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  c.lock()
  return c
