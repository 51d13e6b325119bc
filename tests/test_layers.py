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
