"""The training step differentiates and optimises only the trainable leaves (msjax/train/steps.py)."""
import jax
import numpy as np
import optax
import pytest

from msjax import config_base, rules
from msjax.models import isensee
from msjax.models import model as model_lib
from msjax.train import optim, steps


def _onednn():
  from msjax.ops import onednn
  return onednn.available()[0]


def test_step_trains_only_trainable_leaves_and_reports_their_gradient_norm():
  model = model_lib.Model(isensee.constructor(
      "segmentation", config_base.model(base_width=4, conv_impl="xla", dtype="float32")))
  params = model.init_params()
  labels, frozen = optim.freeze_labels(params, 3, log=False)
  tx = optax.sgd(1.0)  # the update is minus the gradient: what moved is what was differentiated
  state = steps.init_state(params, tx, labels)
  # Adam's moments exist for the trainable leaves only
  adam = steps.init_state(params, optim.make_optimizer(config_base.train()), labels)
  assert set(rules.flat_paths(adam["opt_state"][1].mu)) == set(rules.flat_paths(params)) - set(frozen)

  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((2, 16, 16, 16, 5)).astype(np.float32),
           "mask": (rng.random((2, 16, 16, 16, 1)) > 0.9).astype(np.float32)}
  host = jax.device_get(state)
  new, m = steps.make_train_step(model, "segmentation", tx, labels)(state, batch,
                                                                    jax.random.PRNGKey(0))
  before, after = rules.flat_paths(host["params"]), rules.flat_paths(jax.device_get(new["params"]))
  assert set(before) == set(after)
  moved = {}
  for path in before:
    if path in frozen:
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)  # bit-identical
    else:
      moved[path] = after[path] - before[path]
  norm = float(np.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in moved.values())))
  assert abs(float(m["grad_norm"]) - norm) < 1e-4 * norm, (float(m["grad_norm"]), norm)
  assert bool(m["finite"]) and int(new["step"]) == 1


def test_split_and_merge_frozen_are_inverse():
  params = {"encoder": {"conv1": {"kernel": 1, "bias": 2}, "conv2": {"kernel": 3, "bias": 4}},
            "decoder": {"seg1": {"kernel": 5, "bias": 6}}}
  labels = jax.tree.map(lambda _: optim.TRAINABLE, params)
  labels["encoder"]["conv1"] = {"kernel": optim.FROZEN, "bias": optim.FROZEN}
  trainable, frozen = optim.split_frozen(params, labels)
  assert frozen == {"encoder": {"conv1": {"kernel": 1, "bias": 2}}}
  assert "conv1" not in trainable["encoder"]
  assert optim.merge_frozen(trainable, frozen) == params


def _onednn_calls(n_frozen: int) -> dict:
  """How many oneDNN forward / backward-data / backward-weights calls the compiled training step
  of a width-4 network (29 convolutions) runs with the first n_frozen convs frozen."""
  model = model_lib.Model(isensee.constructor(
      "segmentation", config_base.model(base_width=4, conv_impl="onednn", dtype="float32")))
  params = model.init_params()
  labels, _ = optim.freeze_labels(params, n_frozen, log=False)
  tx = optim.make_optimizer(config_base.train())
  state = steps.init_state(params, tx, labels)
  batch = {"image": np.zeros((2, 16, 16, 16, 5), np.float32),
           "mask": np.zeros((2, 16, 16, 16, 1), np.float32)}
  text = steps.make_train_step(model, "segmentation", tx, labels).lower(
      state, batch, jax.random.PRNGKey(0)).compile().as_text()
  return {kind: text.count(f'custom_call_target="msjax_MsjaxConv3d{kind}"')
          for kind in ("Forward", "BackwardData", "BackwardWeights")}


@pytest.mark.skipif(not _onednn(), reason="oneDNN or a C++ compiler is missing")
def test_compiled_step_computes_no_gradient_nobody_reads():
  # VAN: every weight gradient; every input gradient but the image's (conv1)
  assert _onednn_calls(0) == {"Forward": 29, "BackwardData": 28, "BackwardWeights": 29}
  # 6CF: no weight gradient for conv1..6, and no input gradient below conv7 (whose input comes
  # from frozen layers only)
  assert _onednn_calls(6) == {"Forward": 29, "BackwardData": 22, "BackwardWeights": 23}
