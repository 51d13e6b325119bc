"""Raw exams -> the paper's 128³ MNI grid (needs `pip install -e '.[preprocess]'`):
`--config.input=FOLDER` of raw NIfTI exams (named as the cohort scanner expects, e.g.
patient01/study1_FLAIR.nii.gz); output cohort in <workdir>/cohort, one folder per exam.
`--config.grid='(160,160,160)'` writes a finer resampling of the MNI box, for a model trained with
that data.model_shape."""
from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_base.preprocess()
  c.mode = "preprocess"
  config_base.allow_any_geometry(c)
  if "smoke" in v:
    c.workers, c.n4_iterations = 1, (5, 5)
  return config_base.finish(c, v)
