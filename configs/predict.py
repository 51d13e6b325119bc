"""Segment exams with a trained network: `--config.checkpoint=<finetune workdir>`
`--config.cohort=PATH` (manifest, cohort folder, or a folder with one exam's NIfTI files).
Outputs in the exams' own space: <workdir>/predictions/<exam>/{mask,probability,spread}.nii.gz."""
from ml_collections import config_dict


def get_config(variant: str = ""):
  c = config_dict.ConfigDict()
  c.mode = "predict"
  c.seed = 0
  c.checkpoint = ""
  c.cohort = ""
  c.exams = "all"        # "all", "train", "test", or comma-separated exam ids
  c.sampler = "sliding"  # "sliding" (full coverage, Gaussian) or "random" (the paper's)
  c.overlap = 0.5        # sliding window overlap
  c.n_random = 150       # random sampler: patches per exam (paper: 150)
  c.threshold = 0.5
  c.batch_size = 16      # patches per forward pass (bounds memory for any volume size)
  if variant == "smoke":
    c.batch_size = 8
  elif variant == "paper":
    c.sampler = "random"
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke, paper)")
  c.lock()
  return c
