"""Parameter initialisation by path rule, on the host.

Kernels: Glorot-uniform (Keras' default, the paper's VAN init), biases: 0, norm scales: 1. Each
leaf draws from its own numpy generator seeded by (seed, path), so adding a layer never shifts
the others' values. On CPU this takes milliseconds where compiling jax.random initialisers for
~100 leaves takes ~25 s.
"""
import zlib

import jax
import numpy as np

from msjax import rules as rules_lib
from msjax.models import paths


def glorot_uniform(rng: np.random.Generator, shape) -> np.ndarray:
  receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return rng.uniform(-limit, limit, size=shape).astype(np.float32)


CONVS = f"{paths.ENCODER_CONV}|{paths.DECODER_CONV}"
NORMS = f"{paths.ENCODER_NORM}|{paths.DECODER_NORM}"
INIT_RULES = [
    # The regression head starts at zero: the untrained regressor predicts the volume centre
    # (0.5, 0.5, 0.5) and the encoder's first gradients are not drowned by a random head.
    (paths.conv(paths.HEAD), "zeros"),
    (rf"({CONVS})/kernel", "glorot_uniform"), (rf"({CONVS})/bias", "zeros"),
    (rf"({NORMS})/scale", "ones"), (rf"({NORMS})/bias", "zeros")]


def init_params(abstract_params, seed: int):
  labels, _ = rules_lib.match(abstract_params, INIT_RULES, what="initialisation")

  def make(path, label, leaf):
    if label == "ones":
      return np.ones(leaf.shape, np.float32)
    if label == "zeros":
      return np.zeros(leaf.shape, np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(rules_lib.path_str(path).encode())])
    return glorot_uniform(rng, leaf.shape)

  return jax.tree.map(jax.numpy.asarray,
                      jax.tree_util.tree_map_with_path(make, labels, abstract_params))
