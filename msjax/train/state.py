"""The state a run starts from: the network, its optimiser and jitted steps (`create_train_state`),
then this workdir's latest checkpoint, else the pretrained encoder of `init_from`, else a fresh
initialisation (`restore_or_init`: the one documented resume order)."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import logging

from msjax import checkpoint, parallel
from msjax.models import isensee
from msjax.models import model as model_lib
from msjax.train import optim, steps, transfer


@dataclasses.dataclass
class TrainSetup:
  model: model_lib.Model
  params: dict            # freshly initialised (host)
  n_params: int
  transfer: bool          # does the strategy start from a pretrained encoder
  frozen: list[str]       # frozen parameter paths
  labels: dict            # "trainable" / "frozen" per leaf (msjax/train/optim.py)
  tx: object              # the optax transformation of the trainable leaves
  train_step: object      # jitted, donating
  predict: object         # jitted, the batch split over the mesh (validation)
  abstract: dict          # shapes, dtypes and shardings of the state


def create_train_state(config, task: str, mesh) -> TrainSetup:
  tc = config.train
  model = model_lib.Model(isensee.constructor(task, config.model),
                          seed=config.seed)
  params = model.init_params()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  transfer_on, n_frozen = (False, 0) if task == "position" else optim.parse_strategy(tc.freeze)
  labels, frozen = optim.freeze_labels(params, n_frozen, tc.freeze_norms)
  transferred = None
  if transfer_on and tc.get("transferred_lr_scale", 1.0) != 1.0:
    # what init_from transfers learns at the factor: the encoder of a pretraining checkpoint,
    # encoder and decoder of a segmentation model
    rules = transfer.source_rules(tc.init_from) if tc.init_from else transfer.TRANSFER_RULES
    transferred = optim.transferred_mask(params, labels, rules)
  tx = optim.make_optimizer(tc, transferred)
  abstract = parallel.abstract_replicated(
      jax.eval_shape(lambda p: steps.init_state(p, tx, labels), params), mesh)
  return TrainSetup(model=model, params=params, n_params=n_params, transfer=transfer_on,
                    frozen=frozen, labels=labels, tx=tx,
                    train_step=steps.make_train_step(model, task, tx, labels, tc.loss, mesh),
                    predict=model_lib.make_predict(
                        model, task, mirror=task == "segmentation" and config.predict.mirror,
                        mesh=mesh),
                    abstract=abstract)


def restore_or_init(setup: TrainSetup, config, mngr, data_iter, mesh):
  """(state, first step, transfer report). 1. this workdir's latest checkpoint (the data
  iterator resumes with it); 2. init_from: the pretrained encoder, by path (fine-tuning
  strategies that transfer); 3. fresh: Glorot-uniform (VAN, pretraining)."""
  tc = config.train
  start = mngr.latest_step()
  if start is not None:
    state, data_state, _ = checkpoint.restore(mngr, start, setup.abstract)
    state["step"] = parallel.replicate(np.int32(start), mesh)
    data_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", mngr.directory, start)
    return state, start, None
  params, report = setup.params, None
  if setup.transfer:
    if not tc.init_from:
      raise ValueError(f"strategy {optim.strategy_name(tc.freeze)} transfers a pretrained "
                       "encoder: set --config.train.init_from=<pretraining workdir, or a "
                       "shipped model's name> (or --config.train.freeze=van)")
    params, report = transfer.transfer_from_checkpoint(params, tc.init_from)
  # built on the host, then one identical copy per device
  state = parallel.replicate(jax.device_get(steps.init_state(params, setup.tx, setup.labels)), mesh)
  return state, 0, report
