"""Every config file and every variant it names loads, is locked, and names a known mode."""
import glob
import os
import re

import pytest
from ml_collections import config_dict

from conftest import ROOT, load_config
from msjax import config_base, main

# the repository's configs: the packaged ones (msjax/configs/, linked) and the lab's (configs/)
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs",
                                                                         "[a-z]*.py")))


@pytest.mark.parametrize("name", NAMES)
def test_config_and_its_variants_load(name):
  with pytest.raises(ValueError, match="unknown variant") as err:
    load_config(name, "no-such-variant")
  known = re.search(r"known: ([^)]*)\)", str(err.value)).group(1).split(", ")
  own = [k for k in known if k not in config_base.COMMON_VARIANTS]
  for variant in [""] + own + [",".join(own)]:
    config = load_config(name, variant)
    assert config.mode in main.MODES, (name, variant)
    assert config.is_locked
  if isinstance(load_config(name).get("model"), config_dict.ConfigDict):  # segment's is a path
    config = load_config(name, ",".join(own[:1] + ["bf16"]))
    assert config.model.dtype == "bfloat16"
    with pytest.raises(ValueError, match="two dtypes"):
      load_config(name, "bf16,f32")


def test_configs_by_bare_name_or_path():
  packaged = os.path.join(ROOT, "msjax", "configs", "demo.py")
  assert main.resolve_config("demo:smoke,bf16") == packaged + ":smoke,bf16"
  assert main.resolve_config("demo") == packaged
  assert main.resolve_config(packaged) == packaged
  # a configs/<name>.py path from the repository root, or from anywhere else
  assert main.resolve_config("configs/no/such/demo.py:smoke") == packaged + ":smoke"
  with pytest.raises(Exception, match="no packaged config named 'nope'.*finetune"):
    main.resolve_config("nope")
  argv = main.resolve_argv(["msjax", "--config", "finetune:smoke", "--config.seed=3"])
  assert argv[2].endswith("finetune.py:smoke") and argv[3] == "--config.seed=3"


def test_the_wheel_holds_no_config_of_the_labs_data():
  """The packaged configs read nothing of ../shared: the lab's (the Lesjak leave-one-out, the
  release training) live in the repository's configs/, beside links to the packaged ones."""
  packaged = os.path.join(ROOT, "msjax", "configs")
  for name in os.listdir(packaged):
    if name.endswith(".py"):
      with open(os.path.join(packaged, name), encoding="utf-8") as f:
        assert not re.search(r"""=\s*["'][^"']*\.\./shared""", f.read()), name
  for name in ("lesjak.py", "release.py"):
    assert os.path.isfile(os.path.join(ROOT, "configs", name))
    assert not os.path.islink(os.path.join(ROOT, "configs", name))
  # every other config there is a link to the packaged one: one file to edit, never two copies
  # that drift (an in-place edit that writes a new file breaks the link)
  for name in os.listdir(os.path.join(ROOT, "configs")):
    if name.endswith(".py") and name not in ("lesjak.py", "release.py"):
      path = os.path.join(ROOT, "configs", name)
      assert os.path.islink(path), f"configs/{name} is a copy, not a link to msjax/configs/{name}"
      assert os.path.samefile(path, os.path.join(packaged, name))


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


SAME_SETTING = {  # fields that meant one setting twice (now one field each)
    "inference batch": ("infer_batch", "batch_size"),
    "sliding-window overlap": ("val_overlap", "overlap"),
}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "benchmark"])
def test_one_field_per_setting(name):
  """No config holds two fields for one setting (the benchmark's own batch sizes aside), and a
  job has one geometry switch."""
  leaves = [key.rsplit(".", 1)[-1] for key in _flat_keys(load_config(name).to_dict())]
  assert leaves.count("allow_any_geometry") <= 1, (name, leaves)
  for setting, names in SAME_SETTING.items():
    assert not all(n in leaves for n in names), (name, setting, leaves)


def _flat_keys(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"
