"""Losses and the batch Dice used for monitoring."""
import jax
import jax.numpy as jnp


def soft_dice_loss(logits, target, smooth: float = 1.0):
  """1 - soft Dice of sigmoid probabilities vs the target, over the whole batch (one loss)."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  t = target.astype(jnp.float32)
  inter = jnp.sum(p * t)
  return 1.0 - (2.0 * inter + smooth) / (jnp.sum(p) + jnp.sum(t) + smooth)


def hard_dice(logits, target):
  """Dice of the thresholded prediction (probability >= 0.5); 1 when both are empty."""
  pred = logits >= 0
  t = target > 0.5
  tp = jnp.sum(pred & t)
  denom = jnp.sum(pred) + jnp.sum(t)
  return jnp.where(denom > 0, 2.0 * tp / jnp.maximum(denom, 1), 1.0)


def position_mse(pred, target):
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))
