"""The fused instance norm + leaky ReLU against the plain formulation (msjax/ops/norm.py): the
XLA passes and the CPU kernels (norm_kernels.cc, built with the oneDNN extension)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import onednn_installed

IMPLS = ["xla", pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn_installed(), reason="oneDNN or a C++ compiler is missing: the CPU kernels are not "
    "built and impl='onednn' runs the XLA passes"))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
# 3 and 6 channels: the kernels' any-count loop; 16 and 64: their fixed-count loops; 2³ x 256:
# the network's bottleneck; 33 voxels a side: several blocks of unequal length per sample
@pytest.mark.parametrize("shape", [(2, 6, 5, 4, 3), (3, 4, 3, 5, 6), (2, 8, 8, 8, 16),
                                   (2, 2, 2, 2, 256), (1, 33, 33, 33, 64)])
def test_fused_norm_act_matches_the_plain_formulation(impl, dtype, shape):
  from msjax.ops import norm
  rng = np.random.default_rng(2)
  c = shape[-1]
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 2, dtype)
  s = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
  b = jnp.asarray(rng.normal(size=c), jnp.float32)
  g = jnp.asarray(rng.standard_normal(x.shape), dtype)
  fused = jax.jit(lambda x, s, b: norm.instance_norm_leaky_relu(x, s, b, impl))
  y, vjp = jax.vjp(fused, x, s, b)
  y_ref, vjp_ref = jax.vjp(norm.reference, x, s, b)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  assert y.dtype == dtype
  y, y_ref = np.asarray(y, np.float32), np.asarray(y_ref, np.float32)
  assert np.abs(y - y_ref).max() <= 4 * tol * max(1.0, np.abs(y_ref).max())
  for name, a, r in zip(("dx", "dscale", "dbias"), vjp(g), vjp_ref(g)):
    a, r = np.asarray(a, np.float32), np.asarray(r, np.float32)
    assert a.shape == r.shape, name
    # the input gradient is a difference of sums over every voxel: scale the tolerance with them
    rel = tol * (np.sqrt(x[0, ..., 0].size) if name == "dx" else 1)
    assert np.abs(a - r).max() <= rel * np.abs(r).max(), (name, np.abs(a - r).max())


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
def test_cpu_kernels_run_for_onednn_and_the_xla_passes_otherwise():
  from msjax.ops import norm
  x, s = jnp.zeros((1, 4, 4, 4, 8), jnp.bfloat16), jnp.ones(8)

  def hlo(impl):
    return jax.jit(jax.grad(lambda x: norm.instance_norm_leaky_relu(x, s, s, impl).astype(
        jnp.float32).sum())).lower(x).as_text()
  fast, plain = hlo("onednn"), hlo("xla")
  assert "MsjaxNormForward" in fast and "MsjaxNormBackward" in fast
  assert "MsjaxNorm" not in plain


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
def test_cpu_kernels_keep_nan():
  """A NaN in a channel makes that channel's output NaN (as XLA's passes do), not a finite
  number that would hide a diverged training; the other channels are untouched."""
  from msjax.ops import norm
  x = np.random.default_rng(0).standard_normal((1, 4, 4, 4, 3)).astype(np.float32)
  x[0, 1, 2, 3, 1] = np.nan
  s, b = jnp.ones(3), jnp.zeros(3)
  for dtype in (jnp.float32, jnp.bfloat16):
    y = np.asarray(norm.instance_norm_leaky_relu(jnp.asarray(x, dtype), s, b, "onednn"),
                   np.float32)
    ref = np.asarray(norm.reference(jnp.asarray(x, dtype), s, b), np.float32)
    assert np.isnan(y[..., 1]).all()
    np.testing.assert_allclose(y[..., [0, 2]], ref[..., [0, 2]], atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
def test_cpu_kernels_match_float64_on_a_full_size_level():
  """At the network's first level (32³ voxels, 16 channels) the kernels' float32 output and
  gradients stay within 1e-5 of a float64 computation (block sums, combined in double). XLA's
  passes, summing 32³ float32 values in one go, were 0.13 off in the input gradient here."""
  from msjax.ops import norm
  rng = np.random.default_rng(0)
  shape = (2, 32, 32, 32, 16)
  x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
  s = rng.uniform(0.5, 1.5, 16).astype(np.float32)
  b = rng.normal(size=16).astype(np.float32)
  g = rng.standard_normal(shape).astype(np.float32)
  x64 = x.astype(np.float64)
  axes = (1, 2, 3)
  rstd = 1 / np.sqrt(x64.var(axes, keepdims=True) + norm.NORM_EPS)
  xhat = (x64 - x64.mean(axes, keepdims=True)) * rstd
  z = xhat * s + b
  dy = np.where(z >= 0, g, norm.LEAKY_SLOPE * g)
  m = 32 ** 3
  dx = s * rstd * (dy - dy.sum(axes, keepdims=True) / m
                   - xhat * (dy * xhat).sum(axes, keepdims=True) / m)
  fused = jax.jit(lambda x, s, b: norm.instance_norm_leaky_relu(x, s, b, "onednn"))
  y, vjp = jax.vjp(fused, x, s, b)
  gx, gs, gb = vjp(g)
  assert np.abs(np.asarray(y) - np.where(z >= 0, z, norm.LEAKY_SLOPE * z)).max() < 1e-5
  assert np.abs(np.asarray(gx) - dx).max() < 1e-5 * np.abs(dx).max()
  for got, want in ((gs, (dy * xhat).sum((0, 1, 2, 3))), (gb, dy.sum((0, 1, 2, 3)))):
    assert np.abs(np.asarray(got) - want).max() < 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_voxel_extent_gives_the_bias_and_no_input_gradient(impl, dtype):
  """Over one voxel x̂ = 0: the output is leaky(bias) exactly and the input gradient exactly 0.
  A fused multiply-add of x·a + (bias − mean·a) left ~1e-5 here, which flipped the leaky slope
  of zero biases at a 16³ network's 1³ bottleneck and moved its gradients by up to 130 %."""
  from msjax.ops import norm
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 1, 1, 1, 64)) * 30, dtype)
  s = jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32)
  b = jnp.asarray(np.r_[np.zeros(32), rng.normal(size=32)], jnp.float32)
  y, vjp = jax.vjp(jax.jit(lambda x, s, b: norm.instance_norm_leaky_relu(x, s, b, impl)),
                   x, s, b)
  want = jnp.where(b >= 0, b, norm.LEAKY_SLOPE * b).astype(dtype)
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.broadcast_to(np.asarray(want, np.float32), y.shape))
  dx = vjp(jnp.ones_like(y))[0]
  assert not np.asarray(dx, np.float32).any()


@pytest.mark.skipif(not onednn_installed(), reason="oneDNN or a C++ compiler is missing")
def test_cpu_kernels_obey_onednn_s_isa_cap():
  """ONEDNN_MAX_CPU_ISA=AVX2 (how the benchmark measures an AVX2 CPU on a newer one) holds the
  norm kernels to their AVX2 copy as it holds oneDNN."""
  import os
  import subprocess
  import sys

  from msjax.ops import onednn
  native = onednn.norm_isa()
  code = "from msjax.ops import onednn; print(onednn.norm_isa())"
  capped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                          check=True).stdout.split()[-1]
  assert capped == ("avx2" if native in ("avx512", "avx2") else "baseline"), (native, capped)
