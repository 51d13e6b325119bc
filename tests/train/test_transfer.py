"""Encoder transfer from a pretraining checkpoint (msjax/train/transfer.py)."""
import pytest

from conftest import load_config
from msjax import checkpoint
from msjax.models import isensee
from msjax.models import model as model_lib
from msjax.train import loop


def _finetune(tiny_cohort, w, **overrides):
  base = {"data.cohort": tiny_cohort.root, "train.steps": 2, "train.eval_every": 0,
          "train.checkpoint_every": 1, "train.log_every": 1}
  base.update(overrides)
  config = load_config("finetune", "smoke", **base)
  return config, loop.train(config, w)


def test_transfer_requires_init_from(tiny_cohort, tmp_path):
  with pytest.raises(ValueError, match="init_from"):
    _finetune(tiny_cohort, str(tmp_path), **{"train.freeze": "0", "train.init_from": ""})


@pytest.mark.slow  # pretrains a network
def test_transfer_checks_shapes(pretrained):
  source, _, _ = checkpoint.restore_params(pretrained[0])
  cfg = load_config("finetune", "smoke", **{"model.base_width": 8}).model
  params = model_lib.Model(isensee.constructor("segmentation", cfg)).init_params()
  from msjax.train import transfer
  with pytest.raises(ValueError, match="shape"):
    transfer.transfer_encoder(params, source)
