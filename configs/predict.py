"""Segment exams with a trained network: `--config.checkpoint=<finetune workdir>`
`--config.cohort=PATH` (manifest, cohort folder, or a folder with one exam's NIfTI files).
Outputs in the exams' own space: <workdir>/predictions/<exam>/{mask,probability,spread}.nii.gz."""
from msjax import config_base


def get_config(variant: str = ""):
  c = config_base.predict()
  c.mode = "predict"
  c.seed = 0
  c.checkpoint = ""
  c.cohort = ""
  c.exams = "all"        # "all", "train", "test", or comma-separated exam ids
  if variant == "smoke":
    c.batch_size = 8
  elif variant == "paper":
    c.sampler = "random"
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke, paper)")
  c.lock()
  return c
