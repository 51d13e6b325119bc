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


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run(
      [sys.executable, "-m", "msjax.main", "--config", os.path.join(ROOT, "configs", "lesjak.py"),
       f"--config.labelled={tmp_path}/missing", "--config.unlabelled_raw=",
       f"--workdir={tmp_path}/w"], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2
  assert f"{tmp_path}/missing: the labelled folder does not exist" in proc.stderr
  assert "Traceback" not in proc.stderr
