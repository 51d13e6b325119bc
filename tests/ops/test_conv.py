"""Convolution formulations against XLA's reference, oneDNN in float32 and bf16, dispatch by backend (msjax/ops/conv.py, onednn.py)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import onednn_installed
from msjax.ops import conv as conv_ops


def _segmentation_loss(dtype, impl="onednn", width=4, patch=16):
  from ml_collections import config_dict

  from msjax.models import isensee
  from msjax.models import model as model_lib
  from msjax.train import losses
  cfg = config_dict.ConfigDict(dict(base_width=width, dropout=0.0, conv_impl=impl, dtype=dtype))
  model = model_lib.Model(isensee.constructor("segmentation", cfg))

  def loss(p, x, t):
    return losses.soft_dice_loss(model.apply(p, x), t)
  return model, loss


def _bf16_onednn():
  from msjax.ops import hardware
  return onednn_installed() and hardware.native_bf16_cpu()


@pytest.mark.parametrize("impl", sorted(set(conv_ops.CONV_IMPLS) - {"xla"}))
@pytest.mark.parametrize("stride,c_in,c_out", [(1, 5, 4), (1, 8, 8), (2, 4, 8)])
def test_conv_impl_matches_reference(impl, stride, c_in, c_out):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 8, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out)) * 0.2, jnp.float32)
  b = jnp.asarray(rng.standard_normal(c_out), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((2, 8 // stride, 8 // stride, 8 // stride, c_out)),
                   jnp.float32)

  def run(fn):
    y, vjp = jax.vjp(lambda x, w, b: fn(x, w, b, stride), x, w, b)
    return (y,) + vjp(dy)

  ref = run(conv_ops.conv3d_xla)
  fast = run(conv_ops.CONV_IMPLS[impl])
  for name, a, b in zip(("forward", "d/dx", "d/dw", "d/db"), fast, ref):
    rel = float(jnp.abs(a - b).max() / jnp.abs(b).max())
    assert rel < 1e-4, (name, rel)


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
@pytest.mark.parametrize("shape,c_in,c_out", [((2, 7, 6, 5), 3, 5), ((1, 20, 21, 22), 16, 8)])
def test_tap_gemm_weight_gradient_matches_reference(monkeypatch, shape, c_in, c_out):
  """msjax's own float32 weight gradient (27 tap GEMMs on the padded volume; by default where
  oneDNN would run im2col + GEMM over a volume of 20³ or more, here forced by MSJAX_TAP_GEMM=1):
  non-cubic volumes and two samples, so that a mixed-up axis or rows read across samples show,
  against XLA's gradient. Shapes no other test uses: the extension caches its choice per shape."""
  from msjax.ops import onednn
  monkeypatch.setenv("MSJAX_TAP_GEMM", "1")
  impl = onednn.kernels((*shape, c_in), (3, 3, 3, c_in, c_out), 1, "float32")
  assert impl.split("|")[2].startswith("msjax:tap_gemm"), impl
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((*shape, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out)) * 0.2, jnp.float32)
  b = jnp.zeros(c_out, jnp.float32)
  dy = jnp.asarray(rng.standard_normal((*shape, c_out)), jnp.float32)

  def grads(fn):
    return jax.vjp(lambda w, b: fn(x, w, b, 1), w, b)[1](dy)

  for name, a, ref in zip(("d/dw", "d/db"), grads(conv_ops.conv3d_onednn),
                          grads(conv_ops.conv3d_xla)):
    rel = float(jnp.abs(a - ref).max() / jnp.abs(ref).max())
    assert rel < 1e-5, (name, rel)


def _forward_and_grads(fn, x, w, b, dy):
  """(y, d/dx, d/dw, d/db) of the stride-1 convolution fn(x, w, b, 1) with output gradient dy."""
  y, vjp = jax.vjp(lambda x, w, b: fn(x, w, b, 1), x, w, b)
  return (y,) + vjp(dy)


def _forced_winograd(monkeypatch, switch: str, kernel: str, shape, c_in: int, c_out: int,
                     dtype: str, seed: int):
  """Forces one of msjax's Winograd kernels on (env `switch`=1), checks that the extension names
  `kernel` for the forward and the input gradient of this shape, and returns random x, w, b, dy
  (activations in `dtype`, parameters float32)."""
  from msjax.ops import onednn
  monkeypatch.setenv(switch, "1")
  impl = onednn.kernels((*shape, c_in), (3, 3, 3, c_in, c_out), 1, dtype)
  assert impl.split("|")[0].startswith(kernel), impl
  assert impl.split("|")[1].startswith(kernel), impl  # the input gradient too
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((*shape, c_in)), dtype)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out)) * 0.2, jnp.float32)
  b = jnp.asarray(rng.standard_normal(c_out), jnp.float32)
  return x, w, b, jnp.asarray(rng.standard_normal((*shape, c_out)), dtype)


def _avx2_fma() -> bool:
  with open("/proc/cpuinfo") as f:
    flags = f.read()
  return " avx2" in flags and " fma" in flags


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
@pytest.mark.skipif(not _avx2_fma(), reason="msjax's Winograd forward needs AVX2 and FMA")
@pytest.mark.parametrize("shape,c_in,c_out", [((2, 7, 6, 9), 8, 24), ((1, 11, 10, 12), 16, 16)])
def test_winograd_forward_matches_reference(monkeypatch, shape, c_in, c_out):
  """msjax's Winograd F(2³, 3³) forward (by default where oneDNN would run an AVX2 kernel, here
  forced by MSJAX_WINOGRAD=1): odd sizes (tiles cut by the volume's edge), non-cubic volumes, two
  samples, 8-wide and 16-wide output blocks (24 = 3 x 8), a last block of fewer tiles than a
  block holds, a bias; against XLA's forward and gradients (the input gradient is Winograd too:
  the forward of dy by the flipped kernel). Shapes no other
  test uses: the extension caches its choice per shape."""
  x, w, b, dy = _forced_winograd(monkeypatch, "MSJAX_WINOGRAD", "msjax:winograd", shape, c_in,
                                 c_out, "float32", seed=2)

  for name, a, ref in zip(("forward", "d/dx", "d/dw", "d/db"),
                          _forward_and_grads(conv_ops.conv3d_onednn, x, w, b, dy),
                          _forward_and_grads(conv_ops.conv3d_xla, x, w, b, dy)):
    rel = float(jnp.abs(a - ref).max() / jnp.abs(ref).max())
    assert rel < 1e-5, (name, rel)


def _avx512_bf16() -> bool:
  with open("/proc/cpuinfo") as f:
    flags = f.read()
  return " avx512_bf16" in flags and " avx512bw" in flags and " avx512vl" in flags


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
@pytest.mark.skipif(not _avx512_bf16(), reason="msjax's bf16 Winograd needs AVX-512 BF16")
@pytest.mark.parametrize("shape,c_in,c_out", [((2, 6, 4, 10), 16, 32), ((1, 8, 10, 6), 32, 16)])
def test_bf16_winograd_matches_reference(monkeypatch, shape, c_in, c_out):
  """msjax's bf16 Winograd F(2³, 3³) (by default where oneDNN would run its AVX-512 BF16 direct
  kernel, here forced by MSJAX_WINOGRAD_BF16=1): non-cubic volumes, two samples, 32-wide and
  16-wide output blocks, a bias; forward and input gradient (the forward of dy by the flipped
  kernel) against XLA's float32 convolution of the same bf16 inputs. Its extra roundings (the
  transformed inputs and kernel in bf16) leave 5-7e-3 of the largest value where oneDNN's direct
  bf16 kernel leaves 2-4e-3; a wrong transform or a mixed-up axis leaves far more. Shapes no other
  test uses: the extension caches its choice per shape."""
  x, w, b, dy = _forced_winograd(monkeypatch, "MSJAX_WINOGRAD_BF16", "msjax:winograd_bf16", shape,
                                 c_in, c_out, "bfloat16", seed=3)
  got = _forward_and_grads(conv_ops.conv3d_onednn, x, w, b, dy)
  want = _forward_and_grads(conv_ops.conv3d_xla, x.astype(jnp.float32), w, b,
                            dy.astype(jnp.float32))
  for name, a, ref, tol in zip(("forward", "d/dx", "d/dw", "d/db"), got, want,
                               (1.2e-2, 1.2e-2, 1e-5, 1e-5)):
    rel = float(jnp.abs(a.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
    assert rel < tol, (name, rel)


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN (a Linux x86-64 dependency) or a C++ "
                    "compiler is missing; the 'onednn' conv falls back to 'fold'")
def test_onednn_extension_builds_and_is_used():
  from msjax.ops import onednn
  ok, why = onednn.available()
  assert ok, why
  hlo = jax.jit(lambda x, w, b: conv_ops.conv3d_onednn(x, w, b, 1)).lower(
      jnp.zeros((1, 8, 8, 8, 2)), jnp.zeros((3, 3, 3, 2, 4)), jnp.zeros(4)).as_text()
  assert "MsjaxConv3dForward" in hlo  # a custom call, not a silent fallback


@pytest.mark.slow  # two whole-network gradients
@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
def test_onednn_network_matches_xla_forward_and_gradients():
  """The whole segmentation network (every conv kind: 3³ stride 1 and 2, 1³) and its parameter
  gradients under jit: oneDNN (and the norm's CPU kernels) vs XLA's convolution and norm passes,
  relative error < 1e-4. At 16³ the bottleneck is 1³, where a norm's output is its bias: the
  kernels must give exactly that, or leaky ReLU's slope flips (tests/ops/test_norm.py)."""
  from ml_collections import config_dict

  from msjax.models import isensee
  from msjax.models import model as model_lib
  from msjax.train import losses

  def grads(impl):
    cfg = config_dict.ConfigDict(dict(base_width=4, dropout=0.0, conv_impl=impl,
                                      dtype="float32"))
    model = model_lib.Model(isensee.constructor("segmentation", cfg))
    params = model.init_params()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 16, 5)), jnp.float32)
    t = jnp.asarray(rng.random((2, 16, 16, 16, 1)) > 0.9, jnp.float32)

    @jax.jit
    def f(p):
      return losses.soft_dice_loss(model.apply(p, x), t)
    return jax.value_and_grad(f)(params)

  (l_ref, g_ref), (l_fast, g_fast) = grads("xla"), grads("onednn")
  assert abs(float(l_ref - l_fast)) < 1e-5
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(g_ref))
  for path, g in jax.tree_util.tree_leaves_with_path(g_fast):
    r = flat_ref[path]
    scale = float(jnp.abs(r).max())
    if scale > 1e-6:  # conv biases before an instance norm have an exactly-zero gradient
      assert float(jnp.abs(g - r).max()) / scale < 1e-4, jax.tree_util.keystr(path)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_and_tpu_lower_every_conv_to_xla_s_3d_convolution(dtype):
  """jax.export for cuda and tpu (works on a CPU-only machine): every 3³ conv of the training
  step, forward and both gradients, is a native 3-spatial-dim convolution, no custom call."""
  import re

  from jax import export
  model, loss = _segmentation_loss(dtype)
  params = model.init_params()
  x = jax.ShapeDtypeStruct((2, 16, 16, 16, 5), jnp.float32)
  t = jax.ShapeDtypeStruct((2, 16, 16, 16, 1), jnp.float32)
  for platform in ("cuda", "tpu"):
    text = export.export(jax.jit(jax.value_and_grad(loss)), platforms=[platform])(
        params, x, t).mlir_module()
    assert "custom_call" not in text, platform
    dims = re.findall(r"stablehlo\.convolution\(.*?dim_numbers = \[([^\]]*)\]", text)
    # forward: 23 3³ and 6 1³ convs; their input gradients (22 + 6: none for the image) and
    # weight gradients (23 + 6)
    assert len(dims) == 29 + 28 + 29, (platform, len(dims))
    assert all(d in ("b, 0, 1, 2, f", "f, 0, 1, 2, b") for d in dims), (platform, set(dims))


@pytest.mark.parametrize("stride,c_in,c_out,k,size,trials", [
    (1, 5, 8, 3, 8, 1), (2, 8, 16, 3, 8, 1), (1, 16, 1, 1, 8, 1),
    (1, 64, 32, 3, 2, 12)])  # 2³: oneDNN 3.2's bf16 weight-gradient bug (onednn_conv.cc)
def test_bf16_conv_matches_float32_reference(stride, c_in, c_out, k, size, trials):
  """bf16 activations, float32 parameters: forward, input, kernel and bias gradients against the
  float32 reference on the same (bf16-rounded) inputs, at bf16 tolerances. Where the CPU has bf16
  instructions this is oneDNN's bf16 kernel (checked in the HLO); elsewhere the fold fallback."""
  rng = np.random.default_rng(1)
  for _ in range(trials):
    x = jnp.asarray(rng.standard_normal((4, size, size, size, c_in)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((k, k, k, c_in, c_out)) * 0.2, jnp.float32)
    b = jnp.asarray(rng.standard_normal(c_out), jnp.float32)
    out = size // stride
    dy = jnp.asarray(rng.standard_normal((4, out, out, out, c_out)), jnp.bfloat16)
    y, vjp = jax.vjp(lambda *a: conv_ops.conv3d_onednn(*a, stride), x, w, b)
    got = (y,) + vjp(dy)
    assert y.dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
    assert got[2].dtype == jnp.float32 and got[3].dtype == jnp.float32  # parameter gradients
    y32, vjp32 = jax.vjp(lambda *a: conv_ops.conv3d_xla(*a, stride), x.astype(jnp.float32), w, b)
    want = (y32,) + vjp32(dy.astype(jnp.float32))
    for name, a, r in zip(("forward", "d/dx", "d/dw", "d/db"), got, want):
      rel = float(jnp.abs(a.astype(jnp.float32) - r).max() / jnp.abs(r).max())
      assert rel < 2e-2, (name, rel)
  if _bf16_onednn():
    from msjax.ops import onednn
    text = jax.jit(lambda *a: conv_ops.conv3d_onednn(*a, stride)).lower(x, w, b).as_text()
    # oneDNN's bf16 kernel, except where it is known to be wrong: there oneDNN's float32 one
    wrong = onednn.known_wrong(x.shape, w.shape, stride, x.dtype)
    assert "MsjaxConv3dForward" in text and "stablehlo.convolution" not in text
    x_type = "x".join(map(str, x.shape)) + ("xf32" if wrong else "xbf16")
    assert re.search(rf"MsjaxConv3dForward.*tensor<{x_type}>", text), (wrong, x_type)


@pytest.mark.slow  # three whole-network gradients
def test_bf16_network_is_as_close_to_float32_as_xla_s_own_bf16():
  """The whole network, same parameters: the oneDNN bf16 loss and gradients are as close to
  float32 as those of XLA's own bf16 convolutions (at random initialisation both differ from
  float32 by ~25 % in gradient norm: bf16 rounding through ~30 layers; the per-conv tests above
  hold each layer to bf16 tolerances)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 16, 5)), jnp.float32)
  t = jnp.asarray(rng.random((2, 16, 16, 16, 1)) > 0.9, jnp.float32)

  def run(dtype, impl):
    model, loss = _segmentation_loss(dtype, impl)
    value, grads = jax.jit(jax.value_and_grad(loss))(params, x, t)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # parameter gradients
    return value, jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
  params = _segmentation_loss("float32")[0].init_params()
  l32, g32 = run("float32", "xla")
  l_xla, g_xla = run("bfloat16", "xla")
  l_dnn, g_dnn = run("bfloat16", "onednn")
  err = lambda g: float(jnp.linalg.norm(g - g32) / jnp.linalg.norm(g32))  # noqa: E731
  assert abs(float(l_dnn - l32)) < 1e-3 and abs(float(l_xla - l32)) < 1e-3
  assert bool(jnp.isfinite(g_dnn).all())
  assert err(g_dnn) <= 1.25 * err(g_xla) + 0.02, (err(g_dnn), err(g_xla))
