"""The pure, jitted training step. State is a dict {"params", "opt_state", "step"} of arrays:
every parameter, the optimizer state of the trainable ones, the step count. The model is re-bound
from a static graphdef inside the step (`nnx.merge`, msjax/models/model.py), so nothing stateful
crosses jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from msjax import parallel
from msjax.models.model import Model
from msjax.train import losses
from msjax.train import optim


def loss_and_metrics(task: str, out, batch, seg_loss: str = "dice"):
  if task == "segmentation":
    if seg_loss not in losses.SEGMENTATION_LOSSES:
      raise ValueError(f"unknown segmentation loss {seg_loss!r} "
                       f"(known: {sorted(losses.SEGMENTATION_LOSSES)})")
    fn = losses.SEGMENTATION_LOSSES[seg_loss]
    loss = (fn(out, batch["mask"], batch["blobs"]) if seg_loss in losses.NEEDS_BLOBS
            else fn(out, batch["mask"]))
    return loss, {"dice": losses.hard_dice(out, batch["mask"])}
  return losses.position_mse(out, batch["position"]), {}


def init_state(params, tx, labels) -> dict:
  """The state before the first step: tx's state covers the trainable leaves only."""
  trainable, _ = optim.split_frozen(params, labels)
  return {"params": params, "opt_state": tx.init(trainable), "step": jnp.zeros((), jnp.int32)}


def make_train_step(model: Model, task: str, tx: optax.GradientTransformation, labels,
                    seg_loss: str = "dice", mesh=None):
  """train_step(state, batch, rng) -> (state, metrics). Pure; donate the state.

  With a mesh, the shardings are pinned (msjax/parallel.py): state, rng and metrics replicated,
  every batch array split along `data`; XLA inserts the gradient all-reduce. Without one, jit
  follows its arguments (one device).

  - only the trainable leaves are differentiated (labels: msjax/train/optim.py); the frozen ones
    enter the loss as constants and leave the step as they came (bit-identical), so XLA computes
    no gradient for them, nor any gradient below the first trainable layer;
  - grad_norm is the norm of the gradient of the trained leaves;
  - the rng is folded with the step number, so a resumed run draws the same dropout masks;
  - a non-finite loss or gradient leaves the state unchanged and reports finite=False, so the
    loop can save the last good state and stop.
  """

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])
    trainable, frozen = optim.split_frozen(state["params"], labels)

    def loss_fn(trainable):
      out = model.apply(optim.merge_frozen(trainable, frozen), batch["image"], rng)
      return loss_and_metrics(task, out, batch, seg_loss)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    params = optim.merge_frozen(optax.apply_updates(trainable, updates), frozen)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
    return new_state, metrics

  if mesh is None:
    return jax.jit(train_step, donate_argnums=(0,))
  replicated = parallel.replicated(mesh)
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(replicated, parallel.batch_sharding(mesh), replicated),
                 out_shardings=(replicated, replicated))
