"""Every config file and every variant it names loads, is locked, and names a known mode."""
import glob
import os
import re

import pytest

from conftest import ROOT, load_config
from msjax import main

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("name", NAMES)
def test_config_and_its_variants_load(name):
  with pytest.raises(ValueError, match="unknown variant") as err:
    load_config(name, "no-such-variant")
  known = re.search(r"known: ([^)]*)\)", str(err.value)).group(1).split(", ")
  for variant in [""] + known:
    config = load_config(name, variant)
    assert config.mode in main.MODES, (name, variant)
    assert config.is_locked
