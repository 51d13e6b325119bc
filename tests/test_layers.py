"""Fast convolution paths match the reference formulation, forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.models import layers


@pytest.mark.parametrize("impl", sorted(set(layers.CONV_IMPLS) - {"xla"}))
@pytest.mark.parametrize("stride,c_in,c_out", [(1, 5, 4), (1, 8, 8), (2, 4, 8)])
def test_conv_impl_matches_reference(impl, stride, c_in, c_out):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 8, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, c_in, c_out)) * 0.2, jnp.float32)
  dy = jnp.asarray(rng.standard_normal((2, 8 // stride, 8 // stride, 8 // stride, c_out)),
                   jnp.float32)

  def run(fn):
    y, vjp = jax.vjp(lambda x, w: fn(x, w, stride), x, w)
    return (y,) + vjp(dy)

  ref = run(layers.conv3d_xla)
  fast = run(layers.CONV_IMPLS[impl])
  for name, a, b in zip(("forward", "d/dx", "d/dw"), fast, ref):
    rel = float(jnp.abs(a - b).max() / jnp.abs(b).max())
    assert rel < 1e-4, (name, rel)


def test_upsample_and_leaky_relu():
  x = jnp.arange(8.0).reshape(1, 2, 2, 2, 1) - 4
  up = layers.upsample2(x)
  assert up.shape == (1, 4, 4, 4, 1)
  np.testing.assert_array_equal(up[0, 2:, :2, 2:, 0], jnp.full((2, 2, 2), x[0, 1, 0, 1, 0]))
  np.testing.assert_allclose(layers.leaky_relu(jnp.array([-2.0, 3.0])), [-0.02, 3.0])


def _onednn_installed():
  import shutil
  from msjax.ops import onednn
  return onednn.find_onednn() is not None and bool(shutil.which("g++") or shutil.which("c++"))


@pytest.mark.skipif(not _onednn_installed(), reason="oneDNN (a Linux x86-64 dependency) or a C++ "
                    "compiler is missing; the 'onednn' conv falls back to 'fold'")
def test_onednn_extension_builds_and_is_used():
  from msjax.ops import onednn
  ok, why = onednn.available()
  assert ok, why
  hlo = jax.jit(lambda x, w: layers.conv3d_onednn(x, w, 1)).lower(
      jnp.zeros((1, 8, 8, 8, 2)), jnp.zeros((3, 3, 3, 2, 4))).as_text()
  assert "MsjaxConv3dForward" in hlo  # a custom call, not a silent fallback


@pytest.mark.skipif(not _onednn_installed(), reason="oneDNN or a C++ compiler is missing")
def test_onednn_network_matches_xla_forward_and_gradients():
  """The whole segmentation network (every conv kind: 3³ stride 1 and 2, 1³) and its parameter
  gradients under jit: oneDNN vs XLA's convolution, relative error < 1e-4."""
  from ml_collections import config_dict
  from msjax.models import isensee
  from msjax.train import losses, steps

  def grads(impl):
    cfg = config_dict.ConfigDict(dict(base_width=4, dropout=0.0, conv_impl=impl,
                                      dtype="float32"))
    model = steps.Model(isensee.constructor("segmentation", cfg))
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
