"""Encoder transfer from a pretraining checkpoint (msjax/train/transfer.py)."""
import pytest

from conftest import finetune_smoke, load_config
from msjax import checkpoint
from msjax.models import isensee
from msjax.models import model as model_lib


def test_transfer_requires_init_from(tiny_cohort, tmp_path):
  with pytest.raises(ValueError, match="init_from"):
    finetune_smoke(tiny_cohort, str(tmp_path), **{"train.freeze": "0", "train.init_from": ""})


@pytest.mark.slow  # pretrains a network
def test_transfer_checks_shapes(pretrained):
  source, _, _ = checkpoint.restore_params(pretrained[0])
  cfg = load_config("finetune", "smoke", **{"model.base_width": 8}).model
  params = model_lib.Model(isensee.constructor("segmentation", cfg)).init_params()
  from msjax.train import transfer
  with pytest.raises(ValueError, match="shape"):
    transfer.transfer_encoder(params, source)


@pytest.mark.slow  # pretrains a network
def test_a_source_task_reads_from_its_metadata(pretrained, trained):
  from msjax.train import transfer
  assert checkpoint.source_task(pretrained[0]) == "position"
  assert checkpoint.source_task(trained) == "segmentation"
  assert transfer.source_rules(pretrained[0]) is transfer.TRANSFER_RULES
  assert transfer.source_rules(trained) is transfer.WHOLE_RULES
