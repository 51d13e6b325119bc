"""The paper's experiment: pretrain once on every non-test exam, fine-tune VAN/0CF/1CF/2CF/3CF/6CF
over repeated random sub-samplings, evaluate on the test exams; writes Table 2 (md, csv) and
Figure 4 (png). The paper's protocol by default: batches of 12 patches from one patient, soft Dice,
inference by 150 random brain patches (`--config.samplers=random,sliding` adds the Gaussian
sliding window beside it). `--config.data.cohort=PATH` (needs exams with split "test");
`--config.label_fractions=0.25,0.5,1` repeats the grid with fewer labelled patients."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke", "synthetic")
  c = config_dict.ConfigDict()
  c.mode = "experiment"
  c.seed = 0
  c.strategies = "van,0,1,2,3,6"
  c.repeats = 3
  c.label_fractions = "1.0"
  c.samplers = "random"          # the paper's 150 random brain patches; "random,sliding" adds
                                 # the Gaussian sliding window beside it
  c.data = config_base.data(group_by="patient")
  c.model = config_base.model()
  c.pretrain = config_base.train(steps=2000)
  c.finetune = config_base.train(steps=2000)
  c.predict = config_base.predict()  # sampler: see `samplers`
  config_base.allow_any_geometry(c)
  if "smoke" in v:  # synthetic cohort in <workdir>/cohort or --config.data.cohort
    c.repeats = 1
    c.data.update(dict(model_shape=(), patch_size=16, patches_per_exam=4, num_threads=1,
                       lesion_fraction=0.5))
    c.model.base_width = 4
    c.pretrain.update(dict(steps=2, log_every=1, eval_every=0, checkpoint_every=2))
    c.finetune.update(dict(steps=2, log_every=1, eval_every=0, checkpoint_every=2))
    c.predict.batch_size = 8
  if "synthetic" in v:  # CPU-sized, on the synthetic cohort
    c.data.update(dict(model_shape=(), patch_size=16, lesion_fraction=1 / 3))
    c.model.base_width = 8
    c.pretrain.update(dict(steps=100, log_every=20, eval_every=50, checkpoint_every=50))
    c.finetune.update(dict(steps=200, log_every=25, eval_every=0, checkpoint_every=100))
  return config_base.finish(c, v)
