"""The Isensee-2017 encoder-decoder (Isensee et al., "Brain tumor segmentation and radiomics
survival prediction", 2017, as the paper uses it), and the position regressor sharing its encoder.

Parameter paths (encoder/conv3/kernel, decoder/loc2/norm_a/scale, ...) are the contract that
initialisation, freezing and transfer rules are written in: msjax/models/paths.py lists them.
The modules declare shapes only; initial values come from msjax/models/init.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from msjax.models.layers import Conv3D, InstanceNorm, dropout, norm_act, upsample2
from msjax.ops import hardware

LEVELS = 5
IN_CHANNELS = 5


def widths(base: int) -> list[int]:
  return [base * 2 ** level for level in range(LEVELS)]


class Encoder(nnx.Module):
  """Levels 1..5; each: a (strided from level 2) conv -> r, a context module
  IN-LReLU-conv, dropout, IN-LReLU-conv, and the residual sum r + context."""

  def __init__(self, in_channels: int = IN_CHANNELS, base: int = 16, dropout_rate: float = 0.3, *,
               impl: str = "xla", dtype=jnp.float32):
    self.dropout_rate = dropout_rate
    w = widths(base)
    kw = dict(impl=impl, dtype=dtype)
    for level in range(1, LEVELS + 1):
      first = 3 * level - 2
      c_in = in_channels if level == 1 else w[level - 2]
      c = w[level - 1]
      if level > 1:
        setattr(self, f"norm{first}", InstanceNorm(c_in, impl))
      setattr(self, f"conv{first}", Conv3D(c_in, c, stride=1 if level == 1 else 2, **kw))
      for k in (first + 1, first + 2):
        setattr(self, f"norm{k}", InstanceNorm(c, impl))
        setattr(self, f"conv{k}", Conv3D(c, c, **kw))

  def layer(self, k: int):
    return getattr(self, f"conv{k}"), getattr(self, f"norm{k}", None)

  def __call__(self, x, rng=None) -> list[jax.Array]:
    """Returns [skip1, skip2, skip3, skip4, bottleneck]."""
    outputs = []
    for level in range(1, LEVELS + 1):
      first = 3 * level - 2
      conv, norm = self.layer(first)
      r = conv(x if norm is None else norm_act(norm, x))
      conv_b, norm_b = self.layer(first + 1)
      h = conv_b(norm_act(norm_b, r))
      h = dropout(h, self.dropout_rate, None if rng is None else jax.random.fold_in(rng, level))
      conv_c, norm_c = self.layer(first + 2)
      h = conv_c(norm_act(norm_c, h))
      x = r + h
      outputs.append(x)
    return outputs


class UpBlock(nnx.Module):
  """IN -> LReLU -> nearest ×2 -> 3³ conv."""

  def __init__(self, c_in, c_out, **kw):
    self.norm = InstanceNorm(c_in, kw["impl"])
    self.conv = Conv3D(c_in, c_out, **kw)

  def __call__(self, x):
    return self.conv(upsample2(norm_act(self.norm, x)))


class LocBlock(nnx.Module):
  """Localization: IN-LReLU-3³ conv (c->c), then IN-LReLU-1³ conv halving (levels 4, 3, 2)."""

  def __init__(self, c, halve: bool, **kw):
    self.norm_a = InstanceNorm(c, kw["impl"])
    self.conv_a = Conv3D(c, c, **kw)
    if halve:
      self.norm_b = InstanceNorm(c, kw["impl"])
      self.conv_b = Conv3D(c, c // 2, kernel=1, **kw)


class Decoder(nnx.Module):

  def __init__(self, base: int = 16, *, impl: str = "xla", dtype=jnp.float32):
    w = widths(base)
    kw = dict(impl=impl, dtype=dtype)
    for level in (4, 3, 2, 1):
      f = w[level - 1]
      setattr(self, f"up{level}", UpBlock(w[level], f, **kw))
      setattr(self, f"loc{level}", LocBlock(2 * f, halve=level > 1, **kw))
      if level <= 3:
        setattr(self, f"seg{level}", Conv3D(2 * f, 1, kernel=1, **kw))

  def __call__(self, skips):
    x = skips[-1]
    seg = {}
    for level in (4, 3, 2, 1):
      up, loc = getattr(self, f"up{level}"), getattr(self, f"loc{level}")
      x = jnp.concatenate([skips[level - 1], up(x)], axis=-1)
      a = loc.conv_a(norm_act(loc.norm_a, x))
      if level <= 3:
        seg[level] = getattr(self, f"seg{level}")(a)
      if level > 1:
        x = loc.conv_b(norm_act(loc.norm_b, a))
    # deep supervision summed as logits: seg1 + up2(seg2 + up2(seg3))
    return seg[1] + upsample2(seg[2] + upsample2(seg[3]))


class SegmentationNet(nnx.Module):
  def __init__(self, in_channels: int = IN_CHANNELS, base: int = 16, dropout_rate: float = 0.3, *,
               impl: str = "xla", dtype=jnp.float32):
    self.encoder = Encoder(in_channels, base, dropout_rate, impl=impl, dtype=dtype)
    self.decoder = Decoder(base, impl=impl, dtype=dtype)

  def __call__(self, x, rng=None):
    """x: (N, P, P, P, 5) -> lesion logits (N, P, P, P, 1), float32."""
    return self.decoder(self.encoder(x, rng)).astype(jnp.float32)


class PositionRegressor(nnx.Module):
  """The same encoder, global average pooling of the bottleneck, dense -> (x, y, z).

  The output is centred on 0.5, the middle of the normalised volume, so that an untrained head
  starts near the predict-the-mean baseline instead of wherever random features put it.
  """

  def __init__(self, in_channels: int = IN_CHANNELS, base: int = 16, dropout_rate: float = 0.3, *,
               impl: str = "xla", dtype=jnp.float32):
    self.encoder = Encoder(in_channels, base, dropout_rate, impl=impl, dtype=dtype)
    # zeros here and in init.py's rules: the untrained regressor predicts the volume centre
    self.head = nnx.Linear(widths(base)[-1], 3, kernel_init=nnx.initializers.zeros_init(),
                           rngs=nnx.Rngs(0))

  def __call__(self, x, rng=None):
    bottleneck = self.encoder(x, rng)[-1]
    pooled = bottleneck.astype(jnp.float32).mean(axis=(1, 2, 3))
    return 0.5 + self.head(pooled)


def constructor(task: str, model_config):
  """A zero-argument function building the network (only ever traced abstractly, nnx.eval_shape:
  values come from msjax.models.init). task: "segmentation" or "position"; model_config:
  base_width, dropout, conv_impl, dtype ("auto" resolves for this machine)."""
  cls = {"segmentation": SegmentationNet, "position": PositionRegressor}[task]
  base, rate = int(model_config.base_width), float(model_config.dropout)
  impl = str(model_config.conv_impl)
  dtype = jnp.dtype(hardware.compute_dtype(str(model_config.dtype), impl))
  return lambda: cls(IN_CHANNELS, base, rate, impl=impl, dtype=dtype)
