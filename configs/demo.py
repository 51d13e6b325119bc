"""The README's main job: synthetic cohort -> inspect (-> pretrain -> 0CF fine-tune -> predict ->
evaluate as those stages land)."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  c = config_dict.ConfigDict()
  c.mode = "demo"
  c.seed = 0
  c.synthetic = config_dict.ConfigDict(dict(n_ms=8, n_non_ms=4, n_test=3, shape=(64, 64, 64),
                                            spacing_mm=2.5))
  c.data = config_base.data(model_shape=(), patch_size=32)
  if variant == "smoke":
    c.synthetic.update(dict(n_ms=4, n_non_ms=2, n_test=1, shape=(40, 40, 40), spacing_mm=4.0))
    c.data.patch_size = 16
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  c.lock()
  return c
