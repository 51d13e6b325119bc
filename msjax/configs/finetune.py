"""Segmentation fine-tuning with a transfer strategy: `--config.train.freeze=van|0|1|2|3|6`,
`--config.train.init_from=<pretraining workdir>`, `--config.data.cohort=PATH`."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke", "synthetic")
  c = config_dict.ConfigDict()
  c.mode = "finetune"
  c.seed = 0
  c.data = config_base.data()
  c.model = config_base.model()
  c.train = config_base.train(steps=2000)
  c.predict = config_base.predict()  # how validation segments held-out exams; the bundle's threshold
  config_base.allow_any_geometry(c)
  c.distributed = config_base.distributed()
  if "smoke" in v:
    c.data.update(dict(model_shape=(), patch_size=16, patches_per_exam=4, num_threads=1,
                       lesion_fraction=0.5))
    c.model.base_width = 4
    c.train.update(dict(steps=6, log_every=1, eval_every=3, checkpoint_every=3, freeze="van"))
  if "synthetic" in v:
    c.data.update(dict(model_shape=(), lesion_fraction=1 / 3))
    c.model.base_width = 8
    c.train.update(dict(steps=300, log_every=20, eval_every=100, checkpoint_every=100))
  return config_base.finish(c, v)
