"""The pure, jitted steps. State is a dict {"params", "opt_state", "step"} of arrays; the model is
re-bound from a static graphdef inside the step (`nnx.merge`), so nothing stateful crosses jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from msjax.models import init
from msjax.train import losses
from msjax.train.optim import FROZEN


class Model:
  """A graphdef and an abstract state template: binds a params dict to a callable module.

  Built from a zero-argument constructor traced abstractly (nothing allocated); initial values
  come from the path rules of msjax.models.init.
  """

  def __init__(self, make_module, seed: int = 0):
    self.graphdef, self.template = nnx.split(nnx.eval_shape(make_module), nnx.Param)
    self.seed = seed

  def init_params(self) -> dict:
    return init.init_params(nnx.to_pure_dict(self.template), self.seed)

  def bind(self, params) -> nnx.Module:
    state = jax.tree.map(lambda x: x, self.template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def apply(self, params, x, rng=None):
    return self.bind(params)(x, rng)


def loss_and_metrics(task: str, out, batch, seg_loss: str = "dice"):
  if task == "segmentation":
    if seg_loss not in losses.SEGMENTATION_LOSSES:
      raise ValueError(f"unknown segmentation loss {seg_loss!r} "
                       f"(known: {sorted(losses.SEGMENTATION_LOSSES)})")
    loss = losses.SEGMENTATION_LOSSES[seg_loss](out, batch["mask"])
    return loss, {"dice": losses.hard_dice(out, batch["mask"])}
  return losses.position_mse(out, batch["position"]), {}


def init_state(params, tx) -> dict:
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(model: Model, task: str, tx: optax.GradientTransformation, labels,
                    seg_loss: str = "dice"):
  """train_step(state, batch, rng) -> (state, metrics). Pure; donate the state.

  - the rng is folded with the step number, so a resumed run draws the same dropout masks;
  - frozen leaves are passed through untouched (bit-identical, not "+ 0");
  - a non-finite loss or gradient leaves the state unchanged and reports finite=False, so the
    loop can save the last good state and stop.
  """

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      out = model.apply(params, batch["image"], rng)
      return loss_and_metrics(task, out, batch, seg_loss)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    params = jax.tree.map(lambda label, old, new: old if label == FROZEN else new,
                          labels, state["params"], params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=(0,))


MIRRORS = tuple(tuple(a for a, bit in zip((1, 2, 3), (m & 1, m & 2, m & 4)) if bit)
                for m in range(8))  # the 8 combinations of flipping the three spatial axes


def make_predict(model: Model, task: str, mirror: bool = False):
  """predict(params, images) -> probabilities (segmentation) or positions; no dropout.

  mirror=True (segmentation): test-time mirroring, nnU-Net's default: the mean of the
  probabilities over the 8 flips of the patch, each flipped back (8× the compute)."""

  def probabilities(params, images):
    return jax.nn.sigmoid(model.apply(params, images, None)[..., 0])

  def predict(params, images):
    if task != "segmentation":
      return model.apply(params, images, None)
    if not mirror:
      return probabilities(params, images)
    total = 0.0
    for axes in MIRRORS:
      flip = (lambda a, ax=axes: jnp.flip(a, ax)) if axes else (lambda a: a)
      total = total + flip(probabilities(params, flip(images)))
    return total / len(MIRRORS)

  return jax.jit(predict)
