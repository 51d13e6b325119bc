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
  said = b["training"]["augmentation"]  # what the training did to its exams
  assert said and f"- augmentation: {said}\n" in card
  # a threshold nobody chose on left-out patients says so
  assert f"threshold {b['threshold']:g}: the default (predict.threshold), not chosen" in card
  with pytest.raises(errors.InvalidInputError, match="not a model bundle"):
    bundle_lib.read(os.path.dirname(trained))


def test_the_card_says_what_the_training_did_to_its_exams():
  """What a model has seen decides what it can be given: the card's augmentation line reads the
  recorded data config, and says none when there was none."""
  off = dict(augment=False, intensity=False, lesion_load=0.0, transplant=0.0, thick_slices=0.0,
             thick_exam=0.0, bias_field=0.0, noise=0.0, sequence_dropout=0.0, renormalise=True)
  assert bundle_lib.augmentation(off) == "none"  # renormalise alone pastes nothing: not said
  # pastes without the geometric augmentation: said alone, not after a "none"
  pasted_only = dict(off, transplant=0.5, lesion_maps="maps", renormalise=False)
  assert bundle_lib.augmentation(pasted_only) == (
      "another patient's real lesions (`maps`) transplanted in 50 % of the exams drawn")
  text = bundle_lib.augmentation(dict(
      off, augment=True, transplant=0.5, lesion_maps="../shared/data/lesjak_lesion_maps/",
      thick_exam=0.25, slice_mm=(2.0, 6.0), slice_gap=(0.0, 0.3), sequence_dropout=0.5))
  assert text == ("scaling, mirroring, intensity jitter; another patient's real lesions "
                  "(`lesjak_lesion_maps`) transplanted in 50 % of the exams drawn; an exam given "
                  "lesions z-scored again with them in; every sequence acquired as one 2-6 mm 2D "
                  "exam, slice gaps 0-30 % of the thickness, in 25 % of the patches; sequences "
                  "other than FLAIR dropped (50 % per patch)")
  assert "shared/data" not in text  # no path of the training machine
