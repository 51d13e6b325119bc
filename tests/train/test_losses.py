"""Segmentation losses (msjax/train/losses.py)."""
import numpy as np


class _Interrupted(Exception):
  pass


def test_dice_bce_keeps_a_gradient_where_soft_dice_has_collapsed():
  """All outputs saturated to 'no lesion': soft Dice is flat there, Dice + BCE is not."""
  import jax
  import jax.numpy as jnp

  from msjax.train import losses
  logits = jnp.full((2, 8, 8, 8, 1), -20.0)
  target = jnp.zeros((2, 8, 8, 8, 1)).at[:, 2:4, 2:4, 2:4].set(1.0)
  g_dice = jax.grad(lambda z: losses.soft_dice_loss(z, target))(logits)
  g_both = jax.grad(lambda z: losses.dice_bce_loss(z, target))(logits)
  assert float(jnp.abs(g_dice).max()) < 1e-7
  lesion = target > 0
  assert float(-g_both[lesion].max()) > 1e-4  # pushes lesion logits up
  np.testing.assert_allclose(float(losses.dice_bce_loss(jnp.full_like(target, 30.0) * (
      2 * target - 1), target)), 0.0, atol=1e-3)  # confident and right: ~0
