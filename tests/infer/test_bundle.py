"""The model bundle fine-tuning writes (msjax/infer/bundle.py)."""
import os

import pytest

from msjax import errors
from msjax.infer import bundle as bundle_lib

pytestmark = pytest.mark.slow  # needs the session's trained model


def test_finetuning_writes_a_model_bundle(trained, tiny_cohort):
  b = bundle_lib.read(trained)
  assert b["threshold"] == 0.5 and b["patch_size"] == 16 and b["model"]["base_width"] == 4
  assert b["training"]["steps"] == 3 and b["training"]["patients"]
  landmarks = b["preprocessing"]["nyul_landmarks"]
  assert {"FLAIR", "T1W"} <= set(landmarks)
  assert landmarks["FLAIR"]["standard"][0] == pytest.approx(0) and landmarks["FLAIR"][
      "standard"][-1] == pytest.approx(100)
  assert b["preprocessing"]["by"] == "external"  # the synthetic cohort is not msjax-preprocessed
  card = open(os.path.join(trained, "model_card.md")).read()
  assert "## Trained on" in card and "## Validation" in card and "segment" in card
  # a threshold nobody chose on left-out patients says so
  assert f"threshold {b['threshold']:g}: the default (predict.threshold), not chosen" in card
  with pytest.raises(errors.InvalidInputError, match="not a model bundle"):
    bundle_lib.read(os.path.dirname(trained))
