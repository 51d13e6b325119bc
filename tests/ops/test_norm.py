"""The fused instance norm + leaky ReLU against the plain formulation (msjax/ops/norm.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_norm_act_matches_the_plain_formulation(dtype):
  from msjax.ops import norm
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 4, 3)) * 3 + 2, dtype)
  s = jnp.asarray(rng.uniform(0.5, 1.5, 3), jnp.float32)
  b = jnp.asarray(rng.normal(size=3), jnp.float32)
  g = jnp.asarray(rng.standard_normal(x.shape), dtype)
  y, vjp = jax.vjp(norm.instance_norm_leaky_relu, x, s, b)
  y_ref, vjp_ref = jax.vjp(norm.reference, x, s, b)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  assert y.dtype == dtype
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), atol=tol)
  for a, r in zip(vjp(g), vjp_ref(g)):
    a, r = np.asarray(a, np.float32), np.asarray(r, np.float32)
    assert np.abs(a - r).max() <= tol * np.abs(r).max()
