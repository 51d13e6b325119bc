"""Instance norm followed by leaky ReLU, fused, with a hand-written gradient.

What autodiff of `leaky_relu(instance_norm(x))` makes XLA do on CPU: a pass for the mean, one for
the variance, one to normalise, one for the activation, float32 copies of the normalised and
activated tensors kept for the backward pass, and as many passes again backward. Here:

  forward:  one pass for both statistics (sum and sum of squares, one variadic reduction),
            one pass that normalises, scales, shifts, activates and casts to the compute dtype;
  backward: one pass for the two per-channel sums the gradient needs (Σ dy, Σ dy·x̂), one pass
            for dx; x̂ is recomputed from x and the saved statistics, and the sign of the
            pre-activation is read from the output (leaky ReLU keeps signs), which the next
            convolution keeps alive anyway.

Statistics, the sums and the parameter gradients are float32 whatever the compute dtype.

`impl="onednn"` (the CPU fast path, as for the convolutions) runs the same four passes on CPU as
msjax's own C++ kernels (norm_kernels.cc, built into the oneDNN extension: msjax/ops/onednn.py),
on every core, in whole vectors, with block sums combined in double: a quarter of the XLA passes'
time at the network's first level, and exact where XLA's float32 sums over 32³ voxels are not
(numbers in norm_kernels.cc). GPU and TPU, and CPUs without the extension, run the XLA passes
below.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LEAKY_SLOPE = 0.01
NORM_EPS = 1e-5
_SPATIAL = (1, 2, 3)


def _sums(a, b):
  """(Σ a, Σ b) over the spatial axes in one variadic reduction (one pass over memory)."""
  zero = jnp.zeros((), jnp.float32)
  return jax.lax.reduce((a, b), (zero, zero),
                        lambda x, y: (x[0] + y[0], x[1] + y[1]), _SPATIAL)


def statistics(x):
  """Per-sample, per-channel mean and 1/std over the spatial axes, float32, shape (N, 1, 1, 1, C).
  One pass: var = E[x²] − E[x]² in float32 (activations here are O(1); the difference is clamped
  at 0)."""
  x32 = x.astype(jnp.float32)
  s1, s2 = _sums(x32, x32 * x32)
  m = x.shape[1] * x.shape[2] * x.shape[3]
  mean = s1 / m
  var = jnp.maximum(s2 / m - mean * mean, 0.0)
  expand = lambda v: v[:, None, None, None, :]  # noqa: E731
  return expand(mean), expand(jax.lax.rsqrt(var + NORM_EPS))


def _apply(x, scale, bias, mean, rstd):
  # (x − mean)·a + bias, not x·a + (bias − mean·a): where x equals its mean (a 1-voxel extent)
  # the output is then exactly the bias, and leaky ReLU's slope there is the bias's
  a = scale * rstd                   # (N, 1, 1, 1, C)
  y = (x.astype(jnp.float32) - mean) * a + bias
  return jnp.where(y >= 0, y, LEAKY_SLOPE * y).astype(x.dtype)


def instance_norm_leaky_relu(x, scale, bias, impl: str = "xla"):
  """leaky_relu(instance_norm(x) * scale + bias) in x's dtype; x is (N, D, H, W, C). `impl` is
  the model's conv_impl: "onednn" runs the CPU kernels where they are built (the backend decides
  when the computation is lowered), anything else the XLA passes."""
  if impl != "onednn":
    return _xla_norm(x, scale, bias)
  return jax.lax.platform_dependent(x, scale, bias, cpu=_cpu_norm, default=_xla_norm)


def _cpu_norm(x, scale, bias):
  if jax.default_backend() != "cpu":  # traced as a branch but never lowered here: do not build
    return _xla_norm(x, scale, bias)
  from msjax.ops import onednn
  ok, _ = onednn.available()
  if not ok:  # the convolutions say why, once (msjax.ops.conv)
    return _xla_norm(x, scale, bias)
  return _native_norm(x, scale, bias)


@jax.custom_vjp
def _xla_norm(x, scale, bias):
  x = _in_memory(x)
  mean, rstd = statistics(x)
  return _apply(x, scale, bias, mean, rstd)


def _in_memory(x):
  """x as it is, materialised in its own dtype. Without the barrier XLA hoists the float32 cast
  above a residual sum or a concatenation and keeps that tensor in float32: twice the bytes
  written, and read again by every pass here."""
  return jax.lax.optimization_barrier(x)


def _fwd(x, scale, bias):
  x = _in_memory(x)
  mean, rstd = statistics(x)
  out = _apply(x, scale, bias, mean, rstd)
  return out, (x, out, scale, mean, rstd)


def _bwd(res, g):
  x, out, scale, mean, rstd = res
  dy = jnp.where(out >= 0, g.astype(jnp.float32), LEAKY_SLOPE * g.astype(jnp.float32))
  xhat = (x.astype(jnp.float32) - mean) * rstd
  s1, s2 = _sums(dy, dy * xhat)                            # (N, C)
  m = x.shape[1] * x.shape[2] * x.shape[3]
  expand = lambda v: v[:, None, None, None, :]  # noqa: E731
  dx = (scale * rstd) * (dy - expand(s1) / m - xhat * expand(s2) / m)
  return dx.astype(x.dtype), s2.sum(0).astype(scale.dtype), s1.sum(0).astype(scale.dtype)


_xla_norm.defvjp(_fwd, _bwd)


def _native_forward(x, scale, bias):
  n, c = x.shape[0], x.shape[-1]
  stats = jax.ShapeDtypeStruct((n, c), jnp.float32)
  call = jax.ffi.ffi_call("msjax_MsjaxNormForward",
                          (jax.ShapeDtypeStruct(x.shape, x.dtype), stats, stats))
  return call(x, scale.astype(jnp.float32), bias.astype(jnp.float32),
              slope=np.float32(LEAKY_SLOPE), eps=np.float32(NORM_EPS))


@jax.custom_vjp
def _native_norm(x, scale, bias):
  return _native_forward(x, scale, bias)[0]


def _native_fwd(x, scale, bias):
  out, mean, rstd = _native_forward(x, scale, bias)
  return out, (x, out, scale, mean, rstd)


def _native_bwd(res, g):
  x, out, scale, mean, rstd = res
  params = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
  call = jax.ffi.ffi_call("msjax_MsjaxNormBackward",
                          (jax.ShapeDtypeStruct(x.shape, x.dtype), params, params))
  dx, dscale, dbias = call(x, out, g.astype(x.dtype), scale.astype(jnp.float32), mean, rstd,
                           slope=np.float32(LEAKY_SLOPE))
  return dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_native_norm.defvjp(_native_fwd, _native_bwd)


def reference(x, scale, bias):
  """The same function written plainly (two-pass variance), for tests."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=_SPATIAL, keepdims=True)
  var = jnp.square(x32 - mean).mean(axis=_SPATIAL, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + NORM_EPS) * scale + bias
  return jnp.where(y >= 0, y, LEAKY_SLOPE * y).astype(x.dtype)
