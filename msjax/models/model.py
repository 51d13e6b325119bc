"""A network as a pure function of its parameters: the graphdef and state template of an NNX
module (`Model`), and the jitted predict function of a segmentation or position network."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from msjax import parallel
from msjax.models import init


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


MIRRORS = tuple(tuple(a for a, bit in zip((1, 2, 3), (m & 1, m & 2, m & 4)) if bit)
                for m in range(8))  # the 8 combinations of flipping the three spatial axes


def dealt_flips(members: int) -> list[tuple]:
  """The 8 flips dealt out over an ensemble's members: member k takes MIRRORS[k::members] (at
  least one each), so that the ensemble sees every flip once: 8 network passes in all, not 8 per
  member."""
  return [MIRRORS[k::members] or (MIRRORS[k % len(MIRRORS)],) for k in range(members)]


def make_predict(model: Model, task: str, mirror: bool = False, mesh=None, members: int = 1,
                 dealt: bool = False, flips: tuple | None = None):
  """predict(params, images) -> probabilities (segmentation) or positions; no dropout.

  mirror=True (segmentation): test-time mirroring, nnU-Net's default: the mean of the
  probabilities over the 8 flips of the patch (flips: only those), each flipped back (8× the
  compute).
  mesh: the images are split along its `data` axis (the batch must divide by its size), params
  replicated, the output gathered onto every device (replicated).
  members > 1 (segmentation): an ensemble; params are the members' trees stacked along a leading
  axis and the probabilities their mean (one member after the other: one compiled network).
  With mirror and dealt, member k averages only its share of the flips (dealt_flips): the
  members' mean over 8 passes in all instead of 8 per member."""

  def probabilities(params, images):
    return jax.nn.sigmoid(model.apply(params, images, None)[..., 0])

  def mirrored(params, images, share):
    total = 0.0
    for axes in share:
      flip = (lambda a, ax=axes: jnp.flip(a, ax)) if axes else (lambda a: a)
      total = total + flip(probabilities(params, flip(images)))
    return total / len(share)

  def predict(params, images):
    if task != "segmentation":
      return model.apply(params, images, None)
    return mirrored(params, images, (flips or MIRRORS) if mirror else ((),))

  def ensemble(stacked, images):
    return jnp.mean(jax.lax.map(lambda params: predict(params, images), stacked), axis=0)

  def ensemble_dealt(stacked, images):
    shares = dealt_flips(members)
    return sum(mirrored(jax.tree.map(lambda x, k=k: x[k], stacked), images, shares[k])
               for k in range(members)) / members

  if members > 1 and task == "segmentation":
    fn = ensemble_dealt if mirror and dealt else ensemble
  else:
    fn = predict
  if mesh is None:
    return jax.jit(fn)
  replicated = parallel.replicated(mesh)
  return jax.jit(fn, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=replicated)
