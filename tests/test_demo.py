"""The demo at smoke size (msjax/demo.py)."""
import json
import os

import pytest

from conftest import load_config
from msjax import demo

pytestmark = pytest.mark.slow  # trains two networks


def test_demo_smoke(tmp_path):
  summary = demo.run(load_config("demo", "smoke"), str(tmp_path))
  assert summary["n"] == 1 and 0 <= summary["mean"]["dice"] <= 1
  times = json.load(open(tmp_path / "demo.json"))["times_s"]
  assert set(times) >= {"pretrain", "finetune", "predict", "evaluate"}
  assert (tmp_path / "finetune" / "loss_curve.png").exists()
  overlay = json.load(open(tmp_path / "demo.json"))["overlay"]
  assert overlay.endswith("sub-synth003_desc-lesion_overlay.png") and os.path.getsize(overlay) > 5000
  assert (tmp_path / "predict" / "predictions" / "sub-synth003" / "anat" /
          "sub-synth003_space-orig_label-lesion_desc-uncertainty_probseg.nii.gz").exists()
