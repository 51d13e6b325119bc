"""Segment exams with a trained network: `--config.checkpoint=<finetune workdir>`
`--config.cohort=PATH` (manifest, cohort folder, or a folder with one exam's NIfTI files).
Outputs, in each exam's own space, form a BIDS-derivatives dataset in <workdir>/predictions
(msjax/infer/outputs.py: mask, probseg, uncertainty, per-lesion table, overlay PNG per exam) with
predictions.csv (one row per exam). `:paper` samples the paper's 150 random brain patches."""
from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke", "paper")
  c = config_base.predict()
  c.mode = "predict"
  c.seed = 0
  c.checkpoint = ""
  c.cohort = ""
  c.exams = "all"        # "all", "train", "test", or comma-separated exam ids
  config_base.allow_any_geometry(c)
  if "smoke" in v:
    c.batch_size = 8
  if "paper" in v:
    c.sampler = "random"
  return config_base.finish(c, v)
