"""Building blocks: 3D convolution, instance norm + leaky ReLU, dropout, nearest upsampling.

Layout is channels-last (N, X, Y, Z, C), XLA's native layout on every backend. Kernels are
(k, k, k, C_in, C_out). Parameters are float32; `dtype` is the compute dtype (bfloat16 optional).
Modules declare their parameters' shapes only (zeros): they are built abstractly
(msjax/models/model.py), and every initial value comes from the path rules of msjax/models/init.py
(Glorot-uniform kernels, zero biases, unit norm scales).
The convolution *formulation* is swappable (`conv_impl`, msjax/ops/conv.py) without touching
parameter names or shapes, so fast paths can be selected by config and checked against the
reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from msjax.ops import conv as conv_ops
from msjax.ops import norm as norm_ops


class Conv3D(nnx.Module):
  def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, *,
               impl: str = "xla", dtype=jnp.float32):
    self.kernel = nnx.Param(jnp.zeros((kernel,) * 3 + (c_in, c_out), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))
    self.stride, self.impl, self.dtype = stride, impl, dtype

  def __call__(self, x):
    w, b = self.kernel[...], self.bias[...]  # float32: each formulation casts them itself
    x = x.astype(self.dtype)
    if w.shape[0] == 1 and self.impl != "onednn":  # pointwise: a matmul over channels (XLA
      # would run a bf16 one in float32, with converts around it; oneDNN runs it natively)
      return jnp.einsum("...i,io->...o", x, w[0, 0, 0].astype(self.dtype)) + b.astype(self.dtype)
    return conv_ops.conv3d(x, w, b, self.stride, self.impl)


class InstanceNorm(nnx.Module):
  """The parameters of an affine instance norm (statistics per sample and channel over the
  spatial axes, in float32). Always followed by leaky ReLU in this network: `norm_act` applies
  both as one fused op, so the module has no call of its own."""

  def __init__(self, channels: int, impl: str = "xla"):
    self.impl = impl  # the model's conv_impl: "onednn" runs the norm's CPU kernels too
    self.scale = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))


def norm_act(norm: InstanceNorm, x):
  """leaky_relu(norm(x)), fused (msjax/ops/norm.py): two passes forward, two backward."""
  return norm_ops.instance_norm_leaky_relu(x, norm.scale[...], norm.bias[...], norm.impl)


def dropout(x, rate: float, rng):
  """Inverted dropout; identity when rng is None (inference) or rate is 0.

  The keep mask comes from a counter-based hash of each element's index and a 32-bit seed drawn
  from `rng` (murmur3's finaliser), not from threefry: on CPU, threefry bits for the level-1
  activations cost more than the convolution they follow. The mask is a pure function of
  (rng, element index), so it is reproducible, resumes exactly and is the same whether or not
  the batch is sharded. The keep probability is exact to 2⁻³²."""
  if rng is None or rate <= 0:
    return x
  seed = jax.random.bits(rng, (), jnp.uint32)
  idx = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
  h = idx * jnp.uint32(0x9E3779B9) + seed
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  threshold = min(int(round(rate * 2 ** 32)), 2 ** 32 - 1)
  keep = h >= jnp.uint32(threshold)
  scale = 2 ** 32 / (2 ** 32 - threshold)  # 1 / P(keep)
  return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


def upsample2(x):
  """Nearest-neighbour ×2 along the three spatial axes."""
  n, a, b, c, ch = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :, None, :], (n, a, 2, b, 2, c, 2, ch))
  return x.reshape(n, 2 * a, 2 * b, 2 * c, ch)
