"""The whole method in about a minute on msjax's synthetic cohort: pretrain, fine-tune 0CF,
predict, evaluate (synthetic cohort -> pretrain -> 0CF fine-tune -> predict -> evaluate, on a
laptop-class CPU).

CPU-sized settings: the synthetic heads are 64³ at 2.5 mm, so a 16³ patch spans 40 mm, about
what the paper's 32³ patch spans at 1.42 mm; base width 8 instead of 16. The paper's settings
are the defaults of configs/pretrain.py and configs/finetune.py.
"""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_dict.ConfigDict()
  c.mode = "demo"
  c.seed = 0
  c.synthetic = config_dict.ConfigDict(dict(n_ms=8, n_non_ms=4, n_test=3, shape=(64, 64, 64),
                                            spacing_mm=2.5))
  c.data = config_base.data(model_shape=(), patch_size=16, lesion_fraction=1 / 3,
                            val_fraction=0.2)
  c.model = config_base.model(base_width=8)
  c.pretrain = config_base.train(steps=100, log_every=20, eval_every=50, checkpoint_every=50)
  c.finetune = config_base.train(steps=250, log_every=25, eval_every=125, checkpoint_every=125,
                                 freeze="0")
  c.predict = config_base.predict()
  config_base.allow_any_geometry(c)
  if "smoke" in v:
    c.synthetic.update(dict(n_ms=4, n_non_ms=2, n_test=1, shape=(40, 40, 40), spacing_mm=4.0))
    c.data.update(dict(patches_per_exam=4, num_threads=1))
    c.model.base_width = 4
    c.pretrain.update(dict(steps=3, log_every=1, eval_every=3, checkpoint_every=3))
    c.finetune.update(dict(steps=3, log_every=1, eval_every=3, checkpoint_every=3))
    c.predict.batch_size = 8
  return config_base.finish(c, v)
