"""Validates a cohort and prints one row per exam: `--config.cohort=PATH` (manifest or folder;
a folder without cohort.json gets one built from its file names, written to the workdir)."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_dict.ConfigDict()
  c.mode = "inspect"
  c.cohort = ""
  c.patch_size = 32
  c.model_shape = (128, 128, 128)   # the grid patches will be cut from; () = each exam's own
  config_base.allow_any_geometry(c)
  if "smoke" in v:
    c.patch_size, c.model_shape = 16, ()
  return config_base.finish(c, v)
