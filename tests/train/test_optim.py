"""Freezing by parameter-path rules (msjax/train/optim.py); every rule list covers the networks
by name (msjax/models/paths.py)."""
import jax
import pytest

from msjax import config_base, rules
from msjax.train import optim


class _Interrupted(Exception):
  pass


def test_freezing_rules_cover_every_leaf_and_keep_norms_optionally():
  params = {"encoder": {"conv1": {"kernel": 0, "bias": 0}, "norm2": {"scale": 0, "bias": 0},
                        "conv2": {"kernel": 0, "bias": 0}}, "decoder": {"seg1": {"kernel": 0}}}
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


@pytest.mark.parametrize("task", ["segmentation", "position"])
def test_every_rule_list_names_what_it_covers_so_a_new_parameter_fails_loudly(task):
  from msjax import config_base
  from msjax.models import init, isensee
  from msjax.models import model as model_lib
  from msjax.train import transfer
  model = model_lib.Model(isensee.constructor(task, config_base.model(base_width=4)))
  abstract = model.init_params()
  # the real networks are covered by every list
  optim.freeze_labels(abstract, 6, log=False)
  rules.match(abstract, transfer.TRANSFER_RULES)
  rules.match(abstract, init.INIT_RULES)
  # a parameter of a new kind, anywhere, matches none of them: no catch-all hides it
  for path in (("encoder", "attention", "kernel"), ("decoder", "loc2", "gate", "kernel"),
               ("encoder", "conv3", "scale"), ("classifier", "kernel")):
    grown = jax.tree.map(lambda x: x, abstract)
    node = grown
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = abstract["encoder"]["conv1"]["bias"]
    for what, call in (("freezing", lambda: optim.freeze_labels(grown, 3, log=False)),
                       ("transfer", lambda: rules.match(grown, transfer.TRANSFER_RULES,
                                                        what="transfer")),
                       ("initialisation", lambda: init.init_params(grown, 0))):
      with pytest.raises(ValueError, match=f"{what}: 1 parameter.*{'/'.join(path)}"):
        call()


def test_transferred_leaves_learn_at_their_own_rate_and_frozen_ones_are_left_out():
  import jax.numpy as jnp
  from msjax import config_base
  from msjax.models import isensee
  from msjax.models import model as model_lib
  from msjax.train import transfer
  model = model_lib.Model(isensee.constructor("segmentation", config_base.model(base_width=4)))
  params = model.init_params()
  labels, _ = optim.freeze_labels(params, 1, log=False)
  trainable, _ = optim.split_frozen(params, labels)
  mask = optim.transferred_mask(params, labels, transfer.TRANSFER_RULES)
  assert jax.tree.structure(mask) == jax.tree.structure(trainable)
  flat = rules.flat_paths(mask)
  assert "encoder/conv1/kernel" not in flat  # frozen: not in the trainable part at all
  assert flat["encoder/conv2/kernel"] and not any(v for p, v in flat.items()
                                                  if p.startswith("decoder"))
  grads = jax.tree.map(jnp.ones_like, trainable)
  updates = {}
  for scale in (1.0, 0.1):
    tx = optim.make_optimizer(config_base.train(transferred_lr_scale=scale), mask)
    updates[scale], _ = tx.update(grads, tx.init(trainable), trainable)
  ratio = jax.tree.map(lambda a, b: float(jnp.mean(a / b)), updates[0.1], updates[1.0])
  for path, r in rules.flat_paths(ratio).items():
    assert r == pytest.approx(0.1 if path.startswith("encoder") else 1.0, rel=1e-4), path


def test_a_segmentation_source_trains_its_decoder_at_the_transferred_rate_too():
  from msjax import config_base
  from msjax.models import isensee
  from msjax.models import model as model_lib
  from msjax.train import transfer
  assert transfer.source_rules("msjax-lesjak-encoder") is transfer.TRANSFER_RULES
  assert transfer.source_rules("msjax-lesjak") is transfer.WHOLE_RULES
  model = model_lib.Model(isensee.constructor("segmentation", config_base.model(base_width=4)))
  params = model.init_params()
  labels, _ = optim.freeze_labels(params, 0, log=False)
  flat = rules.flat_paths(optim.transferred_mask(params, labels, transfer.WHOLE_RULES))
  assert flat["encoder/conv2/kernel"] and any(v for p, v in flat.items() if p.startswith("decoder"))
  assert not any(v for p, v in flat.items() if p.startswith("head"))  # not transferred: full rate


def test_poly_schedule_anneals_towards_zero_and_the_default_keeps_isensee():
  isensee = optim.learning_rate(config_base.train(steps=800, lr=1e-3))
  assert float(isensee(0)) == pytest.approx(1e-3)
  assert float(isensee(799)) == pytest.approx(1e-3 * 0.985 ** 7)  # 0.90 × lr at the end
  poly = optim.learning_rate(config_base.train(steps=800, lr=1e-3, lr_schedule="poly"))
  assert float(poly(0)) == pytest.approx(1e-3)
  assert float(poly(400)) == pytest.approx(1e-3 * 0.5 ** 0.9, rel=1e-5)
  assert float(poly(799)) == pytest.approx(1e-3 * (1 / 800) ** 0.9, rel=1e-4)  # the last update
  with pytest.raises(ValueError, match="lr_schedule='cosine'"):
    optim.learning_rate(config_base.train(lr_schedule="cosine"))
