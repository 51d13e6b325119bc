"""Upsampling and dropout (msjax/models/layers.py); the fused norm + leaky ReLU: tests/ops/test_norm.py."""
import jax
import jax.numpy as jnp
import numpy as np

from msjax.models import layers


def test_upsample():
  x = jnp.arange(8.0).reshape(1, 2, 2, 2, 1) - 4
  up = layers.upsample2(x)
  assert up.shape == (1, 4, 4, 4, 1)
  np.testing.assert_array_equal(up[0, 2:, :2, 2:, 0], jnp.full((2, 2, 2), x[0, 1, 0, 1, 0]))


def test_dropout_keeps_the_expected_share_is_reproducible_and_unbiased():
  x = jnp.ones((4, 16, 16, 16, 8), jnp.float32)
  key = jax.random.PRNGKey(3)
  y = layers.dropout(x, 0.3, key)
  kept = float((y != 0).mean())
  assert abs(kept - 0.7) < 0.01 and abs(float(y.mean()) - 1.0) < 0.02
  np.testing.assert_array_equal(y, layers.dropout(x, 0.3, key))              # same key, same mask
  assert float((layers.dropout(x, 0.3, jax.random.PRNGKey(4)) != y).mean()) > 0.3  # other key
  assert layers.dropout(x, 0.3, None) is x and layers.dropout(x, 0.0, key) is x
  # neighbouring elements are independent: no stripes along any axis
  m = np.asarray(y != 0, np.float32)
  for axis in range(1, 5):
    a, b = np.moveaxis(m, axis, 0)[:-1], np.moveaxis(m, axis, 0)[1:]
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02, axis
