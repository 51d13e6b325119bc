"""Raw exams -> the paper's 128³ MNI grid (needs `pip install -e '.[preprocess]'`):
`--config.input=FOLDER` of raw NIfTI exams (named as the cohort scanner expects, e.g.
patient01/study1_FLAIR.nii.gz); output cohort in <workdir>/cohort, one folder per exam."""
from msjax import config_base


def get_config(variant: str = ""):
  c = config_base.preprocess()
  c.mode = "preprocess"
  if variant == "smoke":
    c.workers, c.n4_iterations = 1, (5, 5)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  c.lock()
  return c
