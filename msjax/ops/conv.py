"""3D convolution formulations, one math: y = conv(x, w) + b, 'same' padding k//2, stride 1 or 2.

- "xla":    XLA's generic convolution, the reference; what GPU and TPU run for every setting.
- "fold":   3³ stride-1 convolutions as one 2D convolution with the depth taps folded into the
            channels (XLA's CPU 2D convolution is far faster than its generic 3D one); the
            CPU fallback when oneDNN cannot be used.
- "onednn": the backend decides first. GPU/TPU: XLA's convolution, every dtype. CPU: oneDNN
            custom calls (msjax/ops/onednn.py) when the extension is available and oneDNN has a
            native kernel for the dtype on this CPU, else "fold" with one warning naming why.
            bf16 shapes whose oneDNN kernel is known to be wrong (onednn.known_wrong) run
            through oneDNN's float32 kernels.

Activations are (N, D, H, W, C) in the compute dtype; `w` (k, k, k, C, O) and `b` (O,) are the
float32 parameters, cast to the compute dtype here (oneDNN converts the kernel in its own weight
reorder instead, adds the bias inside the convolution and returns float32 gradients for both).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging


def _pads(kernel: int):
  # PyTorch-style symmetric padding k//2: "same" for stride 1, exact halving for stride 2.
  return [(kernel // 2, kernel // 2)] * 3


def _xla(x, w, stride: int):
  return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), window_strides=(stride,) * 3, padding=_pads(w.shape[0]),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _add_bias(y, b):
  """y + b in float32, rounded once to y's dtype: the bias gradient (the sum of the output
  gradient over every voxel of the batch) then accumulates in float32, not bf16 (4 % off at
  4×8³ voxels with bf16 accumulation on an AVX2 CPU)."""
  if y.dtype == jnp.float32:
    return y + b
  return (y.astype(jnp.float32) + b.astype(jnp.float32)).astype(y.dtype)


def conv3d_xla(x, w, b, stride: int):
  """Reference formulation: XLA's generic 3D convolution."""
  return _add_bias(_xla(x, w, stride), b)


def _fold_depth_conv(x, w):
  """3³ stride-1 'same' conv as one 2D conv: the three depth taps go into the channels and depth
  into the batch."""
  n, d, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
  x3 = jnp.concatenate([xp[:, k:k + d] for k in range(3)], axis=-1)  # (n, d, h, w, 3c): (kd, c)
  w2 = jnp.transpose(w, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, w.shape[-1])
  y = jax.lax.conv_general_dilated(x3.reshape(n * d, h, wd, 3 * c), w2, (1, 1), [(1, 1)] * 2,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(n, d, h, wd, -1)


@jax.custom_vjp
def _conv3d_fold(x, w):
  return _fold_depth_conv(x, w)


def _conv3d_fold_fwd(x, w):
  return _fold_depth_conv(x, w), (x, w)


def _conv3d_fold_bwd(res, dy):
  x, w = res
  # input gradient = the same conv of dy with the spatially flipped, in/out-swapped kernel
  w_t = jnp.transpose(w[::-1, ::-1, ::-1], (0, 1, 2, 4, 3))
  # weight gradient: XLA's own backprop-filter measured fastest in the full step (a nine-tap
  # im2col matmul won in isolation but lost inside the network: memory traffic)
  dw = jax.vjp(lambda w_: _xla(x, w_, 1), w)[1](dy)[0]
  return _fold_depth_conv(dy, w_t), dw


_conv3d_fold.defvjp(_conv3d_fold_fwd, _conv3d_fold_bwd)


def conv3d_fold(x, w, b, stride: int):
  """Pure-XLA CPU fast path (same math as conv3d_xla): depth-folded 2D conv for the forward pass
  and the input gradient, XLA's weight gradient; strided convs stay on the reference path.
  Measured on 2 CPU cores, f = 16, 12×32³, float32: inference 1.75× the reference, train 1.1×."""
  if stride != 1 or w.shape[:3] != (3, 3, 3):
    return conv3d_xla(x, w, b, stride)
  return _add_bias(_conv3d_fold(x, w.astype(x.dtype)), b)


_said: set = set()


def warn_once(message: str) -> None:
  if message not in _said:
    _said.add(message)
    logging.warning(message)


def _log_once(message: str) -> None:
  if message not in _said:
    _said.add(message)
    logging.info(message)


def _conv3d_cpu(x, w, b, stride: int):
  """The CPU branch of "onednn": oneDNN when it has a native kernel for this shape and dtype."""
  if jax.default_backend() != "cpu":
    # traced as one branch of platform_dependent but never lowered on a GPU/TPU host: do not
    # build the CPU extension there
    return conv3d_fold(x, w, b, stride)
  from msjax.ops import onednn
  wrong = onednn.known_wrong(x.shape, w.shape, stride, x.dtype)
  if wrong:
    # expected in every bf16 run of the paper network (its 2³ bottleneck): these layers are tiny,
    # and oneDNN's float32 kernels are exact for them. XLA's own bf16 convolution would also be
    # exact but cost ~200 ms of a 1.3 s paper-network step on Zen 4 (benchmark profile).
    if onednn.supports(x.shape, w.shape, stride, jnp.float32)[0]:
      _log_once(f"conv {x.shape} -> {w.shape[-1]} channels runs in float32 through oneDNN: "
                f"{wrong}")
      return onednn.conv3d(x.astype(jnp.float32), w, b, stride).astype(x.dtype)
    _log_once(f"conv {x.shape} -> {w.shape[-1]} channels runs on XLA's convolution: {wrong}")
    return conv3d_xla(x, w, b, stride)
  ok, why = onednn.supports(x.shape, w.shape, stride, x.dtype)
  if ok:
    return onednn.conv3d(x, w, b, stride)
  warn_once(f"conv_impl='onednn' cannot run {jnp.dtype(x.dtype).name} convolutions here "
            f"({why.splitlines()[0]}); using 'fold'")
  return conv3d_fold(x, w, b, stride)


def conv3d_onednn(x, w, b, stride: int):
  """Dispatch by backend first: XLA's convolution on GPU/TPU (any dtype), oneDNN or the fold
  fallback on CPU. Resolved when the computation is lowered for its platform."""
  return jax.lax.platform_dependent(
      x, w, b, cpu=functools.partial(_conv3d_cpu, stride=stride),
      default=functools.partial(conv3d_xla, stride=stride))


CONV_IMPLS: dict[str, Callable] = {"xla": conv3d_xla, "fold": conv3d_fold,
                                   "onednn": conv3d_onednn}


def conv3d(x, w, b, stride: int, impl: str = "onednn"):
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {impl!r} (known: {sorted(CONV_IMPLS)})")
  return CONV_IMPLS[impl](x, w, b, stride)
