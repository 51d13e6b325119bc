"""Freezing by parameter-path rules (msjax/train/optim.py)."""
import pytest

from msjax import rules
from msjax.train import optim


class _Interrupted(Exception):
  pass


def test_freezing_rules_cover_every_leaf_and_keep_norms_optionally():
  params = {"encoder": {"conv1": {"kernel": 0, "bias": 0}, "norm2": {"scale": 0, "bias": 0},
                        "conv2": {"kernel": 0, "bias": 0}}, "decoder": {"x": {"kernel": 0}}}
  labels, frozen = optim.freeze_labels(params, 1, freeze_norms=False, log=False)
  assert frozen == ["encoder/conv1/bias", "encoder/conv1/kernel"]
  labels, frozen = optim.freeze_labels(params, 1, log=False)
  assert "encoder/norm2/scale" in frozen and labels["encoder"]["conv2"]["kernel"] == "trainable"
  with pytest.raises(ValueError, match="match no rule"):
    rules.match(params, [(r"encoder/.*", 1)])
  assert optim.parse_strategy("van") == (False, 0)
  assert optim.parse_strategy("3CF") == (True, 3)
  with pytest.raises(ValueError, match="freeze must be"):
    optim.parse_strategy("16")
